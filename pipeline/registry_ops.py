"""`retrain bless --pipeline-root URI`: baseline control for Kubeflow runs.

On open-source KFP the pipeline finds its baseline through registry records
under the pipeline root (components/previous_artifacts.py), not through MLMD,
so blessing and resetting write records there:

* ``bless_version``: the model that pushed version V becomes the newest
  ``blessed_model`` record, so the next run's lookup copies it as the baseline
  (and LabelGuard checks against its classes). A later blessed run takes over.
* ``reset_baseline``: a ``{"reset": true}`` record; the lookup then finds no
  baseline and the next run is judged by the minimum accuracy alone.

Each record carries who, where, when and why, like the MLMD operations of
pipeline/history.py for local workdirs. Paths may be local, gs:// or s3://.
"""

from __future__ import annotations

import getpass
import json
import socket
from typing import Any, Dict, Optional

from components import contracts
from components.contracts import join as _join
from pipeline.history import HistoryError


def _who() -> Dict[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"user": user, "host": socket.gethostname()}


def bless_version(pipeline_root: str, pipeline_name: str, version: int,
                  serving_dir: Optional[str] = None, reason: str = "") -> Dict[str, Any]:
    import tensorflow as tf
    from components import previous_artifacts
    serving_dir = serving_dir or _join(pipeline_root, "serving")
    vdir = _join(serving_dir, str(int(version)))
    if version not in contracts.list_versions(serving_dir):
        pushed = contracts.list_versions(serving_dir)
        raise HistoryError(f"no pushed version {version} in {serving_dir} "
                           f"(pushed versions: {pushed or 'none'})")
    with tf.io.gfile.GFile(_join(vdir, contracts.METRICS_FILE)) as f:
        metrics = json.load(f)
    model_uri = metrics.get("model_uri")
    saved_model = _join(model_uri, contracts.SERVING_MODEL_DIR, "saved_model.pb") if model_uri else ""
    if not model_uri or not tf.io.gfile.exists(saved_model):
        raise HistoryError(f"version {version}'s model ({model_uri or 'not named in metrics.json'}) "
                           "has no SavedModel any more: it cannot be a baseline")
    registry = previous_artifacts.registry_uri(pipeline_root, pipeline_name)
    path = previous_artifacts.record(registry, previous_artifacts.BLESSED_MODEL, {
        "uri": model_uri, "model_id": metrics.get("model_id"), "blessed_from_version": int(version),
        "operation": "bless", "reason": reason, **_who()})
    accuracy = (metrics.get("evaluation") or {}).get("accuracy")
    return {"version": int(version), "model_uri": model_uri, "accuracy": accuracy,
            "operation": path}


def reset_baseline(pipeline_root: str, pipeline_name: str, reason: str = "") -> Dict[str, Any]:
    from components import previous_artifacts
    registry = previous_artifacts.registry_uri(pipeline_root, pipeline_name)
    if not previous_artifacts.records(registry, previous_artifacts.BLESSED_MODEL):
        raise HistoryError(f"nothing to reset: no blessed model is recorded in {registry}")
    current = previous_artifacts.latest(registry, previous_artifacts.BLESSED_MODEL)
    path = previous_artifacts.record(registry, previous_artifacts.BLESSED_MODEL, {
        "reset": True, "operation": "reset", "reason": reason,
        "revoked": [current["record"]] if current else [], **_who()})
    return {"revoked": [current["record"]] if current else [], "operation": path}
