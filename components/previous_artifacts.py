"""Previous artifacts without TFX Resolver nodes: a registry under the pipeline root.

The pipeline needs two things from earlier runs: the latest blessed model (the
Evaluator's baseline, LabelGuard's label space) and the latest FeatureCache
(BottleneckGen). With ``PipelineConfig.lookup = "resolver"`` (the local runner,
Vertex AI Pipelines) TFX Resolver nodes query MLMD for them. Open-source KFP v2
backends refuse resolver tasks ("non-container and non-importer executor not
implemented"), so ``lookup = "registry"`` replaces each Resolver with an ordinary
container step from this module, reading pointers that earlier runs left under

    <pipeline_root>/_registry/<pipeline_name>/<kind>/<sortable UTC time>-<uuid>.json

(one directory per pipeline name, like one MLMD context per pipeline; each file a
JSON object written under a hidden name and renamed into place, so a reader sees a
whole record or none; object writes on gs:// or s3:// are atomic anyway). Nothing is
ever rewritten: the newest file whose target still exists wins.

* ``blessed_model`` records: written by :class:`RecordBlessedModel` after the
  Evaluator when (and only when) it blessed the candidate, LatestBlessedModelStrategy's
  rule (blessed, whether or not a TFLite variant was pushed).
* ``feature_cache`` records: written by :class:`RecordFeatureCache`, a step after
  BottleneckGen that records its FeatureCache (unless random weights left it empty).
* ``blessed_model`` records written by `retrain bless --pipeline-root`
  (pipeline/registry_ops.py): a pushed version's model blessed again (an
  ordinary record), or a reset (``"reset": true``): the newest record being a
  reset means "no baseline", until a later run records a blessed model.

Lookup steps (:class:`LatestBlessedModelLookup`, :class:`LatestFeatureCacheLookup`) output
a real artifact of the type a Resolver would pass on, made by this run (lineage in MLMD),
with custom properties ``found`` (1/0), ``source_uri`` and ``registry_record``:

* the baseline Model is a *copy* of the blessed model's files (tf.io.gfile, so
  gs:// works; a few MB). TFX's Evaluator loads ``<uri>/Format-Serving``; an
  executor-reported output URI is not part of every KFP v2 backend's documented
  ExecutorOutput contract, so a pointer would be a gamble.
* the FeatureCache is a pointer (``source_uri`` plus ``pointer.json``): it can be
  large, and its only reader, BottleneckGen, follows it (:func:`follow`); the
  ``namespace`` custom property is copied, so cache invalidation is unchanged.

"Nothing found" cannot be an empty channel (a KFP container task always has its
outputs; TFX's entry point writes one artifact per output key): it is an empty
artifact with ``found = 0``. Readers' executors are decorated with
:func:`as_resolved`, which drops it (and follows a FeatureCache pointer) before
their ``Do`` runs, so LabelGuard, BottleneckGen and TFX's Evaluator
(components/evaluator.py) see what a Resolver would pass: the Evaluator has
no baseline, drops change thresholds and applies the value threshold alone,
instead of failing to load a SavedModel from an empty folder. Which nodes a run
gets (resolvers or these steps) is decided in pipeline/previous_runs.py alone.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.experimental import simple_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.contracts import INGEST_CHECKS_FILE, SERVING_MODEL_DIR
from components.contracts import join as _join

REGISTRY_DIR = "_registry"
BLESSED_MODEL = "blessed_model"
FEATURE_CACHE = "feature_cache"
KINDS = (BLESSED_MODEL, FEATURE_CACHE)  # what the lookup steps look up
# ImageExampleGen's checks, recorded (in every mode) and read by it alone, under their own
# location rather than this registry (components/ingest_checks.py): no lookup step passes them on.
INGEST_CHECKS = "ingest_checks"
RECORDED_KINDS = KINDS + (INGEST_CHECKS,)
POINTER_FILE = "pointer.json"
LOOKUP_FILE = "lookup.json"
FOUND = "found"  # a lookup output's custom property: 1, or 0 for "nothing found"
# BottleneckGen's output (defined here: this module needs no Beam component). A standard
# type on purpose: TFX's Kubeflow V2 compiler expresses resolver queries only over types it
# knows by name; over a custom one it would silently select nothing there.
FeatureCache = simple_artifacts.Dataset


def registry_uri(pipeline_root: str, pipeline_name: str) -> str:
    """The registry of one pipeline under its pipeline root."""
    return _join(pipeline_root, REGISTRY_DIR, pipeline_name)


# ---------------------------------------------------------------- the registry

def record(registry: str, kind: str, entry: Dict[str, Any]) -> str:
    """Adds one record (a JSON object) for `kind`; returns its path.

    Written as a hidden file and renamed to its final name: readers skip hidden
    names, so they never see half a record (on object stores, where rename is a
    copy, the final object still appears whole: object writes are atomic).
    """
    if kind not in RECORDED_KINDS:
        raise ValueError(f"unknown registry kind {kind!r} (known: {', '.join(RECORDED_KINDS)})")
    folder = _join(registry, kind)
    tf.io.gfile.makedirs(folder)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    name = f"{stamp}-{uuid.uuid4().hex[:12]}.json"
    body = dict(entry, kind=kind, recorded_at=stamp)
    tmp = _join(folder, f".tmp-{name}")
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(body, sort_keys=True))
    path = _join(folder, name)
    tf.io.gfile.rename(tmp, path, overwrite=False)
    logging.info("Registry: recorded %s %s", kind, path)
    return path


def records(registry: str, kind: str) -> List[str]:
    """Paths of `kind`'s records, oldest first (names sort by time)."""
    folder = _join(registry, kind)
    if not tf.io.gfile.isdir(folder):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(folder)]
    return [_join(folder, n) for n in sorted(names) if n.endswith(".json") and not n.startswith(".")]


def latest(registry: str, kind: str) -> Optional[Dict[str, Any]]:
    """The newest readable record of `kind` whose target still exists, or None.

    Each entry returned has ``record`` (its path) added. A record that cannot be
    read or points at deleted files is skipped with a warning, so a cleaned-up
    artifact falls back to the one before, as MLMD would for a deleted artifact.
    """
    for path in reversed(records(registry, kind)):
        try:
            with tf.io.gfile.GFile(path) as f:
                entry = json.load(f)
        except (tf.errors.OpError, ValueError) as e:
            logging.warning("Registry: skipping unreadable record %s (%s)", path, e)
            continue
        if not isinstance(entry, dict):
            logging.warning("Registry: skipping %s: not a JSON object", path)
            continue
        if entry.get("reset") is True:
            logging.info("Registry: %s is a reset (%s): no %s", path, entry.get("reason", ""), kind)
            return None
        problem = _target_problem(kind, entry)
        if problem:
            logging.warning("Registry: skipping %s: %s", path, problem)
            continue
        return dict(entry, record=path)
    return None


def _target_problem(kind: str, entry: Dict[str, Any]) -> Optional[str]:
    uri = entry.get("uri")
    if not isinstance(uri, str) or not uri:
        return "no uri"
    if kind == BLESSED_MODEL:
        if not tf.io.gfile.exists(_join(uri, SERVING_MODEL_DIR, "saved_model.pb")):
            return f"no SavedModel under {uri}/{SERVING_MODEL_DIR}"
    elif kind == INGEST_CHECKS:
        if not tf.io.gfile.exists(_join(uri, INGEST_CHECKS_FILE)):
            return f"no {INGEST_CHECKS_FILE} under {uri}"
    elif not tf.io.gfile.glob(_join(uri, "*")):
        return f"{uri} is empty or gone"
    return None


def copy_tree(src: str, dest: str) -> int:
    """Copies every file under `src` to `dest` (tf.io.gfile: local, gs:// or s3://); returns the count."""
    src = src.rstrip("/")
    copied = 0
    for folder, _, files in tf.io.gfile.walk(src):
        rel = os.path.relpath(folder.rstrip("/"), src)
        target = dest if rel == "." else _join(dest, rel)
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(_join(folder, name), _join(target, name), overwrite=True)
            copied += 1
    return copied


# ------------------------------------------------------------- found / absent

def is_present(artifact) -> bool:
    """False only for a lookup output that found nothing (``found`` = 0)."""
    return not (artifact.has_custom_property(FOUND) and artifact.get_int_custom_property(FOUND) == 0)


def present(artifacts) -> list:
    """The artifacts of a channel that stand for something: what a resolver would pass."""
    return [a for a in (artifacts or []) if is_present(a)]


def follow(artifact):
    """The artifact to read a FeatureCache from: a lookup's pointer leads to the
    recorded cache (an in-memory copy with that URI); anything else is itself.
    None for a lookup that found nothing."""
    if artifact is None or not is_present(artifact):
        return None
    source = artifact.get_string_custom_property("source_uri") \
        if artifact.has_custom_property("source_uri") else ""
    if not source or artifact.get_string_custom_property("lookup_mode") != "pointer":
        return artifact
    target = copy.deepcopy(artifact)  # keeps the properties (namespace)
    target.uri = source
    return target


def as_resolved(*keys: str) -> Callable[[type], type]:
    """Class decorator for an executor reading earlier runs' artifacts under input
    `keys`: its ``Do`` gets them as a Resolver would pass them, a "nothing found"
    lookup output dropped (an empty list) and a FeatureCache pointer followed.
    The class keeps its name (compiled specs name it) and lists `keys` in
    ``AS_RESOLVED``; an inherited ``Do`` is looked up at call time."""
    def decorate(cls: type) -> type:
        own = cls.__dict__.get("Do")

        def Do(self, input_dict, output_dict, exec_properties):
            input_dict = dict(input_dict)
            for key in keys:
                if input_dict.get(key) is not None:
                    kept = [follow(a) for a in present(input_dict[key])]
                    if len(kept) < len(input_dict[key]):
                        logging.info("%s: the registry lookup found nothing: passed on as none", key)
                    input_dict[key] = kept
            do = own.__get__(self) if own else super(cls, self).Do
            return do(input_dict, output_dict, exec_properties)

        if own:
            functools.update_wrapper(Do, own)
        cls.Do, cls.AS_RESOLVED = Do, tuple(keys)
        return cls
    return decorate


# ------------------------------------------------------------------ executors

class LookupExecutor(base_executor.BaseExecutor):
    """Outputs the latest recorded artifact of ``kind`` (a copy or a pointer)."""

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        kind, registry = exec_properties["kind"], exec_properties["registry"]
        (key,) = output_dict
        out = artifact_utils.get_single_instance(output_dict[key])
        entry = latest(registry, kind)
        report = {"kind": kind, "registry": registry, "found": entry is not None, "entry": entry}
        if entry is None:
            logging.info("Registry %s has no %s: passing on an empty artifact (found=0)", registry, kind)
            out.set_int_custom_property(FOUND, 0)
        else:
            out.set_int_custom_property(FOUND, 1)
            out.set_string_custom_property("source_uri", entry["uri"])
            out.set_string_custom_property("registry_record", entry["record"])
            out.set_string_custom_property("recorded_at", entry.get("recorded_at", ""))
            if kind == BLESSED_MODEL:
                # TFX's Evaluator loads <uri>/Format-Serving: the files must be here.
                n = copy_tree(entry["uri"], out.uri)
                out.set_string_custom_property("lookup_mode", "copy")
                for k in ("model_id", "blessing_uri"):
                    if entry.get(k) is not None:
                        out.set_string_custom_property(f"source_{k}", str(entry[k]))
                logging.info("Baseline: copied %d files of %s into %s", n, entry["uri"], out.uri)
            else:
                out.set_string_custom_property("lookup_mode", "pointer")
                out.set_string_custom_property("namespace", entry.get("namespace", ""))
                with tf.io.gfile.GFile(_join(out.uri, POINTER_FILE), "w") as f:
                    json.dump(entry, f, indent=2, sort_keys=True)
        tf.io.gfile.makedirs(out.uri)
        with tf.io.gfile.GFile(_join(out.uri, LOOKUP_FILE), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)


class RecordExecutor(base_executor.BaseExecutor):
    """Records the model in the registry when the Evaluator blessed it."""

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        blessing = artifact_utils.get_single_instance(input_dict["model_blessing"])
        model = artifact_utils.get_single_instance(input_dict["model"])
        if not blessing.get_int_custom_property("blessed"):
            logging.info("Model %s not blessed: not recorded", model.uri)
            return
        record(exec_properties["registry"], BLESSED_MODEL, {
            "uri": model.uri, "model_id": model.id, "blessing_uri": blessing.uri})


class RecordFeatureCacheExecutor(base_executor.BaseExecutor):
    """Records BottleneckGen's FeatureCache in the registry (the next run's previous cache)."""

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        cache = artifact_utils.get_single_instance(input_dict["feature_cache"])
        namespace = cache.get_string_custom_property("namespace")
        if not namespace:  # random weights: BottleneckGen cached nothing
            logging.info("FeatureCache %s has no namespace: not recorded", cache.uri)
            return
        record(exec_properties["registry"], FEATURE_CACHE, {"uri": cache.uri, "namespace": namespace})


# ----------------------------------------------------------------- components

_LOOKUP_PARAMETERS = {"kind": ExecutionParameter(type=str), "registry": ExecutionParameter(type=str)}


class BlessedModelLookupSpec(ComponentSpec):
    PARAMETERS = _LOOKUP_PARAMETERS
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {"model": ChannelParameter(type=standard_artifacts.Model)}


class FeatureCacheLookupSpec(ComponentSpec):
    PARAMETERS = _LOOKUP_PARAMETERS
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {"cache": ChannelParameter(type=FeatureCache)}


class LatestBlessedModelLookup(base_component.BaseComponent):
    """Registry stand-in for the LatestBlessedModelStrategy resolver (output ``model``)."""

    SPEC_CLASS = BlessedModelLookupSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(LookupExecutor)

    def __init__(self, registry: str):
        super().__init__(spec=BlessedModelLookupSpec(
            kind=BLESSED_MODEL, registry=registry,
            model=types.Channel(type=standard_artifacts.Model)))


class LatestFeatureCacheLookup(base_component.BaseComponent):
    """Registry stand-in for the LatestArtifactStrategy resolver over FeatureCache (output ``cache``)."""

    SPEC_CLASS = FeatureCacheLookupSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(LookupExecutor)

    def __init__(self, registry: str):
        super().__init__(spec=FeatureCacheLookupSpec(
            kind=FEATURE_CACHE, registry=registry,
            cache=types.Channel(type=FeatureCache)))


class RecordBlessedModelSpec(ComponentSpec):
    PARAMETERS = {"registry": ExecutionParameter(type=str)}
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }
    OUTPUTS: Dict[str, ChannelParameter] = {}


class RecordBlessedModel(base_component.BaseComponent):
    """Adds a blessed model to the registry (the next run's baseline)."""

    SPEC_CLASS = RecordBlessedModelSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(RecordExecutor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel, registry: str):
        super().__init__(spec=RecordBlessedModelSpec(
            model=model, model_blessing=model_blessing, registry=registry))


class RecordFeatureCacheSpec(ComponentSpec):
    PARAMETERS = {"registry": ExecutionParameter(type=str)}
    INPUTS = {"feature_cache": ChannelParameter(type=FeatureCache)}
    OUTPUTS: Dict[str, ChannelParameter] = {}


class RecordFeatureCache(base_component.BaseComponent):
    """Adds BottleneckGen's FeatureCache to the registry (the next run's previous cache)."""

    SPEC_CLASS = RecordFeatureCacheSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(RecordFeatureCacheExecutor)

    def __init__(self, feature_cache: types.BaseChannel, registry: str):
        super().__init__(spec=RecordFeatureCacheSpec(feature_cache=feature_cache, registry=registry))


def __getattr__(name: str):
    """The Evaluator moved to components/evaluator.py; pipelines compiled before
    still name ``components.previous_artifacts.EvaluatorExecutor``."""
    if name in ("Evaluator", "EvaluatorExecutor"):
        from components import evaluator
        return getattr(evaluator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
