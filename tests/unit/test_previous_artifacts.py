"""components/previous_artifacts.py: the registry, the lookup and record executors,
and how "nothing found" reaches LabelGuard, BottleneckGen and the Evaluator.

The executors run in-process on small folders (no pipeline, no TensorFlow model):
fast. tests/test_kubeflow_e2e.py runs them for real inside the compiled spec.
"""

import json
import os

import pytest
from tfx.types import standard_artifacts

from components import contracts
from components import previous_artifacts as pa
from conftest import tfx_artifact as _artifact


def _model_dir(path, text="v1"):
    (path / "Format-Serving" / "variables").mkdir(parents=True)
    (path / "Format-Serving" / "saved_model.pb").write_text(text)
    (path / "Format-Serving" / "variables" / "variables.index").write_text(text)
    (path / "label_space.json").write_text(json.dumps({"class_counts": {"a": 3, "b": 4}}))
    return path


def _lookup(kind, registry, out_dir):
    cls = standard_artifacts.Model if kind == pa.BLESSED_MODEL else pa.FeatureCache
    key = "model" if kind == pa.BLESSED_MODEL else "cache"
    out = _artifact(cls, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pa.LookupExecutor().Do({}, {key: [out]}, {"kind": kind, "registry": str(registry)})
    return out


# ---------------------------------------------------------------- registry

def test_records_are_whole_json_files_and_the_newest_wins(tmp_path):
    registry = pa.registry_uri(str(tmp_path / "root"), "image-retrain")
    assert registry == str(tmp_path / "root" / "_registry" / "image-retrain")
    assert pa.latest(registry, pa.FEATURE_CACHE) is None
    caches = []
    for i in range(3):
        (tmp_path / f"cache{i}").mkdir()
        (tmp_path / f"cache{i}" / "features-00000-of-00001.gz").write_text("x")
        caches.append(pa.record(registry, pa.FEATURE_CACHE, {"uri": str(tmp_path / f"cache{i}"),
                                                              "namespace": f"ns{i}"}))
    names = [os.path.basename(p) for p in pa.records(registry, pa.FEATURE_CACHE)]
    assert names == sorted(names) and len(names) == 3
    assert not any(n.startswith(".") for n in os.listdir(os.path.dirname(caches[0])))
    newest = pa.latest(registry, pa.FEATURE_CACHE)
    assert newest["uri"] == str(tmp_path / "cache2") and newest["namespace"] == "ns2"
    assert newest["record"] == caches[2] and newest["kind"] == pa.FEATURE_CACHE
    # A half-written temp file, an unreadable record and one whose files were
    # deleted are all skipped: the one before wins.
    folder = os.path.dirname(caches[0])
    open(os.path.join(folder, ".tmp-99999999T000000.000000Z-x.json"), "w").write("{")
    open(os.path.join(folder, "99999999T000000.000000Z-broken.json"), "w").write("{not json")
    (tmp_path / "cache2" / "features-00000-of-00001.gz").unlink()
    assert pa.latest(registry, pa.FEATURE_CACHE)["uri"] == str(tmp_path / "cache1")
    with pytest.raises(ValueError, match="unknown registry kind"):
        pa.record(registry, "model", {"uri": "x"})


def test_a_blessed_model_record_needs_a_saved_model(tmp_path):
    registry = str(tmp_path / "registry")
    pa.record(registry, pa.BLESSED_MODEL, {"uri": str(_model_dir(tmp_path / "m1"))})
    pa.record(registry, pa.BLESSED_MODEL, {"uri": str(tmp_path / "m2-never-written")})
    assert pa.latest(registry, pa.BLESSED_MODEL)["uri"] == str(tmp_path / "m1")


# ------------------------------------------------------------------- record

def test_record_executor_records_only_blessed_models(tmp_path):
    registry = str(tmp_path / "registry")
    model = _artifact(standard_artifacts.Model, _model_dir(tmp_path / "model"))
    model.id = 7
    refused = _artifact(standard_artifacts.ModelBlessing, tmp_path / "b0", blessed=0)
    pa.RecordExecutor().Do({"model": [model], "model_blessing": [refused]}, {},
                           {"registry": registry})
    assert pa.records(registry, pa.BLESSED_MODEL) == []
    blessed = _artifact(standard_artifacts.ModelBlessing, tmp_path / "b1", blessed=1)
    pa.RecordExecutor().Do({"model": [model], "model_blessing": [blessed]}, {},
                           {"registry": registry})
    entry = pa.latest(registry, pa.BLESSED_MODEL)
    assert entry["uri"] == model.uri and entry["model_id"] == 7
    assert entry["blessing_uri"] == blessed.uri


def test_record_feature_cache_executor_records_a_cache_with_a_namespace(tmp_path):
    registry = str(tmp_path / "registry")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "features-00000-of-00001.tfrecord").write_text("x")
    random_weights = _artifact(pa.FeatureCache, tmp_path / "cache", namespace="")
    pa.RecordFeatureCacheExecutor().Do({"feature_cache": [random_weights]}, {}, {"registry": registry})
    assert pa.records(registry, pa.FEATURE_CACHE) == []  # nothing cached, nothing to reuse
    cache = _artifact(pa.FeatureCache, tmp_path / "cache", namespace="mobilenet_v1|abc|p1|c2")
    pa.RecordFeatureCacheExecutor().Do({"feature_cache": [cache]}, {}, {"registry": registry})
    entry = pa.latest(registry, pa.FEATURE_CACHE)
    assert (entry["uri"], entry["namespace"]) == (cache.uri, "mobilenet_v1|abc|p1|c2")
    # What the next run's lookup passes on, and BottleneckGen then reads.
    followed = pa.follow(_lookup(pa.FEATURE_CACHE, registry, tmp_path / "out"))
    assert followed.uri == cache.uri
    assert followed.get_string_custom_property("namespace") == "mobilenet_v1|abc|p1|c2"


# ------------------------------------------------------------------- lookup

def test_baseline_lookup_copies_the_latest_blessed_model(tmp_path):
    registry = str(tmp_path / "registry")
    empty = _lookup(pa.BLESSED_MODEL, registry, tmp_path / "out0")
    assert empty.get_int_custom_property("found") == 0 and not pa.is_present(empty)
    assert json.loads((tmp_path / "out0" / pa.LOOKUP_FILE).read_text())["found"] is False

    for i in (1, 2):
        pa.record(registry, pa.BLESSED_MODEL, {"uri": str(_model_dir(tmp_path / f"m{i}", f"v{i}")),
                                               "model_id": i})
    out = _lookup(pa.BLESSED_MODEL, registry, tmp_path / "out1")
    assert out.get_int_custom_property("found") == 1 and pa.is_present(out)
    assert out.get_string_custom_property("source_uri") == str(tmp_path / "m2")
    assert out.get_string_custom_property("source_model_id") == "2"
    assert out.get_string_custom_property("lookup_mode") == "copy"
    assert (tmp_path / "out1" / "Format-Serving" / "saved_model.pb").read_text() == "v2"
    assert (tmp_path / "out1" / "Format-Serving" / "variables" / "variables.index").read_text() == "v2"
    # What LabelGuard reads from a baseline.
    from components import label_guard
    assert label_guard.read_label_space(out.uri) == {"a": 3, "b": 4}
    # The source is untouched.
    assert (tmp_path / "m2" / "Format-Serving" / "saved_model.pb").read_text() == "v2"


def test_feature_cache_lookup_is_a_pointer_bottleneck_gen_follows(tmp_path):
    registry = str(tmp_path / "registry")
    empty = _lookup(pa.FEATURE_CACHE, registry, tmp_path / "out0")
    assert pa.follow(empty) is None and pa.follow(None) is None

    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "features-00000-of-00001.gz").write_text("x")
    pa.record(registry, pa.FEATURE_CACHE, {"uri": str(tmp_path / "cache"), "namespace": "mobilenet_v1|abc|p1"})
    out = _lookup(pa.FEATURE_CACHE, registry, tmp_path / "out1")
    assert out.get_int_custom_property("found") == 1
    assert out.get_string_custom_property("namespace") == "mobilenet_v1|abc|p1"
    assert json.loads((tmp_path / "out1" / pa.POINTER_FILE).read_text())["uri"] == str(tmp_path / "cache")
    followed = pa.follow(out)
    assert followed.uri == str(tmp_path / "cache")
    assert followed.get_string_custom_property("namespace") == "mobilenet_v1|abc|p1"
    assert out.uri == str(tmp_path / "out1")  # the lookup's own artifact is unchanged
    # A resolver's artifact (no lookup properties) is read where it is.
    resolved = _artifact(pa.FeatureCache, tmp_path / "cache", namespace="n")
    assert pa.follow(resolved) is resolved


# ---------------------------------------------- "nothing found" downstream

def test_label_guard_treats_a_found_nothing_baseline_as_none(tmp_path, monkeypatch):
    from components import label_guard
    monkeypatch.setattr(label_guard, "class_counts_from_statistics", lambda uri, splits: {"a": 9, "b": 1})
    stats = _artifact(standard_artifacts.ExampleStatistics, tmp_path / "stats")
    stats.split_names = '["train"]'

    def run(baseline):
        out = _artifact(label_guard.LabelCheck, tmp_path / "check")
        (tmp_path / "check").mkdir(exist_ok=True)
        label_guard.Executor().Do({"statistics": [stats], "baseline_model": baseline},
                                  {"label_check": [out]},
                                  {"allow_label_change": 0, "max_class_share_change": 0.2})
        return json.loads((tmp_path / "check" / contracts.LABEL_CHECK_FILE).read_text())

    none = _artifact(standard_artifacts.Model, tmp_path / "none", found=0)
    assert run([none])["baseline_model"] is None
    found = _artifact(standard_artifacts.Model, _model_dir(tmp_path / "m"), found=1)
    with pytest.raises(label_guard.LabelSpaceError, match="class 'a' share changed"):
        run([found])


def test_as_resolved_shows_the_named_inputs_as_a_resolver_passes_them(tmp_path):
    seen = []

    @pa.as_resolved("cache", "model")
    class Reader:
        def Do(self, input_dict, output_dict, exec_properties):
            seen.append(input_dict)
            return "done"

    assert Reader.__name__ == "Reader" and Reader.AS_RESOLVED == ("cache", "model")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "features-00000-of-00001.tfrecord").write_text("x")
    registry = str(tmp_path / "registry")
    nothing = _lookup(pa.FEATURE_CACHE, registry, tmp_path / "out0")
    pa.record(registry, pa.FEATURE_CACHE, {"uri": str(tmp_path / "cache"), "namespace": "ns"})
    pointer = _lookup(pa.FEATURE_CACHE, registry, tmp_path / "out1")
    resolved = _artifact(standard_artifacts.Model, "/r")
    other = _artifact(standard_artifacts.Model, "/other", found=0)  # not a named key: untouched
    inputs = {"cache": [nothing], "model": [resolved], "other": [other]}
    assert Reader().Do(inputs, {}, {}) == "done"
    assert seen[-1] == {"cache": [], "model": [resolved], "other": [other]}
    assert inputs["cache"] == [nothing]  # the caller's dict is left alone
    Reader().Do({"cache": [pointer], "model": None}, {}, {})
    (followed,) = seen[-1]["cache"]
    assert followed.uri == str(tmp_path / "cache") and seen[-1]["model"] is None


@pytest.mark.parametrize("lookup", ["registry", "resolver"])
def test_every_reader_of_an_earlier_runs_artifact_is_wrapped(tmp_path, lookup):
    from pipeline import previous_runs
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_components
    config = PipelineConfig(images=str(tmp_path), workdir=str(tmp_path), label_names=("a", "b"),
                            lookup=lookup)
    sources = {n.id for n in previous_runs.previous_baseline(config)[0]
               + previous_runs.previous_feature_cache(config)[0]}
    readers = {(node, key) for node in create_components(config) for key, channel in node.inputs.items()
               if getattr(channel, "producer_component_id", None) in sources}
    assert {(node.id, key) for node, key in readers} == {
        ("LabelGuard", "baseline_model"), ("Evaluator", "baseline_model"), ("BottleneckGen", "previous_cache"),
        ("Trainer", "base_model")}
    for node, key in readers:
        assert key in node.executor_spec.executor_class.AS_RESOLVED, (node.id, key)


def test_evaluator_executor_drops_a_found_nothing_baseline(monkeypatch):
    from tfx.components.evaluator import executor as stock
    seen = {}
    monkeypatch.setattr(stock.Executor, "Do", lambda self, i, o, e: seen.update(i))
    model = _artifact(standard_artifacts.Model, "/m")
    none = _artifact(standard_artifacts.Model, "/none", found=0)
    pa.EvaluatorExecutor().Do({"model": [model], "baseline_model": [none]}, {}, {})
    assert seen["baseline_model"] == []  # the stock executor: has_baseline = False
    found = _artifact(standard_artifacts.Model, "/b", found=1)
    pa.EvaluatorExecutor().Do({"model": [model], "baseline_model": [found]}, {}, {})
    assert seen["baseline_model"] == [found]
    resolved = _artifact(standard_artifacts.Model, "/r")  # from a resolver: no `found`
    pa.EvaluatorExecutor().Do({"model": [model], "baseline_model": [resolved]}, {}, {})
    assert seen["baseline_model"] == [resolved]


def test_the_evaluator_component_is_tfxs_with_the_wrapping_executor():
    from tfx import v1 as tfx
    from tfx.components.evaluator import executor as stock
    assert issubclass(pa.Evaluator, tfx.components.Evaluator)
    assert pa.Evaluator.EXECUTOR_SPEC.executor_class is pa.EvaluatorExecutor
    # The Kubeflow V2 entry point renames baseline/current model ids for
    # subclasses of TFX's Evaluator executor only.
    assert issubclass(pa.EvaluatorExecutor, stock.Executor)


@pytest.mark.parametrize("lookup", ["registry", "resolver"])
def test_the_next_baseline_needs_a_blessing_not_a_push(tmp_path, lookup):
    """docs/operations.md: a model the Evaluator blessed is the next run's baseline even
    when no TFLite variant was pushed. What picks it reads the Trainer's Model and the
    Evaluator's blessing only, never TFLiteExport's or the Pusher's outputs (the
    registry recorder's behaviour on a blessing: test_record_executor_records_only_blessed_models)."""
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
        LatestBlessedModelStrategy)

    from components import contracts
    from pipeline import previous_runs
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_components
    config = PipelineConfig(images=str(tmp_path), workdir=str(tmp_path), label_names=("a", "b"),
                            lookup=lookup)
    nodes = {n.id: n for n in create_components(config)}
    if lookup == "resolver":  # MLMD: TFX's resolver over every Model and ModelBlessing
        [resolver] = previous_runs.previous_baseline(config)[0]
        assert resolver.exec_properties["resolver_class"] is LatestBlessedModelStrategy
        assert {k: c.type_name for k, c in resolver.raw_inputs.items()} == {
            "model": "Model", "model_blessing": "ModelBlessing"}
    else:  # the registry: recorded once the Pusher has finished (an unfinished run's
        # blessing is never a baseline), from the Trainer's and the Evaluator's outputs alone
        recorder = nodes[contracts.RECORD_BLESSED_MODEL]
        assert {k: (c.type_name, c.producer_component_id) for k, c in recorder.inputs.items()} == {
            "model": ("Model", "Trainer"), "model_blessing": ("ModelBlessing", "Evaluator")}
