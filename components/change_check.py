"""ChangeCheck: on open-source Kubeflow, does this run repeat the last completed one?

The Kubeflow form of pipeline/unchanged.py (a local `retrain run` checks before it
starts; a scheduled Kubeflow run has no such moment, so the check is a step). It
runs right after ImageExampleGen and compares, with the newest record under
``<registry>/run_fingerprint/``:

* images: a digest of the training data itself, read from the Examples (split,
  label, relative path and content sha256 of every example ImageExampleGen
  kept), so a touched file or a copied folder counts as unchanged and any new,
  removed, relabelled or edited image as changed;
* settings: unchanged.settings_digest of the compiled config (an execution
  parameter: the spec is compiled from one config);
* code: unchanged.code_digest() as the image computes it (libraries + source);
* the baseline: the newest ``blessed_model`` record (a run that blessed, or
  `retrain bless --pipeline-root`, in between means a full run);
* the complete versions of the serving dir.

The pipeline parameter ``force`` (contracts.FORCE_PARAMETER, compiled default
0; `retrain submit --force` passes 1) makes it say ``changed`` whatever it
finds, the reason saying so: a one-off full run of the scheduled spec, no
recompile. The fingerprint is still taken, so the run is recorded.

Its output (``result``, type ``components.ChangeCheck``) carries ``changed``
(1/0), ``reason`` and ``since_run`` as custom properties and the fingerprint in
CHECK_FILE. kubeflow/change_gate.py puts every later step under
``tfx.dsl.Cond(changed == 1)``. :class:`RecordRunFingerprint`, the gate's last
step, writes the record after a completed run (the baseline and versions taken
then, after the run's own blessing and push). Any doubt (no record, an
unreadable one, an error while checking) means ``changed = 1``: the check never
costs a run. The registry record format is this module's alone.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any, Dict, List, Optional

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import contracts
from components.contracts import join as _join

RUN_FINGERPRINT = "run_fingerprint"  # the registry folder of the records
CHECK_FILE = "change_check.json"     # in the ChangeCheck output: fingerprint and verdict
CHANGED, REASON, SINCE_RUN = "changed", "reason", "since_run"
FORMAT = 1
MAX_RECORD_BYTES = 64 * 1024
BLESSED_MODEL = "blessed_model"  # = previous_artifacts.BLESSED_MODEL (a unit test checks)
EXAMPLE_GEN_TASK = "ImageExampleGen"  # the task name in an output URI: <run>/<task>/...
_FEATURES = (contracts.LABEL_NAME_KEY, contracts.RELATIVE_PATH_KEY, contracts.CONTENT_SHA256_KEY)


class ChangeCheck(Artifact):
    TYPE_NAME = contracts.CHANGE_CHECK_TYPE  # importable: see components/__init__.py


@dataclasses.dataclass(frozen=True)
class RunFingerprint:
    examples: str          # sha256 of the examples' (split, label, path, content) lines
    example_count: int
    settings: str          # unchanged.settings_digest
    code: str              # unchanged.code_digest
    baseline: str          # name of the newest blessed_model record ("" if none)
    served: List[int]      # complete versions of the serving dir
    run: str               # the run that computed it (from the examples' URI)
    format: int = FORMAT


# ------------------------------------------------------------------ fingerprints

def examples_digest(examples) -> tuple:
    """(sha256 hex, count) of what the Examples hold, independent of file order and sharding."""
    import hashlib
    lines = []
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in _FEATURES}
    for split in artifact_utils.decode_split_names(examples.split_names):
        files = sorted(tf.io.gfile.glob(_join(artifact_utils.get_split_uri([examples], split), "*")))
        if not files:
            continue
        data = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256)
        for batch in data:
            parsed = tf.io.parse_example(batch, spec)
            columns = [parsed[k].numpy() for k in _FEATURES]
            lines += [json.dumps([split] + [v.decode("utf-8", "replace") for v in row])
                      for row in zip(*columns)]
    digest = hashlib.sha256()
    digest.update(examples.get_string_custom_property("label_names").encode())
    for line in sorted(lines):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest(), len(lines)


def record_names(registry: str, kind: str) -> List[str]:
    """Names of `kind`'s records, oldest first: the listing rule of
    previous_artifacts.records (not imported: it loads TFMA, seconds per run)."""
    folder = _join(registry, kind)
    if not tf.io.gfile.isdir(folder):
        return []
    names = (n.rstrip("/") for n in tf.io.gfile.listdir(folder))
    return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))


def newest_record_name(registry: str, kind: str) -> str:
    """Name of the newest record of `kind` (a reset included), "" if none."""
    found = record_names(registry, kind)
    return found[-1] if found else ""


def run_of(uri: str) -> str:
    """The run folder of an output URI <root>/<pipeline>/<run>/<task>[/<uuid>]/<key>."""
    parts = uri.rstrip("/").split("/")
    return parts[parts.index(EXAMPLE_GEN_TASK) - 1] if EXAMPLE_GEN_TASK in parts[1:] else uri


def forced(verdict: tuple) -> tuple:
    """compare()'s verdict under ``force`` = 1: a full run, the reason keeping what was found."""
    changed, reason, since = verdict
    return True, f"forced by the run parameter {contracts.FORCE_PARAMETER}=1 ({reason})", since


def compare(now: RunFingerprint, last: Optional[RunFingerprint], registry: str) -> tuple:
    """(changed, reason, since_run)."""
    if last is None:
        return True, f"no completed run recorded in {registry}", ""
    changed = [what for what, a, b in (
        ("images", now.examples, last.examples), ("settings", now.settings, last.settings),
        ("code version", now.code, last.code),
        ("baseline (a blessing or reset)", now.baseline, last.baseline),
        ("pushed versions", now.served, last.served)) if a != b]
    if changed:
        return True, f"{' and '.join(changed)} changed since run {last.run}", last.run
    return False, (f"no new images since run {last.run}: same {now.example_count} images, settings "
                   "and code; nothing trained or pushed"), last.run


# ---------------------------------------------------------------- the registry

def write_record(registry: str, fingerprint: RunFingerprint) -> str:
    """Adds a record under <registry>/run_fingerprint/ (hidden name, then renamed, as
    components/previous_artifacts.record does for its kinds); returns its path."""
    folder = _join(registry, RUN_FINGERPRINT)
    tf.io.gfile.makedirs(folder)
    now = time.time()
    name = (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z-"
            f"{uuid.uuid4().hex[:12]}.json")
    tmp = _join(folder, f".tmp-{name}")
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(dataclasses.asdict(fingerprint), sort_keys=True))
    tf.io.gfile.rename(tmp, _join(folder, name), overwrite=False)
    return _join(folder, name)


def parse(text: str) -> RunFingerprint:
    """A record's text -> RunFingerprint (ValueError/TypeError if it is not one)."""
    raw = json.loads(text)
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError("not a run fingerprint record of format 1")
    fp = RunFingerprint(**raw)
    if not (isinstance(fp.served, list) and all(isinstance(v, int) for v in fp.served)):
        raise ValueError("served is not a list of versions")
    return fp


def latest_record(registry: str) -> Optional[RunFingerprint]:
    """The newest record, or None (none, or the newest unreadable: then a full run)."""
    name = newest_record_name(registry, RUN_FINGERPRINT)
    if not name:
        return None
    path = _join(registry, RUN_FINGERPRINT, name)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            text = f.read(MAX_RECORD_BYTES + 1)
        if len(text) > MAX_RECORD_BYTES:
            raise ValueError(f"over {MAX_RECORD_BYTES} bytes")
        return parse(text.decode("utf-8"))
    except (tf.errors.OpError, ValueError, TypeError, UnicodeDecodeError) as e:
        logging.warning("ChangeCheck: unreadable record %s (%s): a full run", path, e)
        return None


# ------------------------------------------------------------------ executors

def _served(serving_dir: str) -> List[int]:
    return contracts.list_versions(serving_dir) if serving_dir else []


class Executor(base_executor.BaseExecutor):
    """Compares this run's fingerprint with the newest record; never fails the run."""

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        from pipeline import unchanged
        out = artifact_utils.get_single_instance(output_dict["result"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        registry = exec_properties["registry"]
        fingerprint: Dict[str, Any] = {}
        try:
            digest, count = examples_digest(examples)
            now = RunFingerprint(
                examples=digest, example_count=count, settings=exec_properties["settings"],
                code=unchanged.code_digest(),
                baseline=newest_record_name(registry, BLESSED_MODEL),
                served=_served(exec_properties["serving_dir"]), run=run_of(examples.uri))
            fingerprint = dataclasses.asdict(now)
            changed, reason, since = compare(now, latest_record(registry), registry)
        except Exception as e:  # noqa: BLE001 - the check must never cost a run
            changed, reason, since = True, f"could not compare with the last run ({type(e).__name__}: {e})", ""
        if exec_properties.get(contracts.FORCE_PARAMETER):  # optional: absent means 0
            changed, reason, since = forced((changed, reason, since))
        logging.info("ChangeCheck: %s: %s", "full run" if changed else "ends early", reason)
        out.set_int_custom_property(CHANGED, int(changed))
        out.set_string_custom_property(REASON, reason)
        out.set_string_custom_property(SINCE_RUN, since)
        tf.io.gfile.makedirs(out.uri)
        with tf.io.gfile.GFile(_join(out.uri, CHECK_FILE), "w") as f:
            json.dump({CHANGED: changed, REASON: reason, SINCE_RUN: since,
                       "fingerprint": fingerprint}, f, indent=2, sort_keys=True)


class RecordExecutor(base_executor.BaseExecutor):
    """After a completed run: records its fingerprint, baseline and versions as they are now."""

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        result = artifact_utils.get_single_instance(input_dict["change_check"])
        with tf.io.gfile.GFile(_join(result.uri, CHECK_FILE)) as f:
            fingerprint = json.load(f)["fingerprint"]
        if not fingerprint:
            logging.info("ChangeCheck could not fingerprint this run: nothing recorded")
            return
        registry = exec_properties["registry"]
        fp = dataclasses.replace(parse(json.dumps(fingerprint)),
                                 baseline=newest_record_name(registry, BLESSED_MODEL),
                                 served=_served(exec_properties["serving_dir"]))
        logging.info("Registry: recorded the run's inputs %s", write_record(registry, fp))


# ----------------------------------------------------------------- components

_PARAMETERS = {"registry": ExecutionParameter(type=str), "serving_dir": ExecutionParameter(type=str)}


class ChangeCheckSpec(ComponentSpec):
    PARAMETERS = {**_PARAMETERS, "settings": ExecutionParameter(type=str),
                  contracts.FORCE_PARAMETER: ExecutionParameter(type=int, optional=True)}
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {"result": ChannelParameter(type=ChangeCheck)}


class ChangeCheckStep(base_component.BaseComponent):
    """Output ``result``: ``changed`` 1/0 and the ``reason`` (see the module)."""

    SPEC_CLASS = ChangeCheckSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples: types.BaseChannel, registry: str, serving_dir: str, settings: str,
                 force=None):
        """`force`: an int or a RuntimeParameter (kubeflow/change_gate.py); None: never."""
        super().__init__(spec=ChangeCheckSpec(
            examples=examples, registry=registry, serving_dir=serving_dir, settings=settings,
            result=types.Channel(type=ChangeCheck), **{contracts.FORCE_PARAMETER: force}))


class RecordRunFingerprintSpec(ComponentSpec):
    PARAMETERS = _PARAMETERS
    INPUTS = {"change_check": ChannelParameter(type=ChangeCheck)}
    OUTPUTS: Dict[str, ChannelParameter] = {}


class RecordRunFingerprint(base_component.BaseComponent):
    """Records ChangeCheck's fingerprint for the next run (the gate's last step)."""

    SPEC_CLASS = RecordRunFingerprintSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(RecordExecutor)

    def __init__(self, change_check: types.BaseChannel, registry: str, serving_dir: str):
        super().__init__(spec=RecordRunFingerprintSpec(
            change_check=change_check, registry=registry, serving_dir=serving_dir))
