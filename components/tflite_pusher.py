"""TFLite Pusher: publishes a blessed model as ``<serving_dir>/<version>/``.

A version folder holds the TFLite variants that met their parity bound
(``model.tflite``, ``model_fp16.tflite``, ``model_dynamic.tflite``,
``model_int8.tflite``; which ones are converted is configuration, see
components/tflite/variants.py), ``labels.txt``, ``parity.json`` (every variant's
numbers) and ``metrics.json`` (the evaluation it was blessed on, the gate and the
TFLite parity: what was pushed, and why any variant was not). A blessed model
none of whose variants meets its bound is not pushed. Versions are integers
counting up from 1.
A version is complete when it holds ``_SUCCESS``, written last; readers
(contracts.list_versions) ignore numbered folders without it. On a local disk the
folder is also assembled under ``<serving_dir>/.incoming-<owner>-<id>/`` and
renamed into place (atomic), so no incomplete version is ever visible there; the
owner (host, pid, process start time) lets later pushes and runs remove staging
folders whose process died (remove_stale_staging). Object
stores (gs://, s3://: no atomic folder rename) get the folder written in place
and the marker last; a failed push removes what it wrote. Two pushers racing
on one object-store serving dir could pick the same number: scheduled runs use
max_concurrency=1 (kubeflow/cli.py).

metrics.json is also the version's manifest: the run id, the model artifact,
the evaluation, the variants and the candidate's identity (training data,
settings, code: candidate_identity), written before the rename. A blessed
candidate whose identity equals the latest version's is not pushed: "candidate
identical to the served model (version N)". A process killed
after the rename but before MLMD records the push leaves a complete version
that its run's record lacks: pipeline/run_record.py reads the manifest back
(serving_manifests) so `retrain runs` and reports still show the push.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils

from components import evaluation, kill_hook, model_info
from components.contracts import (COMPLETE_MARKER, LABELS_FILE, METRICS_FILE, PARITY_FILE,
                                  PUSHER_NODE, STAGING_PREFIX, join, list_versions,
                                  numbered_versions)
from components.process_owner import Owner
from components.settings import GateSettings, PushSettings
from components.tflite.component import TFLiteModels
from components.tflite.parity import ParityReport
from components.tflite.variants import FILE_NAMES

# metrics.json's record of what made the pushed model (candidate_identity).
IDENTITY_KEY = "candidate_identity"


class TFLitePusherSpec(ComponentSpec):
    PARAMETERS = {
        # PushSettings.to_exec_properties(): label_names and gate (the thresholds,
        # recorded with the version) are JSON.
        "serving_dir": ExecutionParameter(type=str),
        "label_names": ExecutionParameter(type=str),
        "gate": ExecutionParameter(type=str),
        # Added later: a spec compiled before has none (PushSettings.ADDED_LATER).
        "candidate_config": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "tflite_models": ChannelParameter(type=TFLiteModels),
    }
    OUTPUTS = {"pushed_model": ChannelParameter(type=standard_artifacts.PushedModel)}


def _copy_files(folder: str, files: Dict[str, str]) -> None:
    for name, src in files.items():
        tf.io.gfile.copy(src, os.path.join(folder, name), overwrite=True)


def _finish_version(folder: str, metrics: Dict[str, Any]) -> None:
    """metrics.json, then the completion marker: the last two writes of a version."""
    with tf.io.gfile.GFile(os.path.join(folder, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    with tf.io.gfile.GFile(os.path.join(folder, COMPLETE_MARKER), "w") as f:
        f.write("")


# Staging folders of code before owners were recorded: removed once this old.
LEGACY_STAGING_MAX_AGE_S = 3600
_STAGING = re.compile(r"^(?P<host>.+)-(?P<owner>[0-9]+-[0-9]+)-[0-9a-f]{32}$")


def _host_tag(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", host)[:64] or "host"


def _staging_name() -> str:
    owner = Owner.current()
    return f"{STAGING_PREFIX}{_host_tag(owner.host)}-{owner.token()}-{uuid.uuid4().hex}"


def _stale(serving_dir: str, name: str) -> bool:
    m = _STAGING.match(name[len(STAGING_PREFIX):])
    if m is None:  # an older release's name: no owner recorded, judged by age
        try:
            age = time.time() - os.stat(os.path.join(serving_dir, name)).st_mtime
        except OSError:
            return False
        return age > LEGACY_STAGING_MAX_AGE_S
    owner = Owner.from_token(m.group("owner"))  # on this host: another host's is left alone
    return (owner is not None and m.group("host") == _host_tag(owner.host)
            and not owner.alive())


def remove_stale_staging(serving_dir: str) -> List[str]:
    """Removes the staging folders of local `serving_dir` whose owner process is
    gone (a push killed mid-copy); returns their names."""
    if "://" in serving_dir or not os.path.isdir(serving_dir):
        return []
    removed = []
    for name in sorted(os.listdir(serving_dir)):
        if name.startswith(STAGING_PREFIX) and _stale(serving_dir, name):
            shutil.rmtree(os.path.join(serving_dir, name), ignore_errors=True)
            logging.warning("removed %s: a push whose process died left it", name)
            removed.append(name)
    return removed


def serving_manifests(serving_dir: str) -> Dict[str, List[int]]:
    """{run id: its complete versions} from the versions' manifests (metrics.json)."""
    found: Dict[str, List[int]] = {}
    for version in list_versions(serving_dir):
        try:
            with tf.io.gfile.GFile(join(serving_dir, str(version), METRICS_FILE)) as f:
                run_id = json.loads(f.read(1 << 20)).get("run_id")
        except (ValueError, AttributeError, tf.errors.OpError):
            continue  # unreadable or not an object: not attributable to a run
        if isinstance(run_id, str):
            found.setdefault(run_id, []).append(version)
    return found


def publish_version(serving_dir: str, files: Dict[str, str], metrics: Dict[str, Any]) -> int:
    """Copies `files` (name -> source path) and metrics into a new version folder."""
    if "://" in serving_dir:
        return _publish_in_place(serving_dir, files, metrics)
    tf.io.gfile.makedirs(serving_dir)
    remove_stale_staging(serving_dir)
    staging = os.path.join(serving_dir, _staging_name())
    tf.io.gfile.makedirs(staging)
    try:
        _copy_files(staging, files)
        kill_hook.point(PUSHER_NODE, "staged")
        for attempt in range(100):
            version = (numbered_versions(serving_dir) or [0])[-1] + 1
            _finish_version(staging, dict(metrics, version=version))
            try:
                # os.rename refuses to replace a non-empty folder, so two
                # concurrent pushers can't both take the same number.
                os.rename(staging, os.path.join(serving_dir, str(version)))
                kill_hook.point(PUSHER_NODE, "after_rename")
                return version
            except OSError:
                if not tf.io.gfile.isdir(os.path.join(serving_dir, str(version))):
                    raise
                time.sleep(0.01 * attempt)
        raise RuntimeError(f"could not allocate a version number in {serving_dir}")
    finally:
        if tf.io.gfile.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _publish_in_place(serving_dir: str, files: Dict[str, str], metrics: Dict[str, Any]) -> int:
    """Object stores: the next number after every numbered folder, complete or not
    (a crashed push's leftovers are never reused), marker written last."""
    version = (numbered_versions(serving_dir) or [0])[-1] + 1
    folder = os.path.join(serving_dir, str(version))
    tf.io.gfile.makedirs(folder)
    try:
        _copy_files(folder, files)
        _finish_version(folder, dict(metrics, version=version))
    except BaseException:
        try:
            tf.io.gfile.rmtree(folder)
        except tf.errors.OpError:
            logging.warning("could not remove the incomplete version %s", folder)
        raise
    return version


def candidate_identity(model_uri: str, settings: PushSettings) -> Optional[str]:
    """sha256 of what made the candidate: the Trainer's training data and settings
    (head.json's ``training``), the run's settings and code (``candidate_config``)
    and the labels. None when any part is unknown (older code): never "identical"."""
    training = (model_info.read_head_info(model_uri) or {}).get("training")
    if not settings.candidate_config or not isinstance(training, dict) or \
            not model_info.text_field(training, "data") or not model_info.text_field(training, "settings"):
        return None
    text = json.dumps({"training": {k: training[k] for k in ("data", "settings")},
                       "config": settings.candidate_config, "labels": list(settings.label_names)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def served_identity(serving_dir: str) -> Optional[Tuple[int, Optional[str]]]:
    """(the latest complete version, the candidate identity its manifest recorded), or None."""
    versions = list_versions(serving_dir)
    if not versions:
        return None
    try:
        with tf.io.gfile.GFile(join(serving_dir, str(versions[-1]), METRICS_FILE)) as f:
            manifest = json.loads(f.read(1 << 20))
    except (ValueError, tf.errors.OpError):
        return versions[-1], None
    identity = manifest.get(IDENTITY_KEY) if isinstance(manifest, dict) else None
    return versions[-1], identity if isinstance(identity, str) and identity else None


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        pushed = artifact_utils.get_single_instance(output_dict["pushed_model"])
        blessing = artifact_utils.get_single_instance(input_dict["model_blessing"])
        if not blessing.get_int_custom_property("blessed"):
            logging.info("Model not blessed: nothing pushed.")
            pushed.set_int_custom_property("pushed", 0)
            pushed.set_string_custom_property("not_pushed_reason", "the Evaluator did not bless the model")
            return
        model = artifact_utils.get_single_instance(input_dict["model"])
        eval_uri = artifact_utils.get_single_uri(input_dict["evaluation"])
        settings = PushSettings.from_exec_properties(exec_properties)
        identity = candidate_identity(model.uri, settings)
        served = served_identity(settings.serving_dir) if identity else None
        if served is not None and served[1] == identity:
            # Same training data, settings and code as the served version (a --force
            # rerun, a scheduled run with nothing new): phones need no new download.
            reason = f"candidate identical to the served model (version {served[0]})"
            logging.info("Nothing pushed: %s", reason)
            pushed.set_int_custom_property("pushed", 0)
            pushed.set_int_custom_property("identical_to_version", served[0])
            pushed.set_string_custom_property("not_pushed_reason", reason)
            return
        tflite = artifact_utils.get_single_uri(input_dict["tflite_models"])
        parity = ParityReport.read(tflite)
        not_pushed = parity.failed
        for variant, reason in not_pushed.items():
            logging.warning("TFLite %s not pushed: %s", variant, reason)
        pushed.set_string_custom_property("pushed_variants", json.dumps(list(parity.passed)))
        pushed.set_string_custom_property("not_pushed_variants", json.dumps(not_pushed, sort_keys=True))
        if not parity.passed:
            reason = "no TFLite variant met its parity bound: " + "; ".join(
                f"{v}: {r}" for v, r in not_pushed.items())
            logging.warning("Nothing pushed: %s", reason)
            pushed.set_int_custom_property("pushed", 0)
            pushed.set_string_custom_property("not_pushed_reason", reason)
            return
        metrics = {
            "evaluation": evaluation.summarize(eval_uri, list(settings.label_names)),
            "gate": settings.gate.to_config(),
            "model_uri": model.uri,
            "model_id": model.id,
            "run_id": self._context.pipeline_run_id if self._context else None,
            "variants": list(parity.passed),
            "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tflite": parity.pushed_record(),
            IDENTITY_KEY: identity,
        }
        serving_dir = settings.serving_dir
        files = {FILE_NAMES[v]: os.path.join(tflite, FILE_NAMES[v]) for v in parity.passed}
        for name in (LABELS_FILE, PARITY_FILE):
            files[name] = os.path.join(tflite, name)
        version = publish_version(serving_dir, files, metrics)
        destination = os.path.join(serving_dir, str(version))
        logging.info("Pushed version %d to %s", version, destination)
        pushed.set_int_custom_property("pushed", 1)
        pushed.set_int_custom_property("pushed_version", version)
        pushed.set_string_custom_property("pushed_destination", destination)
        pushed.set_string_custom_property("pushed_model", model.uri)
        pushed.set_int_custom_property("pushed_model_id", model.id)
        io_utils.write_string_file(os.path.join(pushed.uri, "destination.txt"), destination)


class TFLitePusher(base_component.BaseComponent):
    """Pushes the TFLite variants that met their parity bound, when the Evaluator
    blessed the model."""

    SPEC_CLASS = TFLitePusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
                 evaluation: types.BaseChannel, serving_dir: str, label_names,
                 min_accuracy: float, max_accuracy_drop: float, tflite_models: types.BaseChannel,
                 candidate_config: str = ""):
        settings = PushSettings(serving_dir=serving_dir, label_names=tuple(label_names),
                                gate=GateSettings(min_accuracy=float(min_accuracy),
                                                  max_accuracy_drop=float(max_accuracy_drop)),
                                candidate_config=candidate_config)
        super().__init__(spec=TFLitePusherSpec(
            model=model, model_blessing=model_blessing, evaluation=evaluation,
            tflite_models=tflite_models, **settings.to_exec_properties(),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel)))
