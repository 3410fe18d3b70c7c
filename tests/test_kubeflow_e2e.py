"""The compiled pipeline.yaml, executed the way KFP's launcher would (kubeflow.local_launcher).

  run-1  compile, run every task from the spec (TFX's kubeflow_v2_run_executor in
         subprocesses, real MobileNet v1 weights, 3 emoji classes): nothing is
         blessed yet, so the value threshold decides; a TFLite model is pushed.
  run-2  the same spec again with KFP caching on: the ExampleGen driver re-runs
         (same files, same fingerprint: cache hit), the baseline resolver finds
         run-1's blessed model in the metadata, and the Evaluator, which ran
         anew, compared against it.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import copy_subset

pytestmark = pytest.mark.slow

CLASSES = ["flags", "food_and_drink", "smileys_and_emotion"]
IMAGE = "registry.example/retrain:e2e"


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
        images=str(images), workdir=str(tmp), epochs=40, tflite_variants=("float32",)))
    config = runner.kubeflow_config(config, str(tmp / "pipeline_root"), str(tmp / "serving"))
    spec = runner.compile_pipeline(config, str(tmp / "pipeline.yaml"), IMAGE)
    first = LocalLauncher(spec, config.pipeline_root, max_parallel=2).run("run-1")
    with open(spec) as f:
        doc = yaml.safe_load(f)
    return {"spec": spec, "doc": doc, "config": config, "first": first, "tmp": tmp}


@pytest.fixture(scope="module")
def second_run(kfp):
    from kubeflow.local_launcher import LocalLauncher
    return LocalLauncher(kfp["spec"], kfp["config"].pipeline_root, max_parallel=2,
                         enable_caching=True).run("run-2")


def test_every_task_of_the_spec_ran(kfp):
    first, doc = kfp["first"], kfp["doc"]
    assert set(first.tasks) == set(doc["root"]["dag"]["tasks"])
    for name, task in first.tasks.items():
        if task.state == "RESOLVED":  # nothing blessed before the first run
            assert all(not found for found in task.outputs.values()), name
        else:
            assert task.state == "SUCCEEDED", name
            for key, artifacts in task.outputs.items():
                assert os.path.isdir(artifacts[0]["uri"]), (name, key)


def test_first_run_pushes_a_working_tflite_model(kfp):
    from components import preprocessing, tflite_export
    first, doc = kfp["first"], kfp["doc"]
    blessing = first.artifact(_task_of(doc, "evaluator.executor.Executor"), "blessing")
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


def test_second_run_resolves_the_first_runs_blessed_model_as_baseline(kfp, second_run):
    first, doc = kfp["first"], kfp["doc"]
    trainer = _task_of(doc, "trainer.executor.GenericExecutor")
    evaluator = _task_of(doc, "evaluator.executor.Executor")
    model = first.artifact(trainer, "model")
    resolved = [t.outputs["model"][0] for n, t in second_run.tasks.items()
                if t.state == "RESOLVED" and t.outputs.get("model")]
    assert [a["name"] for a in resolved] == [model["name"]]
    # Unchanged images: ExampleGen is a cache hit (after its driver re-ran).
    assert second_run.tasks[_task_of(doc, "image_example_gen.Executor")].state == "CACHED"
    # BottleneckGen now gets run 1's FeatureCache through the other resolver, so
    # it runs again, but computes no feature: every image is a cache hit.
    features = _task_of(doc, "bottleneck_gen.Executor")
    assert second_run.tasks[features].state == "SUCCEEDED"
    meta = second_run.artifact(features, "bottlenecks")["metadata"]
    assert meta["reused_cache"] == 1 and meta["computed"] == 0 and meta["cache_hits"] > 0
    assert second_run.tasks[trainer].state == "SUCCEEDED"
    # The Evaluator ran again, this time with a baseline.
    assert second_run.tasks[evaluator].state == "SUCCEEDED"
    blessing = second_run.artifact(evaluator, "blessing")["metadata"]
    assert blessing["baseline_model_id"] == model["name"]
    assert blessing["blessed"] == 1.0  # the same model as its baseline: no drop
    assert sorted(os.listdir(kfp["config"].serving_dir)) == ["1", "2"]
