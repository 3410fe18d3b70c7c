"""TFLite metadata of the classifier files: written with tflite-support's metadata
writers, read back by `retrain predict` and the tests.

Each file carries the labels (``labels.txt`` packed into the file, attached to the
output tensor as TENSOR_AXIS_LABELS), the input normalisation (mean 0, std 1: feed
raw pixels), a name and a description.  Reading needs neither TensorFlow nor TFX.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Dict, List, Sequence, Tuple

from components import contracts
from components.tflite.variants import KINDS


class MetadataError(ValueError):
    """The TFLite file has no usable image-classifier metadata."""


@dataclasses.dataclass(frozen=True)
class ClassifierMetadata:
    labels: Tuple[str, ...]
    mean: Tuple[float, ...]  # input normalisation: (pixels - mean) / std
    std: Tuple[float, ...]
    name: str | None
    description: str | None
    json: Dict[str, Any]  # the whole metadata, as tflite-support renders it


def labels_text(label_names: Sequence[str]) -> str:
    """A labels file: one class name per line, line i = output index i."""
    return "".join(f"{n}\n" for n in label_names)


def describe(backbone: str, variant: str, label_names: Sequence[str]) -> str:
    from components import backbones  # TensorFlow: only when writing
    spec = backbones.get_spec(backbone)
    return (f"{spec.label} image classifier retrained on {len(label_names)} classes ({KINDS[variant]}). "
            f"Input: RGB, resized to {spec.input_size}x{spec.input_size} (bilinear, antialiased, "
            f"whole image squeezed to a square), raw pixel values 0..255; the model applies "
            f"{spec.label}'s scaling {spec.scaling} itself. Output: probability of each label.")


def add_metadata(model_bytes: bytes, label_names: Sequence[str], *, name: str, description: str,
                 version: str = "", norm_mean: Sequence[float] = (0.0,),
                 norm_std: Sequence[float] = (1.0,)) -> bytes:
    """``model_bytes`` with image-classifier metadata: labels packed in as labels.txt
    (TENSOR_AXIS_LABELS of the output), input normalisation, name and description."""
    from tensorflow_lite_support.metadata import metadata_schema_py_generated as schema
    from tensorflow_lite_support.metadata.python.metadata_writers import (
        image_classifier, metadata_info, writer_utils)
    buf = bytearray(model_bytes)
    with tempfile.TemporaryDirectory(prefix="tflite-metadata-") as tmp:
        labels_path = os.path.join(tmp, contracts.LABELS_FILE)
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write(labels_text(label_names))
        writer = image_classifier.MetadataWriter.create_from_metadata_info(
            buf,
            general_md=metadata_info.GeneralMd(
                name=name, version=version or None, description=description, author="tfx-image-retrain"),
            input_md=metadata_info.InputImageTensorMd(
                name="image",
                description="RGB image resized to the input size (bilinear, antialiased, whole "
                            "image squeezed to a square); raw pixel values 0..255.",
                norm_mean=list(norm_mean), norm_std=list(norm_std),
                color_space_type=schema.ColorSpaceType.RGB,
                tensor_type=writer_utils.get_input_tensor_types(buf)[0]),
            output_md=metadata_info.ClassificationTensorMd(
                name="probability", description="Probability of each label.",
                label_files=[metadata_info.LabelFileMd(file_path=labels_path)],
                tensor_type=writer_utils.get_output_tensor_types(buf)[0]))
        return bytes(writer.populate())


def read_metadata(model_bytes: bytes) -> ClassifierMetadata:
    """The model's labels, input normalisation, name and description; MetadataError
    when the metadata is missing or has no label file."""
    from tensorflow_lite_support.metadata.python import metadata
    try:
        displayer = metadata.MetadataDisplayer.with_model_buffer(bytearray(model_bytes))
    except ValueError as e:
        raise MetadataError(f"no TFLite metadata ({e})") from None
    meta = json.loads(displayer.get_metadata_json())
    try:
        graph = meta["subgraph_metadata"][0]
        outputs = graph["output_tensor_metadata"][0]
    except (KeyError, IndexError):
        raise MetadataError("metadata has no output tensor description") from None
    files = [f for f in outputs.get("associated_files", []) if f.get("type") == "TENSOR_AXIS_LABELS"]
    if not files:
        raise MetadataError("metadata has no label file for the output tensor")
    raw = displayer.get_associated_file_buffer(files[0]["name"])
    # By "\n" only (contracts.read_labels): splitlines() also splits on U+2028 and
    # others, and a model written before class names were checked for them must
    # still read with as many labels as outputs.
    labels = [line.rstrip("\r") for line in contracts.read_labels(raw.decode("utf-8"))
              if line.strip()]
    mean: List[float] = [0.0]
    std: List[float] = [1.0]
    for unit in (graph.get("input_tensor_metadata") or [{}])[0].get("process_units", []):
        options = unit.get("options", {})
        if unit.get("options_type") == "NormalizationOptions":
            mean, std = options.get("mean", mean), options.get("std", std)
    return ClassifierMetadata(labels=tuple(labels), mean=tuple(mean), std=tuple(std),
                              name=meta.get("name"), description=meta.get("description"), json=meta)


def input_shape(model_bytes: bytes) -> List[int]:
    """Shape of the model's first input, read from the flatbuffer (no interpreter)."""
    from tensorflow_lite_support.metadata.python.metadata_writers import writer_utils
    return [int(d) for d in writer_utils.get_input_tensor_shape(bytearray(model_bytes), 0)]
