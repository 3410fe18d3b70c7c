"""Names every part of the pipeline agrees on, defined once. Imports no TensorFlow.

Components write these, runners, reports and tools read them back, and MLMD
stores some of them (artifact type names), so a change here is a change of
format: old workdirs must still read (see tests of the old-workdir fixture).
"""

from __future__ import annotations

import os
import re
from typing import List

# ------------------------------------------------------------- tf.Example keys
# Raw Examples (ImageExampleGen), one per image.
IMAGE_KEY = "image"                    # bytes: canonical encoded image (JPEG/PNG)
LABEL_KEY = "label"                    # int64: index into the label vocabulary
LABEL_NAME_KEY = "label_name"          # bytes: the class folder's name
RELATIVE_PATH_KEY = "relative_path"    # bytes: path under the images root
HEIGHT_KEY = "height"                  # int64
WIDTH_KEY = "width"                    # int64
CONTENT_SHA256_KEY = "content_sha256"  # bytes: sha256 of the original file (split + cache key)
PIXEL_SIGNATURE_KEY = "pixel_signature"  # bytes: pixel_signature.signature() (DataAudit); b"": none
# Everything but the image: what the serving signature passes through untouched.
NON_INPUT_KEYS = (LABEL_KEY, LABEL_NAME_KEY, RELATIVE_PATH_KEY, HEIGHT_KEY, WIDTH_KEY,
                  CONTENT_SHA256_KEY, PIXEL_SIGNATURE_KEY)
# Bottleneck Examples (BottleneckGen) and the Transform graph's output.
FEATURES_KEY = "features"              # float32[feature_dim]: the backbone's vector

# ------------------------------------------- the Trainer's SavedModel signatures
SERVING_SIGNATURE = "serving_default"  # serialized raw Examples (image bytes) -> probabilities
# BottleneckGen's serialized tf.Examples (FEATURES_KEY) -> the same outputs, the head
# alone: what the Evaluator runs on cached features (components/evaluator.py).
FEATURES_SIGNATURE = "serving_features"
PROBABILITIES_KEY = "probabilities"    # both signatures' output the Evaluator reads

# --------------------------------------------------------- files in artifacts
SERVING_MODEL_DIR = "Format-Serving"   # TFX's SavedModel folder in a Model artifact
LABELS_FILE = "labels.txt"             # label vocabulary, one per line, index = line
LABEL_SPACE_FILE = "label_space.json"  # a Model's classes and class shares (LabelGuard)
INGESTION_REPORT_FILE = "ingestion_report.jsonl"  # every file, used or skipped, and why
INGEST_CHECKS_FILE = "image_checks.jsonl.gz"  # what the next ingestion need not decode again
# ImageExampleGen's examples per split: file <prefix>_<split>.txt beside the
# splits and the Examples artifact's custom property <prefix>_<split>.
SPLIT_COUNT_PREFIX = "split_count"
HEAD_DIR = "head"                      # in a Model artifact: the Trainer's head alone
HEAD_FILE = "head.h5"                  # under HEAD_DIR: the Keras head
HEAD_INFO_FILE = "head.json"           # under HEAD_DIR: what the head was trained on
TRAIN_ROWS_FILE = "train_rows.sha256"  # under HEAD_DIR: sorted digests of the train rows (continuation.py)
PARITY_FILE = "parity.json"            # TFLite variants' agreement with the SavedModel
METRICS_FILE = "metrics.json"          # a pushed version's evaluation and gate
COMPLETE_MARKER = "_SUCCESS"           # written last into a pushed version
GATE_FILE = "gate.json"                # the Evaluator's thresholds, in its `evaluation` output
LABEL_CHECK_FILE = "label_check.json"  # LabelGuard's verdict, in its `label_check` output
AUDIT_FILE = "audit.json"              # DataAudit's findings, in its `data_audit` output
# How the Evaluator's per-class recall gate (--max-class-recall-drop) words a refusal
# (components/evaluation.py); `retrain runs` and the report pick these lines out.
CLASS_RECALL_FAILURE_PREFIX = "recall of class "
TRAINING_DIR = "training"              # in the Trainer's model_run output: logs and history
TRAINING_HISTORY_FILE = "history.json" # loss and metrics per epoch, under TRAINING_DIR
BLESSED_FILE = "BLESSED"               # TFX's marker in a blessed ModelBlessing's folder
# A pushed version is assembled in <serving>/<STAGING_PREFIX><owner>-<hex> and
# renamed into place; a staging folder whose owner process is gone is removed.
STAGING_PREFIX = ".incoming-"
WORKDIR_LOCK_FILE = ".retrain.lock"    # held (flock) by the `retrain run` using a workdir

# ------------------------------------------- artifact type names (in MLMD)
# Kubeflow imports a custom type's TYPE_NAME as a class path; MLMD stores it.
TFLITE_MODELS_TYPE = "components.TFLiteModels"
LABEL_CHECK_TYPE = "components.LabelCheck"
CHANGE_CHECK_TYPE = "components.ChangeCheck"
DATA_AUDIT_TYPE = "components.DataAuditReport"

# ------------------------------------------------------------- environment
# Log file for C++ libraries' fd-2 lines (components/native_stderr.py); set by
# `retrain run` without --verbose.
NATIVE_STDERR_LOG_ENV = "TFX_RETRAIN_NATIVE_STDERR_LOG"
NATIVE_STDERR_LOG_FILE = "native-stderr.log"  # in <workdir>/logs/

# ------------------------------------------------ unchanged-input reruns
# pipeline/unchanged.py: the inputs of the last completed run, beside the MLMD
# database in the workdir, and the MLMD execution type of a run that ended early
# because nothing changed since (listed by `retrain runs` with status "unchanged").
RUN_FINGERPRINT_FILE = "last_run_fingerprint.json"
UNCHANGED_RUN_TYPE = "UnchangedRun"

# ------------------------------------------------------------- run outcomes
# A run's end, recorded by the local runner as a custom property of its
# pipeline_run context; a run without one, not held by a live process, was cut short.
RUN_OUTCOME_PROPERTY = "retrain_outcome"
RUN_COMPLETE, RUN_FAILED, RUN_INTERRUPTED, RUN_RUNNING = "complete", "failed", "interrupted", "running"
PUSHER_NODE = "TFLitePusher"           # the last node of a local run
# Fault tests: "<node id>:<point>" at which components/kill_hook.py kills the process.
TEST_KILL_AT_ENV = "RETRAIN_TEST_KILL_AT"

# ----------------------------------------------------------------- backbones
# The backbone a run, `retrain fetch-weights` and the weights cache assume unless told.
DEFAULT_BACKBONE = "mobilenet_v1"
# Weight sources that are not a file path (components/backbones/__init__.py says what each is).
NAMED_WEIGHTS = ("imagenet", "keras", "random")

# ------------------------------------------------- node ids of the pipeline
# How a run finds the previous run's blessed model and FeatureCache
# (pipeline/previous_runs.py). Resolvers (PipelineConfig.lookup = "resolver"):
BLESSED_MODEL_RESOLVER = "latest_blessed_model_resolver"
FEATURE_CACHE_RESOLVER = "latest_feature_cache_resolver"
# Registry steps (lookup = "registry", open-source KFP): Argo task names, so
# letters, digits and '-' only (kubeflow/runner.py check_task_names).
BLESSED_MODEL_LOOKUP = "latest-blessed-model-lookup"
FEATURE_CACHE_LOOKUP = "latest-feature-cache-lookup"
RECORD_BLESSED_MODEL = "record-blessed-model"
RECORD_FEATURE_CACHE = "record-feature-cache"
# Kubeflow's early exit (kubeflow/change_gate.py): the step that compares this run's
# inputs with the last completed run's, and the step that records them after a run.
CHANGE_CHECK = "change-check"
RECORD_RUN_FINGERPRINT = "record-run-fingerprint"
# Its pipeline parameter: 1 runs in full although nothing changed (a one-off
# `retrain submit --force` of the compiled, scheduled spec); compiled default 0.
FORCE_PARAMETER = "force"

_VERSION = re.compile(r"^[0-9]+$")

# Every character str.splitlines() breaks a line on: none may be in a class name
# (components/image_io.py label_problem), so reading labels by "\n" alone and
# any reader splitting lines agree on the class count.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def read_labels(text: str) -> List[str]:
    """A labels file's class names: split on "\\n" only (a class name can never
    hold a line break; str.splitlines() would also split on U+2028 and others)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _listdir(folder: str) -> List[str]:
    if "://" not in folder:
        return os.listdir(folder) if os.path.isdir(folder) else []
    import tensorflow as tf  # object stores: only when asked for one
    return [n.rstrip("/") for n in tf.io.gfile.listdir(folder)] if tf.io.gfile.isdir(folder) else []


def _exists(path: str) -> bool:
    if "://" not in path:
        return os.path.exists(path)
    import tensorflow as tf
    return tf.io.gfile.exists(path)


def join(base: str, *parts: str) -> str:
    """os.path.join for local paths, '/' for URIs (gs://, s3://)."""
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def numbered_versions(serving_dir: str) -> List[int]:
    """Every numbered folder in a serving dir, complete or not, ascending."""
    return sorted(int(n) for n in _listdir(serving_dir) if _VERSION.match(n))


def list_versions(serving_dir: str) -> List[int]:
    """Complete versions of a serving dir (holding COMPLETE_MARKER), ascending:
    the only ones a consumer, a report or `retrain bless` may use."""
    return [v for v in numbered_versions(serving_dir)
            if _exists(join(serving_dir, str(v), COMPLETE_MARKER))]
