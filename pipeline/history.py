"""Run history and baseline control, read from and recorded in a workdir's MLMD store.

* ``list_runs``: past pipeline runs (time, examples, accuracy, blessed, pushed
  version), with the baseline operations below in between, newest first.
* ``current_baseline``: the model the next run's Evaluator will compare with,
  found the way the pipeline finds it: the same MLMD channel query and the
  same ``LatestBlessedModelStrategy``.
* ``bless_version`` ("make pushed version V the baseline again", after a bad
  push): ``LatestBlessedModelStrategy`` takes the blessed Model with the
  *highest artifact id*, so blessing V's old Model artifact again would change
  nothing while newer blessed models exist. Instead a ``ManualBless``
  execution, in the pipeline's context, outputs a new Model artifact that
  points at V's model files (``uri`` of V's Trainer output, with
  ``source_model_id`` and ``blessed_from_version``) and a ModelBlessing
  (``blessed=1``, ``current_model_id`` = that new artifact) for it. Being the
  newest blessed Model, the unchanged resolver picks it; a later blessed run
  takes over as usual.
* ``reset_baseline`` ("start fresh", e.g. after a deliberate label-space
  change): a ``ManualBless`` execution (action ``reset``) takes every live
  blessing as input and marks it ``ABANDONED``. TFX resolves only LIVE
  artifacts, so the resolver then finds no baseline: the next run is judged by
  the minimum accuracy alone and LabelGuard has nothing to compare with. The
  blessings keep ``blessed=1`` (the history stays true) and get
  ``revoked_by``/``revoked_reason``.

Each operation gets its own context (type ``retrain_operation``, named
``<action>-<UTC time>-<id>``) besides the pipeline context, with the user,
host, reason and time as execution properties: lineage shows who did what,
when and why. It is not a ``pipeline_run``, so run listings and "latest run"
never mistake it for a run.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import contracts
from pipeline import mlmd_store, unchanged
from pipeline.config import PipelineConfig
from pipeline.mlmd_store import custom_property as _prop
from pipeline.run_record import RunRecord
from pipeline.runs_table import format_runs  # noqa: F401 - `retrain runs`' table, kept importable here

OPERATION_EXECUTION_TYPE = "ManualBless"
OPERATION_CONTEXT_TYPE = "retrain_operation"
_Artifact = metadata_store_pb2.Artifact
_Event = metadata_store_pb2.Event


class HistoryError(RuntimeError):
    """Bad request (no such version, no runs in this workdir...); message says what."""


# ---------------------------------------------------------------- store access

def open_store(config: PipelineConfig, write: bool = False) -> metadata_store.MetadataStore:
    if not write:
        return mlmd_store.open_store(config)
    try:
        return mlmd_store.open_store(config, write=True)
    except FileNotFoundError as e:
        raise HistoryError(str(e)) from None


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000.0).astimezone().isoformat(timespec="seconds")


def _pipeline_context(store, pipeline_name: str) -> Optional[metadata_store_pb2.Context]:
    return store.get_context_by_type_and_name(mlmd_store.PIPELINE_CONTEXT_TYPE, pipeline_name)


# ------------------------------------------------------------ baseline lookup

def _resolver_channel(pipeline_name: str, type_name: str):
    """The InputSpec.Channel the compiled pipeline gives the baseline resolver."""
    from tfx.proto.orchestration import pipeline_pb2
    channel = pipeline_pb2.InputSpec.Channel()
    query = channel.context_queries.add()
    query.type.name = mlmd_store.PIPELINE_CONTEXT_TYPE
    query.name.field_value.string_value = pipeline_name
    channel.artifact_query.type.name = type_name
    return channel


class _Handle:
    """What tfx's channel resolver needs of a metadata handle: `.store`."""

    def __init__(self, store):
        self.store = store


def current_baseline(store, pipeline_name: str, unfinished=()) -> Optional[Dict[str, Any]]:
    """What the next run's ``latest_blessed_model_resolver`` will return, or None.

    Same channel query (pipeline context, LIVE artifacts) and the same
    LatestBlessedModelStrategy as the pipeline, run against `store`, without the
    blessings `unfinished` (ids) of runs that never finished: the next run
    abandons those before it resolves (pipeline/run_outcome.py).
    """
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
        LatestBlessedModelStrategy)
    from tfx.orchestration.portable.input_resolution import channel_resolver
    handle = _Handle(store)
    inputs = {key: channel_resolver.resolve_single_channel(handle, _resolver_channel(pipeline_name, t))
              for key, t in (("model", "Model"), ("model_blessing", "ModelBlessing"))}
    inputs["model_blessing"] = [b for b in inputs["model_blessing"] if b.id not in set(unfinished)]
    result = LatestBlessedModelStrategy().resolve_artifacts(store, inputs) or {}
    if not result.get("model"):
        return None
    model, blessing = result["model"][0], result["model_blessing"][0]
    return {
        "model_id": model.id, "model_uri": model.uri, "blessing_id": blessing.id,
        "source_model_id": _prop(model.mlmd_artifact, "source_model_id"),
        "blessed_from_version": _prop(model.mlmd_artifact, "blessed_from_version"),
    }


# ----------------------------------------------------------------- listing runs

def _run_row(store, run_ctx, config: PipelineConfig) -> Dict[str, Any]:
    error = None
    try:
        r = RunRecord.from_store(store, run_ctx, config)
    except Exception as e:  # noqa: BLE001 - one unreadable run must not hide the others
        error = f"{type(e).__name__}: {e}"
        r = RunRecord.from_store(store, run_ctx, config, read_files=False)
    class_failures = [f for f in (r.evaluation.failures if r.evaluation else ())
                      if f.startswith(contracts.CLASS_RECALL_FAILURE_PREFIX)]
    start = _start(r) if r.trainer_settings.get("trainable_blocks") and not error else None
    return {
        "kind": "run", "id": r.run_id, "time": _iso(r.created_ms), "time_ms": r.created_ms,
        "status": r.status, "examples": dict(r.examples), "accuracy": r.accuracy,
        "baseline_accuracy": r.baseline_accuracy, "blessed": r.blessed,
        "pushed_version": r.pushed_version, "model_id": r.model_id,
        "push_recorded": r.push.recorded if r.pushed_version is not None else None,
        "blessing_id": r.blessing_id, "revoked": r.blessing_revoked, "baseline": False,
        # The per-class gate's refusal ("recall of class 'pug' dropped ..."): the note.
        **({"reason": "; ".join(class_failures)} if class_failures else {}),
        # fine-tuned backbone blocks (--trainable-blocks; absent from head-only settings)
        "trainable_blocks": int(r.trainer_settings.get("trainable_blocks", 0)),
        **({"start": start} if start else {}),
        **({"error": error} if error else {}),
    }


def _start(record: RunRecord) -> Optional[str]:
    """How an N > 0 run's Trainer started: head.json's ``start`` as the report words it
    (continued from the served model, or from the ImageNet weights and why); None when
    the model or its record is missing."""
    if record.uris.model is None:
        return None
    from components import continuation, model_info
    return continuation.describe((model_info.read_head_info(record.uris.model) or {}).get("start"))


def _operation_rows(store, pipeline_ctx) -> List[Dict[str, Any]]:
    in_pipeline = {e.id for e in store.get_executions_by_context(pipeline_ctx.id)}
    rows = []
    for ex in store.get_executions_by_type(OPERATION_EXECUTION_TYPE):
        if ex.id not in in_pipeline:
            continue
        outputs = mlmd_store.output_artifacts(store, ex.id)
        blessing = (outputs.get("blessing") or [None])[0]
        rows.append({
            "kind": _prop(ex, "action", "bless"), "id": ex.name or str(ex.id),
            "time": _iso(ex.create_time_since_epoch), "time_ms": ex.create_time_since_epoch,
            "version": _prop(ex, "version"), "reason": _prop(ex, "reason", ""),
            "user": _prop(ex, "user", ""), "revoked": _prop(ex, "revoked_blessings"),
            "model_id": outputs["model"][0].id if outputs.get("model") else None,
            "blessing_id": blessing.id if blessing is not None else None, "baseline": False,
        })
    return rows


def list_runs(config: PipelineConfig, limit: Optional[int] = None) -> List[Dict[str, Any]]:
    """Runs and baseline operations in this workdir, newest first.

    Run rows: kind "run", id, time, status, examples, accuracy,
    baseline_accuracy, blessed, revoked (its blessing was revoked by a reset),
    pushed_version, baseline (its model is the next run's baseline); a rerun that
    ended early (pipeline/unchanged.py) has status "unchanged", reason and
    since_run; with N > 0, trainable_blocks and start (how the Trainer started:
    continued from the served model, or from the ImageNet weights and why).
    Operation rows: kind "bless" / "reset", version, reason, user, baseline.
    """
    store = open_store(config)
    pipeline_ctx = _pipeline_context(store, config.pipeline_name)
    if pipeline_ctx is None:
        return []
    runs = mlmd_store.run_contexts(store, config.pipeline_name)
    if limit:
        runs = runs[:limit]
    rows = [_run_row(store, ctx, config) for ctx in runs] + _operation_rows(store, pipeline_ctx)
    rows += unchanged.history_rows(store, pipeline_ctx)  # reruns that ended early
    rows.sort(key=lambda r: r["time_ms"], reverse=True)
    unfinished = [r["blessing_id"] for r in rows if r["kind"] == "run"
                  and r["status"] in (contracts.RUN_FAILED, contracts.RUN_INTERRUPTED)]
    baseline = current_baseline(store, config.pipeline_name, unfinished)
    if baseline is not None:
        for row in rows:  # the row that produced the blessing in force
            if row.get("blessing_id") == baseline["blessing_id"]:
                row["baseline"] = True
                break
    return rows[:limit] if limit else rows


# -------------------------------------------------------------- bless / reset

def _read_version_metrics(config: PipelineConfig, version: int) -> Tuple[str, Dict[str, Any]]:
    import tensorflow as tf  # gfile: serving dirs may be gs:// or s3:// URIs
    vdir = os.path.join(config.serving_dir, str(int(version)))
    path = os.path.join(vdir, contracts.METRICS_FILE)
    versions = contracts.list_versions(config.serving_dir)
    if int(version) not in versions or not tf.io.gfile.exists(path):
        raise HistoryError(f"no pushed version {version} in {config.serving_dir} "
                           f"(pushed versions: {versions or 'none'})")
    with tf.io.gfile.GFile(path) as f:
        return vdir, json.load(f)


def _source_model(store, metrics: Dict[str, Any], vdir: str) -> metadata_store_pb2.Artifact:
    model_type_id = _type_id(store, "Model")
    found = []
    if metrics.get("model_id") is not None:
        found = [a for a in store.get_artifacts_by_id([int(metrics["model_id"])])
                 if a.type_id == model_type_id]
    if not found and metrics.get("model_uri"):
        found = sorted((a for a in store.get_artifacts_by_uri(metrics["model_uri"])
                        if a.type_id == model_type_id), key=lambda a: a.id)
    if not found:
        raise HistoryError(f"{vdir}/{contracts.METRICS_FILE} names no Model artifact known to this "
                           f"workdir's MLMD store (model_id={metrics.get('model_id')})")
    return found[0]


def _pushed_artifact(store, version: int, vdir: str) -> Optional[metadata_store_pb2.Artifact]:
    try:
        pushed = store.get_artifacts_by_type("PushedModel")
    except Exception:  # noqa: BLE001 - type not registered yet
        return None
    for a in pushed:
        if _prop(a, "pushed") and _prop(a, "pushed_version") == version and \
                os.path.normpath(str(_prop(a, "pushed_destination", ""))) == os.path.normpath(vdir):
            return a
    return None


def _operation(store, config: PipelineConfig, action: str, reason: str, user: Optional[str]):
    """(execution, contexts) for a new ManualBless operation; nothing stored yet."""
    pipeline_ctx = _pipeline_context(store, config.pipeline_name)
    if pipeline_ctx is None:
        raise HistoryError(f"no runs of pipeline '{config.pipeline_name}' in {config.metadata_path}")
    ex_type = metadata_store_pb2.ExecutionType(name=OPERATION_EXECUTION_TYPE)
    ex_type_id = store.put_execution_type(ex_type, can_add_fields=True)
    ctx_type_id = store.put_context_type(
        metadata_store_pb2.ContextType(name=OPERATION_CONTEXT_TYPE), can_add_fields=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"{action}-{stamp}-{uuid.uuid4().hex[:8]}"
    op_ctx = metadata_store_pb2.Context(type_id=ctx_type_id, name=name)
    execution = metadata_store_pb2.Execution(
        type_id=ex_type_id, name=name, last_known_state=metadata_store_pb2.Execution.COMPLETE)
    props = {"action": action, "reason": reason or "", "user": user or _user(),
             "host": socket.gethostname(), "at": stamp}
    for k, v in props.items():
        execution.custom_properties[k].string_value = str(v)
    return execution, [pipeline_ctx, op_ctx], name


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return os.environ.get("USER", "unknown")


def _type_id(store, name: str) -> int:
    """Id of an artifact type, registering it (no properties, as TFX does) if new."""
    from ml_metadata import errors
    try:
        return store.get_artifact_type(name).id
    except errors.NotFoundError:
        return store.put_artifact_type(metadata_store_pb2.ArtifactType(name=name),
                                       can_add_fields=True, can_omit_fields=True)


def _event(kind, key: str, index: int = 0) -> metadata_store_pb2.Event:
    event = _Event(type=kind)
    event.path.steps.add().key = key
    event.path.steps.add().index = index
    return event


def bless_version(config: PipelineConfig, version: int, reason: str = "",
                  user: Optional[str] = None) -> Dict[str, Any]:
    """Makes pushed version `version` the baseline of the next run (see module doc)."""
    import tensorflow as tf
    vdir, metrics = _read_version_metrics(config, version)
    store = open_store(config, write=True)
    source = _source_model(store, metrics, vdir)
    serving_model = os.path.join(source.uri, contracts.SERVING_MODEL_DIR)
    if not tf.io.gfile.isdir(serving_model):
        raise HistoryError(f"version {version}'s model files are gone ({serving_model}): "
                           "the Evaluator could not load it as a baseline")
    execution, contexts, name = _operation(store, config, "bless", reason, user)
    execution.custom_properties["version"].int_value = int(version)
    execution.custom_properties["source_model_id"].int_value = source.id

    model = _Artifact(type_id=source.type_id, uri=source.uri, state=_Artifact.LIVE)
    for k, v in source.custom_properties.items():
        model.custom_properties[k].CopyFrom(v)
    model.custom_properties["source_model_id"].int_value = source.id
    model.custom_properties["blessed_from_version"].int_value = int(version)
    model.custom_properties["manual_operation"].string_value = name
    [model.id] = store.put_artifacts([model])

    blessing_uri = os.path.join(config.pipeline_root, OPERATION_EXECUTION_TYPE, "blessing", name)
    tf.io.gfile.makedirs(blessing_uri)
    with tf.io.gfile.GFile(os.path.join(blessing_uri, contracts.BLESSED_FILE), "w") as f:
        f.write("")
    blessing = _Artifact(type_id=_type_id(store, "ModelBlessing"), uri=blessing_uri, state=_Artifact.LIVE)
    blessing.custom_properties["blessed"].int_value = 1
    blessing.custom_properties["current_model"].string_value = model.uri
    blessing.custom_properties["current_model_id"].int_value = model.id
    blessing.custom_properties["blessed_from_version"].int_value = int(version)
    blessing.custom_properties["manual_operation"].string_value = name

    artifacts_and_events = [(source, _event(_Event.INPUT, "source_model")),
                            (model, _event(_Event.OUTPUT, "model")),
                            (blessing, _event(_Event.OUTPUT, "blessing"))]
    pushed = _pushed_artifact(store, int(version), vdir)
    if pushed is not None:
        artifacts_and_events.append((pushed, _event(_Event.INPUT, "pushed_model")))
    ex_id, _, _ = store.put_execution(execution, artifacts_and_events, contexts,
                                      reuse_context_if_already_exist=True)
    accuracy = (metrics.get("evaluation") or {}).get("accuracy")
    return {"operation": name, "execution_id": ex_id, "version": int(version),
            "model_id": model.id, "source_model_id": source.id, "model_uri": model.uri,
            "accuracy": accuracy}


def reset_baseline(config: PipelineConfig, reason: str = "",
                   user: Optional[str] = None) -> Dict[str, Any]:
    """Revokes every live blessing: the next run has no baseline (see module doc)."""
    store = open_store(config, write=True)
    execution, contexts, name = _operation(store, config, "reset", reason, user)
    pipeline_ctx = contexts[0]
    in_pipeline = [e.id for e in store.get_executions_by_context(pipeline_ctx.id)]
    blessing_type_id = _type_id(store, "ModelBlessing")
    output_ids = sorted({e.artifact_id for e in store.get_events_by_execution_ids(in_pipeline)
                         if e.type in (_Event.OUTPUT, _Event.DECLARED_OUTPUT, _Event.INTERNAL_OUTPUT)})
    revoked = [a for a in store.get_artifacts_by_id(output_ids)
               if a.type_id == blessing_type_id and a.state == _Artifact.LIVE
               and _prop(a, "blessed") == 1]
    revoked.sort(key=lambda a: a.id)
    for a in revoked:
        a.state = _Artifact.ABANDONED
        a.custom_properties["revoked_by"].string_value = name
        a.custom_properties["revoked_reason"].string_value = reason or ""
    execution.custom_properties["revoked_blessings"].int_value = len(revoked)
    ex_id, _, _ = store.put_execution(
        execution, [(a, _event(_Event.INPUT, "revoked_blessing", i)) for i, a in enumerate(revoked)],
        contexts, reuse_context_if_already_exist=True)
    return {"operation": name, "execution_id": ex_id, "revoked": [a.id for a in revoked]}
