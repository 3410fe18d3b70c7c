"""The compiled pipeline.yaml for open-source KFP (``--target kfp``: registry
lookups, no resolver task), executed the way KFP's launcher would
(kubeflow.local_launcher).

  run-1  compile with caching on, run every task from the spec (TFX's
         kubeflow_v2_run_executor in subprocesses, real MobileNet v1 weights, 3
         emoji classes): the registry is empty, so both lookups pass on an empty
         artifact (found=0), the Evaluator has no baseline and the value threshold
         decides; a TFLite model is pushed, the blessed model and the feature
         cache are recorded in <pipeline_root>/_registry/.
  run-2  the same spec again: the ExampleGen driver re-runs (same files, same
         fingerprint: cache hit), the lookups (never cached) find run-1's blessed
         model (copied into their output) and FeatureCache (a pointer), so no
         feature is computed and the Evaluator compares with run-1's model.

The Vertex form (resolver tasks) is checked at compile level in
test_kubeflow_compile.py; the launcher's resolver emulation in
test_kubeflow_local_launcher.py.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import previous_artifacts
from conftest import copy_subset

pytestmark = pytest.mark.slow

CLASSES = ["flags", "food_and_drink", "smileys_and_emotion"]
IMAGE = "registry.example/retrain:e2e"
BASELINE_LOOKUP, CACHE_LOOKUP = "latest_blessed_model_lookup", "latest_feature_cache_lookup"
EVALUATOR = "Evaluator"


def _task_of(doc, executor_suffix):
    """Task name whose container runs an executor class ending in `executor_suffix`."""
    for name, task in doc["root"]["dag"]["tasks"].items():
        label = doc["components"][task["componentRef"]["name"]]["executorLabel"]
        container = doc["deploymentSpec"]["executors"][label].get("container")
        if container and any(a.endswith(executor_suffix) for a in container.get("args", [])):
            return name
    raise AssertionError(f"no task runs {executor_suffix}")


@pytest.fixture(scope="module")
def kfp(tmp_path_factory, emoji_root, imagenet_weights):
    import yaml
    from kubeflow import runner
    from kubeflow.local_launcher import LocalLauncher
    from pipeline import preflight
    from pipeline.config import PipelineConfig

    tmp = tmp_path_factory.mktemp("kfp-e2e")
    images = copy_subset(emoji_root, tmp / "images", CLASSES, per_class=15)
    config = preflight.scan(PipelineConfig(
        images=str(images), workdir=str(tmp), epochs=40, tflite_variants=("float32",),
        enable_cache=True))
    config = runner.kubeflow_config(config, str(tmp / "pipeline_root"), str(tmp / "serving"),
                                    target="kfp")
    assert config.lookup == "registry"
    spec = runner.compile_pipeline(config, str(tmp / "pipeline.yaml"), IMAGE)
    first = LocalLauncher(spec, config.pipeline_root, max_parallel=2).run("run-1")
    registry = previous_artifacts.registry_uri(config.pipeline_root, config.pipeline_name)
    # What run 1 left for run 2 (read now: run 2 adds its own records).
    recorded = {kind: [json.load(open(p)) for p in previous_artifacts.records(registry, kind)]
                for kind in previous_artifacts.KINDS}
    with open(spec) as f:
        doc = yaml.safe_load(f)
    return {"spec": spec, "doc": doc, "config": config, "first": first, "tmp": tmp,
            "registry": registry, "recorded": recorded}


@pytest.fixture(scope="module")
def second_run(kfp):
    from kubeflow.local_launcher import LocalLauncher
    # Caching as compiled (on, except for the lookups), as `retrain submit` sends it.
    return LocalLauncher(kfp["spec"], kfp["config"].pipeline_root, max_parallel=2).run("run-2")


def test_the_spec_has_no_resolver_task(kfp):
    executors = kfp["doc"]["deploymentSpec"]["executors"].values()
    assert all(set(e) <= {"container", "importer"} for e in executors)
    tasks = kfp["doc"]["root"]["dag"]["tasks"]
    for lookup in (BASELINE_LOOKUP, CACHE_LOOKUP):
        assert "cachingOptions" not in tasks[lookup]  # a cache hit would be a stale answer
    assert tasks["ImageExampleGen"]["cachingOptions"] == {"enableCache": True}


def test_every_task_of_the_spec_ran(kfp):
    first, doc = kfp["first"], kfp["doc"]
    assert set(first.tasks) == set(doc["root"]["dag"]["tasks"])
    for name, task in first.tasks.items():
        assert task.state == "SUCCEEDED", name
        for key, artifacts in task.outputs.items():
            assert os.path.isdir(artifacts[0]["uri"]), (name, key)
    # An empty registry: both lookups pass on an artifact that says "none".
    for lookup, key in ((BASELINE_LOOKUP, "model"), (CACHE_LOOKUP, "cache")):
        assert first.artifact(lookup, key)["metadata"]["found"] == 0
    guard = first.artifact(_task_of(doc, "label_guard.Executor"), "label_check")
    with open(os.path.join(guard["uri"], "label_check.json")) as f:
        assert json.load(f)["baseline"] is None
    features = first.artifact(_task_of(doc, "bottleneck_gen.Executor"), "bottlenecks")["metadata"]
    assert features["reused_cache"] == 0 and features["computed"] > 0
    # No baseline: the Evaluator judged by the value threshold alone.
    blessing = first.artifact(EVALUATOR, "blessing")["metadata"]
    assert "baseline_model_id" not in blessing


def test_first_run_records_its_blessed_model_and_feature_cache(kfp):
    first, doc, recorded = kfp["first"], kfp["doc"], kfp["recorded"]
    model = first.artifact(_task_of(doc, "trainer.executor.GenericExecutor"), "model")
    cache = first.artifact(_task_of(doc, "bottleneck_gen.Executor"), "feature_cache")
    assert [r["uri"] for r in recorded["blessed_model"]] == [model["uri"]]
    assert [r["uri"] for r in recorded["feature_cache"]] == [cache["uri"]]
    assert recorded["feature_cache"][0]["namespace"] == cache["metadata"]["namespace"]


def test_first_run_pushes_a_working_tflite_model(kfp):
    from components import preprocessing, tflite_export
    first, doc = kfp["first"], kfp["doc"]
    blessing = first.artifact(EVALUATOR, "blessing")
    assert blessing["metadata"]["blessed"] == 1.0
    pushed = first.artifact(_task_of(doc, "tflite_pusher.Executor"), "pushed_model")
    assert pushed["metadata"]["pushed"] == 1.0
    version = os.path.join(kfp["config"].serving_dir, "1")
    assert pushed["metadata"]["pushed_destination"] == version
    with open(os.path.join(version, "labels.txt")) as f:
        assert f.read().split() == CLASSES
    with open(os.path.join(version, "metrics.json")) as f:
        assert json.load(f)["evaluation"]["accuracy"] >= 0.5

    interp = tf.lite.Interpreter(model_path=os.path.join(version, tflite_export.FILE_NAMES["float32"]))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    image = sorted((kfp["tmp"] / "images" / "flags").iterdir())[0].read_bytes()
    pixels = preprocessing.decode_and_resize(tf.constant([image]), int(inp["shape"][1])).numpy()
    interp.set_tensor(inp["index"], pixels.astype(inp["dtype"]))
    interp.invoke()
    probabilities = interp.get_tensor(out["index"])[0]
    assert probabilities.shape == (3,) and abs(float(np.sum(probabilities)) - 1.0) < 1e-3


def test_second_run_uses_the_first_runs_blessed_model_and_feature_cache(kfp, second_run):
    from components import evaluation
    first, doc, config = kfp["first"], kfp["doc"], kfp["config"]
    trainer = _task_of(doc, "trainer.executor.GenericExecutor")
    features = _task_of(doc, "bottleneck_gen.Executor")
    model = first.artifact(trainer, "model")
    # The lookups ran again (never cached) and found run 1's records.
    for lookup in (BASELINE_LOOKUP, CACHE_LOOKUP):
        assert second_run.tasks[lookup].state == "SUCCEEDED"
    baseline = second_run.artifact(BASELINE_LOOKUP, "model")
    assert baseline["metadata"]["found"] == 1 and baseline["metadata"]["source_uri"] == model["uri"]
    # A copy: the Evaluator loads <uri>/Format-Serving, LabelGuard <uri>/label_space.json.
    assert baseline["uri"] != model["uri"]
    assert os.path.isfile(os.path.join(baseline["uri"], "Format-Serving", "saved_model.pb"))
    cache = second_run.artifact(CACHE_LOOKUP, "cache")["metadata"]
    assert cache["found"] == 1
    assert cache["source_uri"] == first.artifact(features, "feature_cache")["uri"]
    # Unchanged images: ExampleGen is a cache hit (after its driver re-ran).
    assert second_run.tasks[_task_of(doc, "image_example_gen.Executor")].state == "CACHED"
    guard = second_run.artifact(_task_of(doc, "label_guard.Executor"), "label_check")
    with open(os.path.join(guard["uri"], "label_check.json")) as f:
        assert json.load(f)["baseline_model"] == baseline["uri"]
    # BottleneckGen follows the pointer to run 1's FeatureCache, so it runs
    # again, but computes no feature: every image is a cache hit.
    assert second_run.tasks[features].state == "SUCCEEDED"
    meta = second_run.artifact(features, "bottlenecks")["metadata"]
    assert meta["reused_cache"] == 1 and meta["computed"] == 0 and meta["cache_hits"] > 0
    assert second_run.tasks[trainer].state == "SUCCEEDED"
    # The Evaluator ran again, this time with run 1's model as its baseline.
    assert second_run.tasks[EVALUATOR].state == "SUCCEEDED"
    blessing = second_run.artifact(EVALUATOR, "blessing")["metadata"]
    assert blessing["baseline_model_id"] == baseline["name"]
    assert blessing["blessed"] == 1.0
    summary = evaluation.summarize(second_run.artifact(EVALUATOR, "evaluation")["uri"], CLASSES)
    assert summary["baseline_accuracy"] is not None and summary["validation_ok"]
    # A TFLite model pushed as version 2; both runs' records are in the registry.
    pushed = second_run.artifact(_task_of(doc, "tflite_pusher.Executor"), "pushed_model")
    assert pushed["metadata"]["pushed"] == 1.0 and pushed["metadata"]["pushed_version"] == 2
    assert sorted(os.listdir(config.serving_dir)) == ["1", "2"]
    for kind in previous_artifacts.KINDS:
        assert len(previous_artifacts.records(kfp["registry"], kind)) == 2
