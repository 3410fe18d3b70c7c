"""Reading a workdir's MLMD store: the store, a pipeline's runs, and what each
execution recorded. Everything that reads run facts goes through these
(pipeline/run_record.py builds the one RunRecord of a run from them)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Tuple

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline.config import PipelineConfig

RUN_CONTEXT_TYPE = "pipeline_run"
PIPELINE_CONTEXT_TYPE = "pipeline"
_FINAL_STATES = ("COMPLETE", "CACHED", "FAILED", "CANCELED", "EMPTY")


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
    pipeline_ctx = store.get_context_by_type_and_name(PIPELINE_CONTEXT_TYPE, pipeline_name)
    if pipeline_ctx is None:
        return []
    in_pipeline = {e.id for e in store.get_executions_by_context(pipeline_ctx.id)}
    runs = [c for c in store.get_contexts_by_type(RUN_CONTEXT_TYPE)
            if any(e.id in in_pipeline for e in store.get_executions_by_context(c.id))]
    return sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)


def run_executions(store, run_ctx) -> List[metadata_store_pb2.Execution]:
    """A run's executions in start order."""
    return sorted(store.get_executions_by_context(run_ctx.id),
                  key=lambda e: (e.create_time_since_epoch, e.id))


def node_id(store, execution, pipeline_name: str) -> str:
    """The pipeline node an execution ran (node contexts are named '<pipeline>.<node id>')."""
    prefix = pipeline_name + "."
    for ctx in store.get_contexts_by_execution(execution.id):
        if ctx.name.startswith(prefix):
            return ctx.name[len(prefix):]
    return execution.type


def state_and_seconds(node: str, execution) -> Tuple[str, float]:
    """(state name, wall seconds so far) of one execution of `node`."""
    state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
    if state == "FAILED" and node.endswith("_resolver"):
        # LatestArtifactStrategy reports "nothing yet" (a first run) as a
        # failed resolution; its consumers take the input as optional.
        state = "EMPTY"
    end = (execution.last_update_time_since_epoch if state in _FINAL_STATES
           else int(time.time() * 1000))
    return state, round((end - execution.create_time_since_epoch) / 1000.0, 2)


def component_states(store, run_ctx, pipeline_name: str) -> List[Tuple[str, str, float]]:
    """[(node id, state name, seconds)] of a run's executions, in start order."""
    rows = []
    for ex in run_executions(store, run_ctx):
        node = node_id(store, ex, pipeline_name)
        rows.append((node, *state_and_seconds(node, ex)))
    return rows


def output_artifacts(store, execution_id: int) -> Dict[str, List[metadata_store_pb2.Artifact]]:
    """An execution's output artifacts by output key."""
    events = [e for e in store.get_events_by_execution_ids([execution_id])
              if e.type == metadata_store_pb2.Event.OUTPUT]
    by_id = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    out: Dict[str, List[metadata_store_pb2.Artifact]] = {}
    for e in events:
        key = e.path.steps[0].key if e.path.steps else "?"
        out.setdefault(key, []).append(by_id[e.artifact_id])
    return out


def _value(values, name: str, default: Any) -> Any:
    if name not in values:
        return default
    v = values[name]
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else default


def custom_property(item, name: str, default: Any = None) -> Any:
    """A custom property of an MLMD artifact, execution or context (TFX keeps
    exec properties and most artifact facts there), or `default`."""
    return _value(item.custom_properties, name, default)


def property_value(item, name: str, default: Any = None) -> Any:
    """A property its type declares (e.g. a standard artifact's split_names), or `default`."""
    return _value(item.properties, name, default)
