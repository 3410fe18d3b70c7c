"""What happened in a run, read back from MLMD (the record every runner keeps)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components import evaluation
from components.image_example_gen import COUNTS_PREFIX, REPORT_FILE, read_report
from pipeline.config import PipelineConfig

_RUN_CONTEXT = "pipeline_run"
MAX_LISTED_SKIPS = 100  # the full list is in the ingestion report


def open_store(config: PipelineConfig, write: bool = False) -> metadata_store.MetadataStore:
    if not os.path.exists(config.metadata_path):
        raise FileNotFoundError(f"no MLMD database at {config.metadata_path}: has a run happened here?")
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = config.metadata_path
    mode = metadata_store_pb2.SqliteMetadataSourceConfig
    cfg.sqlite.connection_mode = mode.READWRITE if write else mode.READONLY
    return metadata_store.MetadataStore(cfg)


def run_contexts(store, pipeline_name: str) -> List[metadata_store_pb2.Context]:
    """This pipeline's runs, newest first."""
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_ctx is None:
        return []
    in_pipeline = {e.id for e in store.get_executions_by_context(pipeline_ctx.id)}
    runs = [c for c in store.get_contexts_by_type(_RUN_CONTEXT)
            if any(e.id in in_pipeline for e in store.get_executions_by_context(c.id))]
    return sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)


def _node_id(store, execution, pipeline_name: str) -> str:
    """Node contexts are named '<pipeline>.<node id>'."""
    prefix = pipeline_name + "."
    for ctx in store.get_contexts_by_execution(execution.id):
        if ctx.name.startswith(prefix):
            return ctx.name[len(prefix):]
    return execution.type


def component_states(store, run_ctx, pipeline_name: str) -> List[tuple]:
    """[(node id, state name, seconds)] of a run's executions, in start order."""
    name = metadata_store_pb2.Execution.State.Name
    rows = []
    for ex in sorted(store.get_executions_by_context(run_ctx.id),
                     key=lambda e: (e.create_time_since_epoch, e.id)):
        state = name(ex.last_known_state)
        node = _node_id(store, ex, pipeline_name)
        if state == "FAILED" and node.endswith("_resolver"):
            # LatestArtifactStrategy reports "nothing yet" (a first run) as a
            # failed resolution; its consumers take the input as optional.
            state = "EMPTY"
        end = ex.last_update_time_since_epoch if state in ("COMPLETE", "CACHED", "FAILED", "CANCELED",
                                                             "EMPTY") else int(time.time() * 1000)
        rows.append((node, state,
                     round((end - ex.create_time_since_epoch) / 1000.0, 2)))
    return rows


def _outputs(store, execution_id: int) -> Dict[str, List[metadata_store_pb2.Artifact]]:
    events = [e for e in store.get_events_by_execution_ids([execution_id])
              if e.type == metadata_store_pb2.Event.OUTPUT]
    by_id = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    out: Dict[str, List[metadata_store_pb2.Artifact]] = {}
    for e in events:
        key = e.path.steps[0].key if e.path.steps else "?"
        out.setdefault(key, []).append(by_id[e.artifact_id])
    return out


def _prop(artifact, name: str, default=None):
    if name not in artifact.custom_properties:
        return default
    v = artifact.custom_properties[name]
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else default


def summarize_run(store, run_ctx, config: PipelineConfig) -> Dict[str, Any]:
    """The run summary: the JSON `retrain run --json` prints last."""
    summary: Dict[str, Any] = {
        "run_id": run_ctx.name, "blessed": False, "pushed_version": None, "pushed_dir": None,
        "accuracy": None, "baseline_accuracy": None, "examples": {}, "skipped_files": None,
        "ingestion_report": None, "skipped": [], "evaluation_failures": [], "per_class": {},
        "pushed_variants": [], "not_pushed": {}, "not_pushed_reason": None,
        "seconds": {}, "states": {}, "label_names": list(config.label_names),
    }
    for node, state, seconds in component_states(store, run_ctx, config.pipeline_name):
        summary["seconds"][node] = seconds
        summary["states"][node] = state
    for ex in store.get_executions_by_context(run_ctx.id):
        outputs = _outputs(store, ex.id)
        for examples in outputs.get("examples", []):
            if _prop(examples, "skipped_files") is not None:
                summary["skipped_files"] = int(_prop(examples, "skipped_files"))
                summary["ingestion_report"] = os.path.join(examples.uri, REPORT_FILE)
                summary["skipped"] = [{"path": r["path"], "reason": r["reason"]}
                                      for r in read_report(examples.uri)
                                      if r["status"] == "skipped"][:MAX_LISTED_SKIPS]
                for split in ("train", "eval"):
                    n = _prop(examples, f"{COUNTS_PREFIX}_{split}")
                    if n is not None:
                        summary["examples"][split] = int(n)
        for blessing in outputs.get("blessing", []):
            summary["blessed"] = bool(_prop(blessing, "blessed", 0))
        for ev in outputs.get("evaluation", []):
            if config.label_names and tf.io.gfile.isdir(ev.uri):  # local, gs:// or s3://
                result = evaluation.summarize(ev.uri, config.label_names)
                summary["accuracy"] = result["accuracy"]
                summary["baseline_accuracy"] = result["baseline_accuracy"]
                summary["evaluation_failures"] = result["failures"]
                summary["per_class"] = result["per_class"]
        for pushed in outputs.get("pushed_model", []):
            summary["pushed_variants"] = json.loads(_prop(pushed, "pushed_variants", "[]"))
            summary["not_pushed"] = json.loads(_prop(pushed, "not_pushed_variants", "{}"))
            summary["not_pushed_reason"] = _prop(pushed, "not_pushed_reason")
            if _prop(pushed, "pushed", 0):
                summary["pushed_version"] = int(_prop(pushed, "pushed_version"))
                summary["pushed_dir"] = _prop(pushed, "pushed_destination")
    return summary


def latest_run(config: PipelineConfig) -> Optional[Dict[str, Any]]:
    store = open_store(config)
    runs = run_contexts(store, config.pipeline_name)
    return summarize_run(store, runs[0], config) if runs else None
