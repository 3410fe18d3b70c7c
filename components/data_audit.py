"""DataAudit: suspected mislabels, near-duplicates, leakage and small classes.

Runs after BottleneckGen on its ``bottlenecks`` (train + eval; the plain view
only when augmented views exist) and on ImageExampleGen's ``examples``, which
map each image's content hash to its path under the images root (as in the
ingestion report). The arithmetic is numpy (components/audit_math.py); the
vectors are already computed, so the audit costs seconds.

Output ``data_audit`` (type components.DataAuditReport) holds ``audit.json``:
audit_math.Audit.to_json() plus ``label_names``.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import audit_math, contracts, image_example_gen

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


def _records(uri: str, split: str) -> tf.data.Dataset:
    files = tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*"))
    return tf.data.TFRecordDataset(sorted(files), compression_type="GZIP").batch(READ_BATCH)


def read_paths(examples_uri: str, splits: List[str]) -> Dict[str, str]:
    """content sha256 -> path under the images root, from ImageExampleGen's Examples."""
    spec = {contracts.CONTENT_SHA256_KEY: tf.io.FixedLenFeature([], tf.string),
            contracts.RELATIVE_PATH_KEY: tf.io.FixedLenFeature([], tf.string)}
    found: Dict[str, str] = {}
    for split in splits:
        for batch in _records(examples_uri, split):
            parsed = tf.io.parse_example(batch, spec)
            for sha, path in zip(parsed[contracts.CONTENT_SHA256_KEY].numpy(),
                                 parsed[contracts.RELATIVE_PATH_KEY].numpy()):
                found[sha.decode()] = path.decode("utf-8", "replace")
    return found


def read_vectors(bottlenecks_uri: str, split: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(features [N, D], labels [N], content hashes) of a split's plain view (view 0)."""
    first = next(iter(_records(bottlenecks_uri, split).unbatch().take(1)), None)
    if first is None:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), []
    dim = len(tf.train.Example.FromString(first.numpy())
              .features.feature[contracts.FEATURES_KEY].float_list.value)
    spec = {contracts.FEATURES_KEY: tf.io.FixedLenFeature([dim], tf.float32),
            contracts.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
            contracts.CONTENT_SHA256_KEY: tf.io.FixedLenFeature([], tf.string),
            "view": tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    feats, labels, shas = [], [], []
    for batch in _records(bottlenecks_uri, split):
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
    paths = read_paths(examples_uri, splits)
    vectors, labels, split_of, rel = [], [], [], []
    for split in splits:
        x, y, shas = read_vectors(bottlenecks_uri, split)
        if not len(y):
            continue
        if cut_channels:
            x = x.reshape(len(x), -1, cut_channels).mean(axis=1)
        vectors.append(x)
        labels.append(y)
        split_of += [split] * len(y)
        rel += [paths.get(sha, f"sha256:{sha}") for sha in shas]  # foreign Examples: the hash
    x = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    audit = audit_math.audit(x, y, split_of, rel, label_names, min_class_images=min_class_images)
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
