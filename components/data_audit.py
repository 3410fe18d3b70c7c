"""DataAudit: suspected mislabels, near-duplicates, leakage and small classes.

Runs after BottleneckGen on its ``bottlenecks`` (train + eval; the plain view
only when augmented views exist) and on ImageExampleGen's ``examples``, which
map each image's content hash to its path under the images root (as in the
ingestion report) and hold its pixels, from which a 16 x 16 thumbnail
(components/pixel_signature.py) confirms near-duplicate pairs. The arithmetic
is numpy (components/audit_math.py); the vectors are already computed, so the
audit costs seconds.

Output ``data_audit`` (type components.DataAuditReport) holds ``audit.json``:
audit_math.Audit.to_json() plus ``label_names``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import audit_math, contracts, image_example_gen, ingest_passes, pixel_signature

READ_BATCH = 1024


class DataAuditReport(Artifact):
    TYPE_NAME = contracts.DATA_AUDIT_TYPE  # importable: see components/__init__.py


class DataAuditSpec(ComponentSpec):
    PARAMETERS = {"min_class_images": ExecutionParameter(type=int)}
    INPUTS = {
        "bottlenecks": ChannelParameter(type=standard_artifacts.Examples),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {"data_audit": ChannelParameter(type=DataAuditReport)}


def split_records(uri: str, split: str) -> tf.data.Dataset:
    files = tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*"))
    return tf.data.TFRecordDataset(sorted(files), compression_type="GZIP").batch(READ_BATCH)


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    path: str                                # under the images root
    signature: Optional[np.ndarray]          # pixel_signature.signature(); None: unreadable


def _example_fields(examples_uri: str, splits: List[str], keys: Tuple[str, ...]):
    """Yields each Example's `keys` (bytes features; b"" where one is absent) as a
    tuple, over `splits`."""
    spec = {k: tf.io.FixedLenFeature([], tf.string, default_value=b"") for k in keys}
    for split in splits:
        for batch in split_records(examples_uri, split):
            parsed = tf.io.parse_example(batch, spec)
            yield from zip(*(parsed[k].numpy() for k in keys))


def read_paths(examples_uri: str, splits: List[str]) -> Dict[str, str]:
    """content sha256 -> path under the images root, from ImageExampleGen's Examples."""
    return {sha.decode(): path.decode("utf-8", "replace") for sha, path in _example_fields(
        examples_uri, splits, (contracts.CONTENT_SHA256_KEY, contracts.RELATIVE_PATH_KEY))}


def read_images(examples_uri: str, splits: List[str]) -> Dict[str, ImageInfo]:
    """content sha256 -> path and pixel signature. ImageExampleGen stores each image's
    signature (contracts.PIXEL_SIGNATURE_KEY, from the pixels it decoded anyway);
    Examples written before it did are signed here from the canonical image bytes
    (parsed in a second read, for those alone), READ_BATCH images at a time on a few
    threads (Pillow decodes without the GIL): 18 ms for a 12 MP JPEG here, a fifth
    of the ingestion's own decode of it (benchmarks/audit_quality.py)."""
    found: Dict[str, ImageInfo] = {}
    unsigned: Dict[bytes, str] = {}  # sha -> path
    for sha, path, stored in _example_fields(examples_uri, splits, (
            contracts.CONTENT_SHA256_KEY, contracts.RELATIVE_PATH_KEY, contracts.PIXEL_SIGNATURE_KEY)):
        sig = pixel_signature.from_feature(stored)  # None: unsigned (b"") or older Examples
        if sig is None:
            unsigned[sha] = path.decode("utf-8", "replace")
        else:
            found[sha.decode()] = ImageInfo(path.decode("utf-8", "replace"), sig)
    if not unsigned:
        return found  # the image bytes are not even parsed
    batch: List[Tuple[bytes, bytes]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=ingest_passes.decode_threads()) as pool:
        def flush():
            for (sha, _), sig in zip(batch, pool.map(pixel_signature.signature, [b[1] for b in batch])):
                found[sha.decode()] = ImageInfo(unsigned[sha], sig)
            batch.clear()
        for sha, image in _example_fields(examples_uri, splits, (contracts.CONTENT_SHA256_KEY, contracts.IMAGE_KEY)):
            if sha in unsigned:
                batch.append((sha, image))
                if len(batch) >= READ_BATCH:
                    flush()
        flush()
    return found


def read_vectors(bottlenecks_uri: str, split: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(features [N, D], labels [N], content hashes) of a split's plain view (view 0)."""
    first = next(iter(split_records(bottlenecks_uri, split).unbatch().take(1)), None)
    if first is None:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), []
    dim = len(tf.train.Example.FromString(first.numpy())
              .features.feature[contracts.FEATURES_KEY].float_list.value)
    spec = {contracts.FEATURES_KEY: tf.io.FixedLenFeature([dim], tf.float32),
            contracts.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
            contracts.CONTENT_SHA256_KEY: tf.io.FixedLenFeature([], tf.string),
            "view": tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    feats, labels, shas = [], [], []
    for batch in split_records(bottlenecks_uri, split):
        parsed = tf.io.parse_example(batch, spec)
        plain = parsed["view"].numpy() == 0
        feats.append(parsed[contracts.FEATURES_KEY].numpy()[plain])
        labels.append(parsed[contracts.LABEL_KEY].numpy()[plain])
        shas += [s.decode() for s in parsed[contracts.CONTENT_SHA256_KEY].numpy()[plain]]
    return np.concatenate(feats), np.concatenate(labels), shas


def run_audit(bottlenecks_uri: str, examples_uri: str, splits: List[str],
              label_names: List[str], min_class_images: int, cut_channels: int = 0) -> dict:
    """The audit.json object of one run's bottlenecks; ``cut_channels`` > 0: they hold
    fine-tuning's flattened cut activations, audited as their channel means."""
    images = read_images(examples_uri, splits)
    vectors, labels, split_of, rel, signatures = [], [], [], [], []
    for split in splits:
        x, y, shas = read_vectors(bottlenecks_uri, split)
        if not len(y):
            continue
        # By content, not in Beam's varying order: the regression's folds, and so
        # the scores, are the same for the same images on every run.
        order = sorted(range(len(shas)), key=shas.__getitem__)
        x, y, shas = x[order], y[order], [shas[i] for i in order]
        if cut_channels:
            x = x.reshape(len(x), -1, cut_channels).mean(axis=1)
        vectors.append(x)
        labels.append(y)
        split_of += [split] * len(y)
        info = [images.get(sha) for sha in shas]
        rel += [i.path if i else f"sha256:{sha}" for i, sha in zip(info, shas)]  # foreign: the hash
        signatures += [i.signature if i else None for i in info]
    x = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    audit = audit_math.audit(x, y, split_of, rel, label_names, min_class_images=min_class_images,
                             signatures=signatures)
    return {**audit.to_json(), "label_names": list(label_names)}


def write_audit(out_uri: str, result: dict) -> None:
    with tf.io.gfile.GFile(os.path.join(out_uri, contracts.AUDIT_FILE), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True, ensure_ascii=False)


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict, output_dict, exec_properties):
        bottlenecks = artifact_utils.get_single_instance(input_dict["bottlenecks"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        splits = artifact_utils.decode_split_names(bottlenecks.split_names)
        label_names = image_example_gen.read_labels(examples.uri)
        result = run_audit(bottlenecks.uri, examples.uri, splits, label_names,
                           int(exec_properties["min_class_images"]),
                           bottlenecks.get_int_custom_property("cut_channels"))  # 0 when absent
        out = artifact_utils.get_single_instance(output_dict["data_audit"])
        write_audit(out.uri, result)
        out.set_int_custom_property("suspected_mislabels", len(result["suspected_mislabels"]))
        out.set_int_custom_property("near_duplicates", len(result["near_duplicates"]))
        out.set_int_custom_property("leakage_pairs", sum(
            1 for p in result["near_duplicates"] if len(set(p["splits"])) > 1))


class DataAudit(base_component.BaseComponent):
    """The audit of BottleneckGen's vectors (see the module docstring)."""

    SPEC_CLASS = DataAuditSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, bottlenecks: types.BaseChannel, examples: types.BaseChannel,
                 min_class_images: int = audit_math.MIN_CLASS_IMAGES):
        super().__init__(spec=DataAuditSpec(
            bottlenecks=bottlenecks, examples=examples, min_class_images=int(min_class_images),
            data_audit=types.Channel(type=DataAuditReport)))
