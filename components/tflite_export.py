"""TFLite variants for phones: conversion, embedded metadata, parity with the SavedModel.

Variants (``VARIANTS``; file names in a pushed version in ``FILE_NAMES``):

* ``float32`` -- ``model.tflite``: float32 in, float32 out.
* ``fp16``    -- ``model_fp16.tflite``: float16 weights, float32 in/out.
* ``dynamic`` -- ``model_dynamic.tflite``: int8 weights, dynamic-range activations.
* ``int8``    -- ``model_int8.tflite``: full-integer (``TFLITE_BUILTINS_INT8``), uint8
  input (the raw RGB pixel values: input scale 1, zero point 0) and uint8 output
  (probabilities, scale 1/256); calibrated on a few hundred training images.

Every file takes ``[1, H, W, 3]`` RGB pixels in 0..255 (the backbone's scaling is
inside the model), resized to H x W the way ingestion does it
(:func:`components.preprocessing.decode_and_resize`), and outputs ``[1, C]``
probabilities.  Each carries TFLite metadata written with tflite-support's metadata
writers: the labels (``labels.txt`` packed into the file, attached to the output
tensor), the input normalisation (mean 0, std 1: feed raw pixels), a description.

The :class:`TFLiteExport` component (after the Trainer) builds the pixel model from
the backbone and the head the Trainer saved, converts the configured variants,
measures each one's top-1 agreement with the SavedModel's ``serving_default`` on the
eval split of the raw Examples, and writes the files, ``labels.txt`` and
``parity.json`` into its ``TFLiteModels`` artifact.  The Pusher pushes only the
variants that met their bound; ``parity.json`` says why the others did not.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple  # noqa: E402

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402
from tfx import types  # noqa: E402
from tfx.dsl.components.base import base_component, base_executor, executor_spec  # noqa: E402
from tfx.types import artifact_utils, standard_artifacts  # noqa: E402
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter  # noqa: E402

VARIANTS: Tuple[str, ...] = ("float32", "fp16", "dynamic", "int8")
FILE_NAMES: Dict[str, str] = {
    "float32": "model.tflite",
    "fp16": "model_fp16.tflite",
    "dynamic": "model_dynamic.tflite",
    "int8": "model_int8.tflite",
}
DEFAULT_VARIANTS: Tuple[str, ...] = ("float32", "int8")
# Minimum top-1 agreement with the SavedModel on the eval split.
DEFAULT_PARITY_BOUNDS: Dict[str, float] = {"float32": 0.99, "fp16": 0.99, "dynamic": 0.97, "int8": 0.97}
DEFAULT_CALIBRATION_IMAGES = 100  # as in TF's post-training integer quantization guide
# Calibration images (at most) on which the int8 variant's bias correction is measured.
BIAS_CORRECTION_IMAGES = 64
PARITY_FILE = "parity.json"
LABELS_FILE = "labels.txt"
# The uint8 input of the int8 variant carries raw pixels: scale 1, zero point 0.
INT8_INPUT_QUANTIZATION = (1.0, 0)


# ----------------------------------------------------------------- configuration


def check_variants(variants: Iterable[str]) -> List[str]:
    """Validated, de-duplicated list; ValueError naming the valid variants otherwise."""
    out = []
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown TFLite variant {v!r}; valid variants: {', '.join(VARIANTS)}")
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError(f"no TFLite variant selected; valid variants: {', '.join(VARIANTS)}")
    return out


def parity_bounds(overrides: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """DEFAULT_PARITY_BOUNDS updated with ``overrides``; ValueError on bad names/values."""
    bounds = dict(DEFAULT_PARITY_BOUNDS)
    for k, v in (overrides or {}).items():
        check_variants([k])
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"parity bound for {k} must be a number between 0 and 1, got {v!r}")
        bounds[k] = float(v)
    return bounds


_bounds = parity_bounds  # the component's argument of the same name shadows it


def validate_settings(variants: Iterable[str], bounds: Optional[Mapping[str, float]],
                      calibration_images: int) -> Optional[str]:
    """One-line description of the first invalid TFLite setting, or None."""
    try:
        variants = check_variants(variants)
        parity_bounds(bounds)
    except ValueError as e:
        return str(e)
    if "int8" in variants and int(calibration_images) < 1:
        return f"calibration_images must be >= 1 for the int8 variant, got {calibration_images}"
    return None


# -------------------------------------------------------------------- conversion


def range_anchor_image(size: int) -> np.ndarray:
    """A [size, size, 3] gradient spanning exactly 0..255: first calibration sample, so
    the int8 variant's uint8 input range is exactly the pixel range (scale 1, zp 0)."""
    ramp = np.linspace(0.0, 255.0, size, dtype=np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[..., 0] = ramp[None, :]
    img[..., 1] = ramp[:, None]
    img[..., 2] = ramp[::-1][None, :]
    return img


def _conv_bn_pairs(model) -> List[Tuple[Any, Any, Any]]:
    """(owner, conv, batchnorm) for every BatchNormalization fed by a Conv2D or
    DepthwiseConv2D, at any nesting depth of functional ``model``, in execution order;
    ``owner`` is the (sub)model whose graph holds both."""
    import tf_keras
    convs = (tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D)
    out = []
    for layer in model.layers:
        if isinstance(layer, tf_keras.Model):
            out += _conv_bn_pairs(layer)
        elif isinstance(layer, tf_keras.layers.BatchNormalization) and len(layer._inbound_nodes) == 1:
            inbound = layer._inbound_nodes[0].inbound_layers
            if isinstance(inbound, convs) and len(inbound._inbound_nodes) == 1:
                out.append((model, inbound, layer))
    return out


def _per_channel_quantized(kernel: np.ndarray, multiplier: np.ndarray, depthwise: bool) -> np.ndarray:
    """``kernel`` after the converter's int8 treatment: BatchNorm multiplier folded in,
    symmetric per-output-channel int8 (scale max|w| / 127), multiplier taken out again."""
    m = multiplier[None, None, :, None] if depthwise else multiplier[None, None, None, :]
    folded = kernel.astype(np.float64) * m
    scale = np.abs(folded).max(axis=(0, 1, 3) if depthwise else (0, 1, 2), keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    q = np.clip(np.round(folded / scale), -127, 127) * scale
    return np.where(m == 0, kernel, q / np.where(m == 0, 1.0, m)).astype(kernel.dtype)


class _Done(Exception):
    pass


class bias_corrected:
    """Context manager: empirical bias correction of ``model``'s BatchNorm offsets for
    per-channel int8 weights (Nagel et al. 2019, "Data-free quantization", section 4.2;
    Finkelstein et al. 2019), undone on exit.

    The converter folds each BatchNorm into the convolution before it and quantizes the
    folded kernel to int8, symmetric per output channel.  For some backbones that
    rounding shifts the layer's output systematically: a 3x3 depthwise kernel of
    mobilenet_v1 (conv_dw_1) has two taps of about +-12.5 that nearly cancel and small
    taps of about 0.05 that decide the output, and the int8 step is 0.1.

    The correction is measured on ``pixels`` (calibration images) in one walk through
    the graph (nested models included): a float and a quantized copy of the
    activations advance side by side, node by node, so the cost is about two forward
    passes.  The quantized copy runs each convolution with its int8-rounded kernel and
    each BatchNorm with the corrections found so far; at every BatchNorm the difference
    of the two copies' per-channel means (the shift of this layer plus what is left of
    the layers before it) is subtracted from beta and from the quantized copy.  The
    kernels are left as they are (the converter rounds them the same way); only the
    biases change.  (Rounding the quantized copy's activations to their 8-bit grids as
    well measured worse: mobilenet_v1 agreement 0.967 against 0.978.)
    """

    def __init__(self, model, pixels: np.ndarray):
        self.model, self.pixels = model, np.asarray(pixels, np.float32)
        self._betas: List[Tuple[Any, List[np.ndarray]]] = []
        self.corrections: Dict[str, float] = {}

    def __enter__(self):
        import tensorflow as tf
        pairs = _conv_bn_pairs(self.model)
        self._convs = {id(conv): bn for _, conv, bn in pairs}
        self._bns = {id(bn): conv for _, conv, bn in pairs}
        self._left = len(pairs)
        try:
            if pairs:
                x = tf.constant(self.pixels)
                try:
                    self._walk(self.model, [x], [x])
                except _Done:
                    pass
        except BaseException:
            self._restore_betas()
            raise
        return self

    def _walk(self, model, inputs_f, inputs_q):
        """Runs the float and the quantized activations through functional ``model``
        (after ``tf_keras``'s Functional._run_internal_graph), correcting on the way."""
        import tensorflow as tf
        import tf_keras
        count = model._tensor_usage_count
        tf_, tq = {}, {}
        for ref, yf, yq in zip(model.inputs, inputs_f, inputs_q):
            k = str(id(ref))
            tf_[k], tq[k] = [yf] * count[k], [yq] * count[k]
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input or any(k not in tf_ for k in node.flat_input_ids):
                    continue
                layer = node.layer
                args_f, kw_f = node.map_arguments(tf_)
                args_q, kw_q = node.map_arguments(tq)
                if isinstance(layer, tf_keras.Model) and hasattr(layer, "_nodes_by_depth"):
                    out_f, out_q = self._walk(layer, tf.nest.flatten((args_f, kw_f)), tf.nest.flatten((args_q, kw_q)))
                    out_f = tf.nest.pack_sequence_as(layer._nested_outputs, out_f)
                    out_q = tf.nest.pack_sequence_as(layer._nested_outputs, out_q)
                elif id(layer) in self._convs:
                    bn = self._convs[id(layer)]
                    out_f = layer(*args_f, **kw_f)
                    weights = layer.get_weights()
                    gamma, _, _, var = bn.get_weights()
                    multiplier = gamma / np.sqrt(var + bn.epsilon)
                    depthwise = isinstance(layer, tf_keras.layers.DepthwiseConv2D)
                    layer.set_weights([_per_channel_quantized(weights[0], multiplier, depthwise)] + weights[1:])
                    try:
                        out_q = layer(*args_q, **kw_q)
                    finally:
                        layer.set_weights(weights)
                elif id(layer) in self._bns:
                    out_f = layer(*args_f, training=False)
                    out_q = layer(*args_q, training=False)
                    shift = tf.reduce_mean(out_q - out_f, axis=(0, 1, 2)).numpy()
                    gamma, beta, mean, var = layer.get_weights()
                    self._betas.append((layer, layer.get_weights()))
                    layer.set_weights([gamma, beta - shift.astype(beta.dtype), mean, var])
                    self.corrections[layer.name] = float(np.abs(shift).max())
                    out_q = out_q - shift
                    self._left -= 1
                    if self._left == 0:
                        raise _Done
                else:
                    out_f = layer(*args_f, **kw_f)
                    out_q = layer(*args_q, **kw_q)
                for k, yf, yq in zip(node.flat_output_ids, tf.nest.flatten(out_f), tf.nest.flatten(out_q)):
                    tf_[k], tq[k] = [yf] * count[k], [yq] * count[k]
        outs_f, outs_q = [], []
        for ref in model.outputs:
            k = str(id(ref))
            outs_f.append(tf_[k].pop())
            outs_q.append(tq[k].pop())
        return outs_f, outs_q

    def _restore_betas(self):
        for bn, weights in reversed(self._betas):
            bn.set_weights(weights)
        self._betas = []

    def __exit__(self, *exc):
        self._restore_betas()
        return False


def convert(model, variant: str, calibration: Optional[Callable[[], Iterator[np.ndarray]]] = None,
            bias_correction: bool = True) -> bytes:
    """TFLite flatbuffer of the Keras ``model`` (input [1, H, W, 3] float32 0..255).

    ``calibration`` (int8 only): a callable returning an iterator of [H, W, 3] float32
    pixel arrays (a few hundred training images); a range anchor is prepended.  Unless
    ``bias_correction`` is False, up to BIAS_CORRECTION_IMAGES of them (spread evenly)
    also measure the int8 weights' bias shift, which is corrected before conversion
    (:class:`bias_corrected`; the Keras model is unchanged afterwards).
    """
    import tensorflow as tf
    check_variants([variant])
    if variant == "int8" and calibration is None:
        raise ValueError("the int8 variant needs calibration images")
    correction = None
    if variant == "int8" and bias_correction:
        images = [np.asarray(p, np.float32) for p in calibration()]
        if images:
            pick = np.linspace(0, len(images) - 1, min(BIAS_CORRECTION_IMAGES, len(images))).round().astype(int)
            correction = bias_corrected(model, np.stack([images[i] for i in sorted(set(pick))]))
    with correction if correction is not None else _nothing():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([_inference_function(model)])
        if variant == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif variant == "int8":
            size = int(model.input_shape[1])

            def representative_dataset():
                yield [range_anchor_image(size)[None]]
                for pixels in calibration():
                    yield [np.asarray(pixels, np.float32)[None]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        return bytes(converter.convert())


def _inference_function(model):
    """The model's forward pass as one concrete function, traced without AutoGraph.

    from_keras_model would first save the Keras model as a SavedModel, tracing and
    serialising every layer (about 10 s for MobileNet here); freezing this one
    function gives the same graph.  Variables are read when the converter freezes
    them, so :class:`bias_corrected`'s changes are seen.
    """
    import tensorflow as tf
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32, name="image")
    return tf.function(lambda image: model(image, training=False), input_signature=[spec],
                       autograph=False).get_concrete_function()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------- metadata


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
        labels_path = os.path.join(tmp, LABELS_FILE)
        with open(labels_path, "w", encoding="utf-8") as f:
            f.write("".join(f"{n}\n" for n in label_names))
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


class MetadataError(ValueError):
    """The TFLite file has no usable image-classifier metadata."""


def read_metadata(model_bytes: bytes) -> Dict[str, Any]:
    """The model's metadata: {'json': parsed metadata, 'labels': [...], 'mean': [...],
    'std': [...]}; MetadataError when missing or without a label file."""
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
    labels = [line.strip() for line in raw.decode("utf-8").splitlines() if line.strip()]
    mean, std = [0.0], [1.0]
    for unit in (graph.get("input_tensor_metadata") or [{}])[0].get("process_units", []):
        options = unit.get("options", {})
        if unit.get("options_type") == "NormalizationOptions":
            mean, std = options.get("mean", mean), options.get("std", std)
    return {"json": meta, "labels": labels, "mean": mean, "std": std,
            "name": meta.get("name"), "description": meta.get("description")}


def input_shape(model_bytes: bytes) -> List[int]:
    """Shape of the model's first input, read from the flatbuffer (no interpreter)."""
    from tensorflow_lite_support.metadata.python.metadata_writers import writer_utils
    return [int(d) for d in writer_utils.get_input_tensor_shape(bytearray(model_bytes), 0)]


# ----------------------------------------------------------------------- running


class Classifier:
    """A TFLite image classifier: RGB pixels 0..255 in, probabilities out.

    Applies the metadata's input normalisation for float inputs; for integer inputs
    quantizes (the normalised value) with the input tensor's scale and zero point, and
    dequantizes integer outputs.
    """

    def __init__(self, model_bytes: bytes, num_threads: int = 2,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,)):
        import tensorflow as tf
        self.interpreter = tf.lite.Interpreter(model_content=model_bytes, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        shape = self._in["shape"]
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise ValueError(f"expected a [1, H, W, 3] image input, got {list(shape)}")
        self.input_size = (int(shape[1]), int(shape[2]))
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self.input_quantization = tuple(self._in["quantization"])
        self.num_classes = int(self._out["shape"][-1])

    @classmethod
    def from_bytes_with_metadata(cls, model_bytes: bytes, num_threads: int = 2) -> "Classifier":
        meta = read_metadata(model_bytes)
        c = cls(model_bytes, num_threads, meta["mean"], meta["std"])
        c.labels = meta["labels"]
        return c

    def _input(self, pixels: np.ndarray) -> np.ndarray:
        x = (np.asarray(pixels, np.float32) - self.mean) / self.std
        if self.input_dtype in (np.uint8, np.int8):
            scale, zero_point = self._in["quantization"]
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
        return x.astype(self.input_dtype)[None]

    def _output(self, y: np.ndarray) -> np.ndarray:
        if self.output_dtype in (np.uint8, np.int8):
            scale, zero_point = self._out["quantization"]
            return (y.astype(np.float32) - zero_point) * scale
        return y.astype(np.float32)

    def predict_one(self, pixels: np.ndarray) -> np.ndarray:
        """[H, W, 3] float pixels 0..255 -> [C] probabilities."""
        self.interpreter.set_tensor(self._in["index"], self._input(pixels))
        self.interpreter.invoke()
        return self._output(self.interpreter.get_tensor(self._out["index"])[0])

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] float pixels 0..255 -> [N, C] probabilities."""
        return np.stack([self.predict_one(p) for p in pixels]) if len(pixels) else np.zeros((0, self.num_classes))


class ParityCounter:
    """Accumulates one variant's agreement with the reference, batch by batch."""

    def __init__(self):
        self.n = self.agree = self.correct = self.reference_correct = 0
        self.max_abs_diff = 0.0
        self.sum_abs_diff = 0.0

    def update(self, probs: np.ndarray, reference: np.ndarray, labels: Optional[np.ndarray] = None):
        top, ref_top = probs.argmax(1), reference.argmax(1)
        self.n += len(probs)
        self.agree += int((top == ref_top).sum())
        if len(probs):
            diff = np.abs(probs - reference)
            self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
            self.sum_abs_diff += float(diff.max(axis=1).sum())
        if labels is not None:
            self.correct += int((top == labels).sum())
            self.reference_correct += int((ref_top == labels).sum())

    def result(self, bound: float) -> Dict[str, Any]:
        agreement = self.agree / self.n if self.n else None
        passed = agreement is not None and agreement >= bound
        if agreement is None:
            reason = "no eval examples to measure parity on"
        elif not passed:
            reason = (f"top-1 agreement with the SavedModel {agreement:.4f} "
                      f"({self.agree}/{self.n}) is below the bound {bound:.4f}")
        else:
            reason = None
        return {
            "agreement": agreement, "agree": self.agree, "examples": self.n, "bound": bound,
            "accuracy": self.correct / self.n if self.n else None,
            "max_abs_diff": self.max_abs_diff,
            "mean_max_abs_diff": self.sum_abs_diff / self.n if self.n else None,
            "passed": passed, "reason": reason,
        }


# ------------------------------------------------------------- TFX component


def _examples_files(examples, split: str) -> List[str]:
    import tensorflow as tf
    uri = artifact_utils.get_split_uri([examples], split)
    return sorted(tf.io.gfile.glob(os.path.join(uri, "*.gz")))


def _records(files: List[str]):
    import tensorflow as tf
    if not files:
        return iter(())
    return (r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def _image_and_label(record: bytes) -> Tuple[bytes, int]:
    import tensorflow as tf
    f = tf.train.Example.FromString(record).features.feature
    return f["image"].bytes_list.value[0], int(f["label"].int64_list.value[0])


def calibration_images(train_files: List[str], count: int) -> List[bytes]:
    """Encoded images of ``count`` training examples spread evenly over the split."""
    total = sum(1 for _ in _records(train_files))
    if total == 0 or count <= 0:
        return []
    wanted = {i * total // min(count, total) for i in range(min(count, total))}
    return [_image_and_label(r)[0] for i, r in enumerate(_records(train_files)) if i in wanted]


def _batches(iterable, size: int):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def describe(backbone: str, variant: str, label_names: Sequence[str]) -> str:
    from components import backbones
    spec = backbones.get_spec(backbone)
    kind = {"float32": "float32", "fp16": "float16 weights", "dynamic": "dynamic-range int8 weights",
            "int8": "full-integer int8, uint8 input/output"}[variant]
    return (f"{spec.label} image classifier retrained on {len(label_names)} classes ({kind}). "
            f"Input: RGB, resized to {spec.input_size}x{spec.input_size} (bilinear, antialiased, "
            f"whole image squeezed to a square), raw pixel values 0..255; the model applies "
            f"{spec.label}'s scaling {spec.scaling} itself. Output: probability of each label.")


def export_variants(pixel_model, variants: Sequence[str], bounds: Mapping[str, float],
                    label_names: Sequence[str], backbone: str, out_dir: str,
                    calibration_bytes: Sequence[bytes], eval_batches: Iterable[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                    version: str = "", num_threads: int = 2) -> Dict[str, Any]:
    """Converts, writes and measures the variants; returns the parity report.

    ``eval_batches`` yields (pixels [B, H, W, 3] 0..255, reference probabilities
    [B, C], labels [B]).  Writes ``FILE_NAMES[v]``, ``labels.txt`` and ``parity.json``
    into ``out_dir`` (any tf.io.gfile path).
    """
    import tensorflow as tf
    from components import preprocessing
    size = int(pixel_model.input_shape[1])

    def calibration():
        for batch in _batches(calibration_bytes, 32):
            for pixels in preprocessing.decode_batch(batch, size).numpy():
                yield pixels

    tf.io.gfile.makedirs(out_dir)
    report: Dict[str, Any] = {"variants": {}, "calibration_examples": len(calibration_bytes),
                              "reference": "SavedModel serving_default (Format-Serving)",
                              "backbone": backbone, "label_names": list(label_names)}
    classifiers, counters = {}, {}
    for variant in variants:
        entry: Dict[str, Any] = {"file": FILE_NAMES[variant], "bound": float(bounds[variant])}
        report["variants"][variant] = entry
        start = time.time()
        try:
            if variant == "int8" and not calibration_bytes:
                raise ValueError("no training images to calibrate on")
            data = convert(pixel_model, variant, calibration if variant == "int8" else None)
            data = add_metadata(data, label_names, name=f"{backbone} retrained ({variant})",
                                description=describe(backbone, variant, label_names), version=version)
            classifier = Classifier(data, num_threads=num_threads)
        except Exception as e:  # a failed variant is reported, the others go on
            entry.update(passed=False, reason=f"conversion failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        entry.update(bytes=len(data), convert_seconds=round(time.time() - start, 2),
                     input_type=classifier.input_dtype.name, output_type=classifier.output_dtype.name,
                     input_quantization=list(classifier.input_quantization))
        if variant == "int8" and tuple(classifier.input_quantization) != INT8_INPUT_QUANTIZATION:
            entry.update(passed=False, reason=f"uint8 input quantization {classifier.input_quantization} "
                                              f"is not raw pixels {INT8_INPUT_QUANTIZATION}")
            continue
        with tf.io.gfile.GFile(os.path.join(out_dir, FILE_NAMES[variant]), "wb") as f:
            f.write(data)
        classifiers[variant], counters[variant] = classifier, ParityCounter()

    reference_counter = ParityCounter()
    for pixels, reference, labels in eval_batches:
        reference_counter.update(reference, reference, labels)
        for variant, classifier in classifiers.items():
            counters[variant].update(classifier.predict(pixels), reference, labels)
    report["eval_examples"] = reference_counter.n
    report["reference_accuracy"] = reference_counter.result(0.0)["accuracy"]
    for variant, counter in counters.items():
        report["variants"][variant].update(counter.result(float(bounds[variant])))
    report["passed"] = [v for v in variants if report["variants"][v].get("passed")]
    report["failed"] = {v: report["variants"][v]["reason"] for v in variants if not report["variants"][v].get("passed")}
    with tf.io.gfile.GFile(os.path.join(out_dir, LABELS_FILE), "w") as f:
        f.write("".join(f"{n}\n" for n in label_names))
    with tf.io.gfile.GFile(os.path.join(out_dir, PARITY_FILE), "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    return report


def read_report(tflite_models_uri: str) -> Dict[str, Any]:
    import tensorflow as tf
    with tf.io.gfile.GFile(os.path.join(tflite_models_uri, PARITY_FILE)) as f:
        return json.load(f)


def _eval_batches(eval_files: List[str], serving_dir: str, size: int, batch_size: int = 32):
    """(pixels, SavedModel probabilities, labels) for the raw eval examples."""
    import tensorflow as tf
    from components import preprocessing
    serve = tf.saved_model.load(serving_dir).signatures["serving_default"]
    for batch in _batches(_records(eval_files), batch_size):
        images, labels = zip(*(_image_and_label(r) for r in batch))
        reference = serve(examples=tf.constant(batch))["probabilities"].numpy()
        pixels = preprocessing.decode_batch(images, size).numpy()
        yield pixels, reference, np.asarray(labels, np.int64)


class TFLiteModels(types.Artifact):
    """TFLite variants, labels.txt and parity.json of one trained model."""
    # Kubeflow V2 writes TYPE_NAME as the schema title (pattern '<module>.<Class>')
    # and imports it back as a class path: the components package must expose
    # TFLiteModels (a lazy ``__getattr__`` in components/__init__.py).
    TYPE_NAME = "components.TFLiteModels"


class TFLiteExportSpec(ComponentSpec):
    PARAMETERS = {
        "variants": ExecutionParameter(type=str),  # JSON list
        "parity_bounds": ExecutionParameter(type=str),  # JSON {variant: min agreement}
        "calibration_images": ExecutionParameter(type=int),
        "num_threads": ExecutionParameter(type=int),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
    }
    OUTPUTS = {"tflite_models": ChannelParameter(type=TFLiteModels)}


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        from components import backbones, trainer  # trainer needs tf.Transform: only here
        out = artifact_utils.get_single_instance(output_dict["tflite_models"])
        blessings = input_dict.get("model_blessing") or []
        if blessings and not artifact_utils.get_single_instance(blessings).get_int_custom_property("blessed"):
            logging.info("Model not blessed: no TFLite conversion.")
            out.set_int_custom_property("converted", 0)
            return
        variants = check_variants(json.loads(exec_properties["variants"]))
        bounds = parity_bounds(json.loads(exec_properties.get("parity_bounds") or "{}"))
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        head, info = trainer.load_head(model.uri)
        current = _fingerprint(info["backbone"], info["weights"])
        if info.get("weights_fingerprint") and current != info["weights_fingerprint"]:
            raise RuntimeError(f"the {info['backbone']} weights changed since the head was trained "
                               f"({info['weights_fingerprint'][:12]} -> {str(current)[:12]}); retrain")
        pixel_model = trainer.build_pixel_model(info["backbone"], info["weights"], head)
        calib = calibration_images(_examples_files(examples, "train"),
                                   int(exec_properties["calibration_images"])) if "int8" in variants else []
        size = backbones.get_spec(info["backbone"]).input_size
        report = export_variants(
            pixel_model, variants, bounds, info["label_names"], info["backbone"], out.uri, calib,
            _eval_batches(_examples_files(examples, "eval"), os.path.join(model.uri, "Format-Serving"), size),
            version=str(model.id), num_threads=int(exec_properties.get("num_threads") or 2))
        for variant, reason in report["failed"].items():
            logging.warning("TFLite %s will not be pushed: %s", variant, reason)
        out.set_int_custom_property("converted", 1)
        out.set_string_custom_property("passed_variants", json.dumps(report["passed"]))
        out.set_string_custom_property("failed_variants", json.dumps(report["failed"]))


class TFLiteExport(base_component.BaseComponent):
    """Converts the trained model to TFLite variants and measures their parity.

    Inputs: the Trainer's ``model`` (Format-Serving + the saved head), the raw
    ``examples`` (train split: int8 calibration; eval split: parity), and optionally
    the Evaluator's ``model_blessing`` (nothing is converted for an unblessed model).
    """

    SPEC_CLASS = TFLiteExportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel,
                 model_blessing: Optional[types.BaseChannel] = None,
                 variants: Sequence[str] = DEFAULT_VARIANTS,
                 parity_bounds: Optional[Mapping[str, float]] = None,
                 calibration_images: int = DEFAULT_CALIBRATION_IMAGES, num_threads: int = 2):
        variants = check_variants(variants)
        bounds = _bounds(parity_bounds)
        super().__init__(spec=TFLiteExportSpec(
            model=model, examples=examples, model_blessing=model_blessing,
            variants=json.dumps(variants),
            parity_bounds=json.dumps({v: bounds[v] for v in variants}, sort_keys=True),
            calibration_images=int(calibration_images), num_threads=int(num_threads),
            tflite_models=types.Channel(type=TFLiteModels)))


def _fingerprint(backbone: str, weights: str) -> Optional[str]:
    from components import backbones
    if weights == "random":
        return None
    try:
        return backbones.weights_fingerprint(backbone, weights)
    except backbones.BackboneWeightsError:
        return None
