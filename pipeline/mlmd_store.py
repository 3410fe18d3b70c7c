"""Reading a workdir's MLMD store: the store, a pipeline's runs, and what each
execution recorded. Everything that reads run facts goes through these
(pipeline/run_record.py builds the one RunRecord of a run from them)."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Dict, List, Optional, Tuple

from ml_metadata import errors as mlmd_errors
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline.config import PipelineConfig

RUN_CONTEXT_TYPE = "pipeline_run"
PIPELINE_CONTEXT_TYPE = "pipeline"
_FINAL_STATES = ("COMPLETE", "CACHED", "FAILED", "CANCELED", "EMPTY")


_SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(ValueError):
    """The workdir's MLMD store is not a readable SQLite database; the message says where."""


def store_problem(path: str) -> Optional[str]:
    """Why the file at `path` cannot be an MLMD SQLite store, or None (also when
    it is missing or empty: a run creates it). Reads 16 bytes."""
    if not os.path.exists(path):
        return None
    if not os.path.isfile(path):
        return f"{path} is not a file: move it aside or use another --workdir"
    if os.path.getsize(path) == 0:
        return None
    with open(path, "rb") as f:
        if f.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
            return (f"{path} is not an SQLite database (corrupt or overwritten?): move it aside "
                    "or use another --workdir")
    return None


def store_failure(path: str, error: Exception) -> StoreError:
    """A one-line StoreError for an error MLMD raised reading `path`; MLMD's
    messages quote whole SQL statements, so only their cause is kept."""
    text = str(error)
    quoted = re.search(r"executing query: (.*?)(?: query:|$)", text, re.S)
    cause = (quoted.group(1) if quoted else text.split(" query:")[0]).strip().splitlines()
    return StoreError(f"cannot read the MLMD store {path}: "
                      f"{cause[0] if cause else type(error).__name__} (corrupt?)")


def open_store(config: PipelineConfig, write: bool = False) -> metadata_store.MetadataStore:
    if not os.path.exists(config.metadata_path):
        raise FileNotFoundError(f"no MLMD database at {config.metadata_path}: has a run happened here?")
    problem = store_problem(config.metadata_path)
    if problem:
        raise StoreError(problem)
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = config.metadata_path
    mode = metadata_store_pb2.SqliteMetadataSourceConfig
    cfg.sqlite.connection_mode = mode.READWRITE if write else mode.READONLY
    try:
        return metadata_store.MetadataStore(cfg)
    except (RuntimeError, mlmd_errors.StatusError) as e:
        raise store_failure(config.metadata_path, e) from None


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


def json_property(text: Optional[str], kind: type, default):
    """A JSON property of type `kind`, or `default` when absent or malformed."""
    if not text:
        return default
    try:
        value = json.loads(text)
    except ValueError:
        return default
    return value if isinstance(value, kind) else default
