"""A small stand-in for the metadata store KFP's launcher talks to.

The launcher needs MLMD for three things, all emulated here over two JSON-lines
files under ``<pipeline_root>/.local-metadata/``:

* resolver tasks: ``ResolverSpec`` artifact queries such as
  ``schema_title="tfx.ModelBlessing" AND state=LIVE AND metadata.blessed.number_value=1``
  are evaluated against the artifacts earlier runs produced (same pipeline
  name = same MLMD context), and the latest match wins, as on Vertex;
* importer tasks: ``reimport: false`` reuses an artifact already registered
  with the same URI and type;
* caching: an execution's outputs are found again by its cache key;
* artifact ids: every recorded artifact gets the next integer id, as in MLMD.
  The open-source driver names input artifacts by that id and reads them back
  from their stored custom properties (``as_input``).

Only successful executions are recorded, so every artifact here is LIVE.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import yaml

_FILTER_CLAUSE = re.compile(r'^([A-Za-z_][\w.]*)\s*(!=|=)\s*("(?:[^"\\]|\\.)*"|\S+)$')
_INPUT_METADATA = re.compile(
    r"\{\{\$\.inputs\.artifacts\['([^']+)'\]\.metadata\['([^']+)'\]\}\}")


class NotEmulated(NotImplementedError):
    """The spec uses a launcher feature this emulation does not implement (named)."""


def schema_title(artifact_type: Dict[str, Any]) -> str:
    """Title of an ArtifactTypeSchema dict ({schemaTitle} or {instanceSchema: yaml})."""
    if artifact_type.get("schemaTitle"):
        return artifact_type["schemaTitle"]
    return (yaml.safe_load(artifact_type.get("instanceSchema") or "") or {}).get("title", "")


class LocalMetadata:
    """Artifacts and executions of earlier runs under one pipeline root."""

    def __init__(self, pipeline_root: str):
        self._dir = os.path.join(pipeline_root, ".local-metadata")
        self._lock = threading.Lock()
        os.makedirs(self._dir, exist_ok=True)

    # ---------------------------------------------------------------- storage

    def _read(self, name: str) -> List[Dict[str, Any]]:
        path = os.path.join(self._dir, name)
        with self._lock:  # tasks run in threads: never read a half-written line
            if not os.path.exists(path):
                return []
            with open(path) as f:
                return [json.loads(line) for line in f if line.strip()]

    def _append(self, name: str, row: Dict[str, Any]) -> None:
        with self._lock, open(os.path.join(self._dir, name), "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def record_artifact(self, pipeline: str, artifact: Dict[str, Any],
                        custom_properties: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Stores a RuntimeArtifact (JSON dict: name, type, uri, metadata); returns
        it with its new ``id``. With ``custom_properties`` (MLMD-form values, as the
        open-source launcher stores them) ``metadata`` becomes what reading them back
        gives, and ``name`` the id, as its consumers will see it."""
        with self._lock:
            path = os.path.join(self._dir, "artifacts.jsonl")
            count = 0
            if os.path.exists(path):
                with open(path) as f:
                    count = sum(1 for line in f if line.strip())
            stored = dict(artifact, id=count + 1)
            if custom_properties is not None:
                from kubeflow.kfp_backend import from_mlmd
                stored.update(name=str(stored["id"]), custom_properties=custom_properties,
                              metadata=from_mlmd(custom_properties))
            with open(path, "a") as f:
                f.write(json.dumps({"pipeline": pipeline, "state": "LIVE", "created": time.time_ns(),
                                    "artifact": stored}, sort_keys=True) + "\n")
        return stored

    def as_input(self, artifact_id: int) -> Dict[str, Any]:
        """An artifact as the open-source driver reads it back (kfp_backend.input_artifact)."""
        from kubeflow.kfp_backend import input_artifact
        for row in self._read("artifacts.jsonl"):
            if row["artifact"].get("id") == artifact_id:
                a = row["artifact"]
                return input_artifact(artifact_id, a["uri"], a.get("custom_properties") or {})
        raise KeyError(f"no artifact with id {artifact_id}")

    def record_execution(self, pipeline: str, cache_key: str, run_id: str, task: str,
                         outputs: Dict[str, List[Dict[str, Any]]],
                         parameters: Dict[str, Any]) -> None:
        self._append("executions.jsonl", {
            "pipeline": pipeline, "cache_key": cache_key, "run_id": run_id, "task": task,
            "outputs": outputs, "parameters": parameters})

    def cached_execution(self, pipeline: str, cache_key: str) -> Optional[Dict[str, Any]]:
        hits = [e for e in self._read("executions.jsonl")
                if e["pipeline"] == pipeline and e["cache_key"] == cache_key]
        return hits[-1] if hits else None

    def artifacts(self, pipeline: str) -> List[Tuple[Dict[str, Any], str]]:
        """(artifact, state) of a pipeline, oldest first."""
        rows = [r for r in self._read("artifacts.jsonl") if r["pipeline"] == pipeline]
        rows.sort(key=lambda r: r["created"])
        return [(r["artifact"], r["state"]) for r in rows]

    # --------------------------------------------------------------- resolver

    def resolve(self, pipeline: str, query: str,
                inputs: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
        """Latest artifact matching a ResolverSpec filter, as a 0- or 1-element list.

        `inputs` fills ``{{$.inputs.artifacts['k'].metadata['m']}}`` placeholders; if
        such an input resolved to nothing, the query matches nothing.
        """
        def fill(m: re.Match) -> str:
            found = inputs.get(m.group(1)) or []
            if not found or m.group(2) not in (found[0].get("metadata") or {}):
                raise _Unresolvable()
            return str(found[0]["metadata"][m.group(2)])

        try:
            query = _INPUT_METADATA.sub(fill, query)
        except _Unresolvable:
            return []
        if "{{$" in query:
            raise NotEmulated(f"placeholder in resolver filter not emulated: {query}")
        clauses = [_parse_clause(c) for c in re.split(r"\s+AND\s+", query.strip())]
        matches = [a for a, state in self.artifacts(pipeline)
                   if all(_holds(a, state, c) for c in clauses)]
        return matches[-1:]

    # --------------------------------------------------------------- importer

    def find_imported(self, pipeline: str, uri: str, title: str) -> Optional[Dict[str, Any]]:
        found = [a for a, _ in self.artifacts(pipeline)
                 if a.get("uri") == uri and schema_title(a.get("type") or {}) == title]
        return found[-1] if found else None


class _Unresolvable(Exception):
    pass


def _parse_clause(text: str) -> Tuple[str, str, Any]:
    m = _FILTER_CLAUSE.match(text.strip())
    if not m:
        raise NotEmulated(f"resolver filter clause not emulated: {text!r} "
                          "(only `field=value` joined by AND)")
    field, op, raw = m.groups()
    known = field in ("schema_title", "state", "name", "uri") or re.fullmatch(
        r"metadata\.[^.]+\.(number_value|string_value|bool_value)", field)
    if not known:
        raise NotEmulated(f"resolver filter field not emulated: {field}")
    if raw.startswith('"'):
        value: Any = json.loads(raw)
    else:
        try:
            value = float(raw)
        except ValueError:
            value = raw  # an enum such as LIVE
    return field, op, value


def _holds(artifact: Dict[str, Any], state: str, clause: Tuple[str, str, Any]) -> bool:
    field, op, value = clause
    if field == "schema_title":
        actual: Any = schema_title(artifact.get("type") or {})
    elif field == "state":
        actual = state
    elif field == "name":
        actual = artifact.get("name", "")
    elif field == "uri":
        actual = artifact.get("uri", "")
    else:  # metadata.<key>.<kind>_value, checked by _parse_clause
        _, key, kind = field.split(".")
        actual = (artifact.get("metadata") or {}).get(key)
        if kind == "number_value":
            actual = float(actual) if isinstance(actual, (int, float)) else None
    return (actual == value) == (op == "=")
