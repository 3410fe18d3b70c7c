"""Ending a rerun early when nothing it depends on changed since the last completed run.

A run's result depends on its images, its settings and the code (this project's
source and the libraries that train and convert). When all three are as they were
for the workdir's last completed run (blessed or not), a new run would train,
evaluate and export the same model again, and a blessed one would be pushed as a
"new" version identical to the served one. So `retrain run` first compares:

* images: a listing fingerprint, cheap on any number of images: every entry under
  the images folder (relative path, size, mtime and ctime in ns; ctime changes on
  any rewrite, even one that restores the mtime), or a manifest's bytes plus the
  same listing of every file it names. Images on gs:// or s3:// are not listed
  here: such runs always run in full.
* settings: every PipelineConfig field except where the run writes its workdir
  and how Beam runs (SETTINGS_NOT_AFFECTING_MODEL); a weights file's listing.
* code: the versions of the libraries that shape the model and a hash of this
  project's source files.

and also that nothing happened in the workdir since that run: no other run
(failed ones included), no `retrain bless` operation (new executions in MLMD), and
the same complete versions in a local serving dir. Any difference, or any doubt
(no record: an older workdir; an unreadable one; random weights), means a full run.

The record of the last completed run is RUN_FINGERPRINT_FILE, a small JSON beside
the MLMD database, replaced atomically after each completed run
(pipeline/local_runner.py). A run that ends early is recorded in MLMD as an
UNCHANGED_RUN_TYPE execution in the pipeline's context (not a ``pipeline_run``:
"latest run", reports and baselines never mistake it for a run); `retrain runs`
lists it with status "unchanged" and the reason. `retrain run --force` runs anyway.
Imports no TensorFlow: a rerun that ends early takes about a second.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
import uuid
from importlib import metadata as dist_metadata
from typing import Any, Dict, List, Optional, Tuple

from components import contracts
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

FORMAT = 1
# Where the run writes and how Beam executes it: no effect on the model.
# (label_names is derived from the images, which are fingerprinted.)
SETTINGS_NOT_AFFECTING_MODEL = ("workdir", "label_names", "beam_args")
# Distributions whose version can change the features, the head or the TFLite files.
LIBRARIES = ("tfx-image-retrain", "tensorflow", "tf-keras", "tfx", "tensorflow-transform",
             "tensorflow-model-analysis", "apache-beam", "numpy", "pillow", "ml-metadata")
CODE_PACKAGES = ("components", "pipeline", "kubeflow")
MAX_RECORD_BYTES = 64 * 1024  # the record is a few hundred bytes: never read more


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    images: str    # sha256 (hex) of the images' listing
    settings: str  # sha256 of the settings that shape the model
    code: str      # sha256 of library versions and project source
    entries: int   # entries listed (files and folders): for the reason line


@dataclasses.dataclass(frozen=True)
class Recorded:
    """RUN_FINGERPRINT_FILE: the inputs of the workdir's last completed run."""
    run_id: str
    fingerprint: Fingerprint
    last_execution_id: int               # the newest MLMD execution when it ended
    served_versions: Optional[List[int]]  # complete versions of a local serving dir
    format: int = FORMAT


@dataclasses.dataclass(frozen=True)
class Decision:
    unchanged: bool
    reason: str                      # why it ends early, or why it runs in full
    since_run: Optional[str] = None  # the completed run it matched


# --------------------------------------------------------------- fingerprints

def fingerprint(config: PipelineConfig) -> Tuple[Optional[Fingerprint], str]:
    """(the run's input fingerprint, "") or (None, why it cannot be known cheaply)."""
    if "://" in config.images:
        return None, f"images on {config.images.split('://')[0]}:// are not fingerprinted"
    if config.weights == "random":
        return None, "random weights differ on every run"
    images = hashlib.sha256()
    try:
        if config.images.lower().endswith(".csv"):
            entries = _manifest_listing(config.images, images)
        else:
            entries = _folder_listing(config.images, images)
    except _Unknown as e:
        return None, str(e)
    except OSError as e:
        return None, f"images unreadable ({e.strerror or e})"
    return Fingerprint(images.hexdigest(), settings_digest(config), code_digest(), entries), ""


class _Unknown(Exception):
    """The inputs can't be fingerprinted cheaply; the message says why."""


def _stat_line(rel: str, path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:  # a dangling symlink: still part of the listing
        return f"F {json.dumps(rel)} missing\n"
    return f"F {json.dumps(rel)} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}\n"


def _folder_listing(root: str, digest) -> int:
    if not os.path.isdir(root):
        raise _Unknown(f"images folder not found: {root}")
    entries = 0
    for folder, dirs, files in os.walk(root, followlinks=False):  # as walk_images: no symlinked folders
        dirs.sort()
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        digest.update(f"D {rel_folder}\n".encode("utf-8", "surrogateescape"))
        for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(folder, d))):
            rel = f"{rel_folder}/{name}"
            digest.update(_stat_line(rel, os.path.join(folder, name)).encode("utf-8", "surrogateescape"))
            entries += 1
    return entries


def _manifest_listing(manifest: str, digest) -> int:
    import csv
    base = os.path.dirname(manifest)
    entries = 0
    with open(manifest, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    with open(manifest, newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.reader(f):
            if len(row) != 2 or not row[0].strip() or [c.strip().lower() for c in row] == ["uri", "label"]:
                continue  # the header or a row ExampleGen skips; its bytes are hashed above
            uri = row[0].strip()
            if "://" in uri:
                raise _Unknown("the manifest lists gs:// or s3:// images, which are not fingerprinted")
            path = uri if os.path.isabs(uri) else os.path.join(base, uri)
            digest.update(_stat_line(uri, path).encode("utf-8", "surrogateescape"))
            entries += 1
    return entries


def settings_digest(config: PipelineConfig) -> str:
    values: Dict[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                              if f.name not in SETTINGS_NOT_AFFECTING_MODEL}
    if config.weights not in ("imagenet", "keras", "random"):  # a weights file
        values["weights_file"] = _stat_line(config.weights, config.weights)
    text = json.dumps(values, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1)  # the source does not change under a running process
def code_digest() -> str:
    digest = hashlib.sha256()
    for dist in LIBRARIES:
        try:
            version = dist_metadata.version(dist)
        except dist_metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{dist}=={version}\n".encode())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for package in CODE_PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(root, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".pyc"):
                    continue
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


# ------------------------------------------------------------ the record file

def record_path(config: PipelineConfig) -> str:
    return os.path.join(config.workdir, contracts.RUN_FINGERPRINT_FILE)


def _served_versions(config: PipelineConfig) -> Optional[List[int]]:
    return None if "://" in config.serving_dir else contracts.list_versions(config.serving_dir)


def _last_execution_id(store, ignore_type: Optional[int] = None) -> int:
    return max((e.id for e in store.get_executions() if e.type_id != ignore_type), default=0)


def _unchanged_type_id(store) -> Optional[int]:
    from ml_metadata import errors
    try:
        return store.get_execution_type(contracts.UNCHANGED_RUN_TYPE).id
    except errors.NotFoundError:
        return None


def record_completed(config: PipelineConfig, fp: Optional[Fingerprint], run_id: str) -> None:
    """After a completed run: replaces the record with its inputs (fp: taken before it
    ran). Never raises: without a record the next run simply runs in full."""
    try:
        _remove(record_path(config))  # a stale record must not outlive a failed write
        if fp is not None:  # inputs unknown: no record
            _write_record(config, fp, run_id)
    except Exception as e:  # noqa: BLE001 - the run itself completed
        log.warning("could not record run %s's inputs (%s: %s): the next run runs in full",
                    run_id, type(e).__name__, e)


def _write_record(config: PipelineConfig, fp: Fingerprint, run_id: str) -> None:
    from pipeline import mlmd_store
    store = mlmd_store.open_store(config)
    recorded = Recorded(run_id=run_id, fingerprint=fp,
                        last_execution_id=_last_execution_id(store, _unchanged_type_id(store)),
                        served_versions=_served_versions(config))
    path = record_path(config)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(recorded), f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def read_record(config: PipelineConfig) -> Optional[Recorded]:
    """The recorded inputs of the last completed run; None when absent or unreadable."""
    try:
        with open(record_path(config), "rb") as f:
            text = f.read(MAX_RECORD_BYTES + 1)
        if len(text) > MAX_RECORD_BYTES:
            return None
        raw = json.loads(text)
        fp = raw.pop("fingerprint")
        recorded = Recorded(fingerprint=Fingerprint(**fp), **raw)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if recorded.format != FORMAT or not isinstance(recorded.last_execution_id, int):
        return None
    return recorded


# ------------------------------------------------------------------ the check

def check(config: PipelineConfig, fp: Optional[Fingerprint], why_unknown: str = "") -> Decision:
    """Whether a run of `config` with inputs `fp` would repeat the last completed run."""
    if fp is None:
        return Decision(False, why_unknown or "inputs not fingerprinted")
    recorded = read_record(config)
    if recorded is None:
        return Decision(False, "no completed run with recorded inputs in this workdir")
    run, last = recorded.run_id, recorded.fingerprint
    changed = [what for what, now, then in (
        ("images", fp.images, last.images), ("settings", fp.settings, last.settings),
        ("code version", fp.code, last.code)) if now != then]
    if changed:
        return Decision(False, f"{' and '.join(changed)} changed since run {run}", run)
    if not os.path.exists(config.metadata_path):
        return Decision(False, f"no MLMD database at {config.metadata_path}", run)
    from pipeline import mlmd_store
    store = mlmd_store.open_store(config)
    if _last_execution_id(store, _unchanged_type_id(store)) != recorded.last_execution_id:
        return Decision(False, f"other runs or baseline operations since run {run}", run)
    if _served_versions(config) != recorded.served_versions:
        return Decision(False, f"the pushed versions in {config.serving_dir} changed since run {run}", run)
    return Decision(True, f"no new images since run {run}: same {fp.entries} files, settings "
                          "and code; nothing trained or pushed (--force runs anyway)", run)


def record_unchanged(config: PipelineConfig, decision: Decision) -> str:
    """Records a run that ended early in MLMD; returns its id (as `retrain runs` lists it)."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    from pipeline import mlmd_store
    store = mlmd_store.open_store(config, write=True)
    pipeline_ctx = store.get_context_by_type_and_name(mlmd_store.PIPELINE_CONTEXT_TYPE,
                                                      config.pipeline_name)
    type_id = store.put_execution_type(pb.ExecutionType(name=contracts.UNCHANGED_RUN_TYPE),
                                       can_add_fields=True)
    name = f"unchanged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    execution = pb.Execution(type_id=type_id, name=name, last_known_state=pb.Execution.COMPLETE)
    execution.custom_properties["reason"].string_value = decision.reason
    execution.custom_properties["since_run"].string_value = decision.since_run or ""
    store.put_execution(execution, [], [pipeline_ctx] if pipeline_ctx is not None else [])
    return name


def skip_if_unchanged(config: PipelineConfig) -> Optional[Dict[str, Any]]:
    """The run summary of a run that ends early, or None: run in full.

    Never fails a run: any error while checking or recording means a full run.
    """
    if config.validate():
        return None  # preflight names the bad setting
    start = time.time()
    try:
        decision = check(config, *fingerprint(config))
        if not decision.unchanged:
            log.info("full run: %s", decision.reason)
            return None
        run_id = record_unchanged(config, decision)
    except Exception as e:  # noqa: BLE001 - the shortcut must never cost a run
        log.warning("full run: could not compare with the last run (%s: %s)", type(e).__name__, e)
        return None
    summary = skipped_summary(config, decision, run_id)
    summary["total_seconds"] = round(time.time() - start, 1)
    return summary


def skipped_summary(config: PipelineConfig, decision: Decision, run_id: str) -> Dict[str, Any]:
    """The `--json` summary of a run that ended early: every key of a run's summary
    (pipeline/run_summary.py; nothing evaluated, nothing pushed) plus why."""
    from pipeline import run_summary
    from pipeline.run_record import RunRecord
    summary = run_summary.summarize(RunRecord(run_id=run_id, pipeline_name=config.pipeline_name))
    summary.update(unchanged=True, unchanged_since=decision.since_run,
                   not_pushed_reason=decision.reason, report=_write_report(config, decision, run_id))
    return summary


def _write_report(config: PipelineConfig, decision: Decision, run_id: str) -> str:
    """reports/<run id>.html: a page saying why, linking the repeated run's report
    (latest.html stays that run's: it is the newest run that ran)."""
    from pipeline.report import report_dir, report_name
    from pipeline.report.html import e
    since = report_name(decision.since_run or "")
    path = os.path.join(report_dir(config), report_name(run_id))
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{e(run_id)}: unchanged"
            f"</title></head><body><h1>Run {e(run_id)} ended early</h1><p>{e(decision.reason)}.</p>"
            f"<p>The model and the report are those of run <a href=\"{e(since)}\">"
            f"{e(decision.since_run)}</a>.</p></body></html>\n")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(path + ".tmp", path)
    return path


def history_rows(store, pipeline_ctx) -> List[Dict[str, Any]]:
    """`retrain runs` rows (pipeline/history.py) of the runs that ended early."""
    type_id = _unchanged_type_id(store)
    if type_id is None:
        return []
    from pipeline.history import _iso
    from pipeline.mlmd_store import custom_property
    in_pipeline = {e.id for e in store.get_executions_by_context(pipeline_ctx.id)}
    return [{"kind": "run", "id": ex.name, "time": _iso(ex.create_time_since_epoch),
             "time_ms": ex.create_time_since_epoch, "status": "unchanged", "examples": {},
             "accuracy": None, "baseline_accuracy": None, "blessed": False,
             "pushed_version": None, "model_id": None, "blessing_id": None, "revoked": False,
             "baseline": False, "reason": custom_property(ex, "reason", ""),
             "since_run": custom_property(ex, "since_run", "")}
            for ex in store.get_executions_by_type(contracts.UNCHANGED_RUN_TYPE)
            if ex.id in in_pipeline]
