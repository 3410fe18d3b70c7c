"""The compiled pipeline.yaml for open-source KFP (``--target kfp``: registry
lookups, no resolver task), executed the way the open-source KFP v2 backend
would (kubeflow.local_launcher, backend "kfp": untyped inputs read back from
MLMD by id, an executor-logs output on every task, no pre-cache hook, Argo's
task-name rule, the backend's cache key; see test_kfp_backend.py).

  run-1  compile with caching on, run every task from the spec (TFX's
         executors through kubeflow.executor_entrypoint in subprocesses, real
         MobileNet v1 weights, 3 emoji classes): the registry is empty, so both
         lookups pass on an empty artifact (found=0), the Evaluator has no
         baseline and the value threshold decides; a TFLite model is pushed, the
         blessed model and the feature cache are recorded in
         <pipeline_root>/_registry/.
  run-same  the same images again, the same spec: ChangeCheck finds run-1's
         record (same examples, settings, code, baseline and versions), so
         its condition is false for every later task: the driver skips those
         whose inputs are ready and Argo omits the rest. Only ImageExampleGen
         and ChangeCheck run; nothing is pushed or recorded.
  run-2  one new image per class, the same spec (new images in known classes
         need no recompile), submitted with another pipeline root (its
         artifacts go there; the registry compiled in stays the one read and
         written): ImageExampleGen (never cached on this backend) sees them,
         the lookups (never cached) find run-1's blessed model (copied into
         their output) and FeatureCache (a pointer), so only the new images'
         features are computed and the Evaluator compares with run-1's model.

The Vertex form (resolver tasks) is checked at compile level in
test_kubeflow_compile.py; the launcher's resolver emulation in
test_kubeflow_local_launcher.py.
"""

import json
import os

import numpy as np
import pytest

from components import change_check, previous_artifacts
from conftest import copy_subset, eval_split, tflite_probabilities

pytestmark = pytest.mark.slow

CLASSES = ["flags", "food_and_drink", "smileys_and_emotion"]
IMAGE = "registry.example/retrain:e2e"
BASELINE_LOOKUP, CACHE_LOOKUP = "latest-blessed-model-lookup", "latest-feature-cache-lookup"
PER_CLASS = 15
EVALUATOR = "Evaluator"
OTHER_ROOT = "other_pipeline_root"  # run 2's, under the fixture's folder


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
    images = copy_subset(emoji_root, tmp / "images", CLASSES, per_class=PER_CLASS)
    config = preflight.scan(PipelineConfig(
        images=str(images), workdir=str(tmp), epochs=40, tflite_variants=("float32",),
        enable_cache=True))
    config = runner.kubeflow_config(config, str(tmp / "pipeline_root"), str(tmp / "serving"),
                                    target="kfp")
    assert config.lookup == "registry"
    spec = runner.compile_pipeline(config, str(tmp / "pipeline.yaml"), IMAGE)
    first = LocalLauncher(spec, config.pipeline_root, backend="kfp", max_parallel=2).run("run-1")
    registry = previous_artifacts.registry_uri(config.pipeline_root, config.pipeline_name)
    # What run 1 left for run 2 (read now: run 2 adds its own records).
    recorded = {kind: [json.load(open(p)) for p in previous_artifacts.records(registry, kind)]
                for kind in (*previous_artifacts.KINDS, change_check.RUN_FINGERPRINT)}
    with open(spec) as f:
        doc = yaml.safe_load(f)
    return {"spec": spec, "doc": doc, "config": config, "first": first, "tmp": tmp,
            "registry": registry, "recorded": recorded}


@pytest.fixture(scope="module")
def unchanged_run(kfp):
    """The same images and spec again, as a schedule would start it (before run 2)."""
    from kubeflow.local_launcher import LocalLauncher
    return LocalLauncher(kfp["spec"], kfp["config"].pipeline_root, backend="kfp",
                         max_parallel=2).run("run-same")


@pytest.fixture(scope="module")
def second_run(kfp, emoji_root, unchanged_run):
    import shutil
    from kubeflow.local_launcher import LocalLauncher
    for c in CLASSES:  # one image per class that run 1 did not see
        new = sorted((emoji_root / c).iterdir())[PER_CLASS]
        shutil.copy(new, kfp["tmp"] / "images" / c / new.name)
    # Caching as compiled (on, except for the lookups and ImageExampleGen), as
    # `retrain submit` sends it; run 1's pipeline.yaml as it is (no recompile), with
    # another pipeline root, as `retrain submit --pipeline-root` would pass it.
    return LocalLauncher(kfp["spec"], str(kfp["tmp"] / OTHER_ROOT), backend="kfp",
                         max_parallel=2).run("run-2")


def test_the_spec_has_no_resolver_task(kfp):
    executors = kfp["doc"]["deploymentSpec"]["executors"].values()
    assert all(set(e) <= {"container", "importer"} for e in executors)
    tasks = kfp["doc"]["root"]["dag"]["tasks"]
    # A cache hit would be a stale answer: the registry, or (no pre-cache hook
    # on this backend) the image folder, is not in the cache key.
    for task in (BASELINE_LOOKUP, CACHE_LOOKUP, "ImageExampleGen"):
        assert "cachingOptions" not in tasks[task]
    assert tasks["Trainer"]["cachingOptions"] == {"enableCache": True}
    container = kfp["doc"]["deploymentSpec"]["executors"]["ImageExampleGen_executor"]["container"]
    assert container["command"] == ["python", "-m", "kubeflow.executor_entrypoint"]


def test_every_task_of_the_spec_ran(kfp):
    first, doc = kfp["first"], kfp["doc"]
    assert set(first.tasks) == set(doc["root"]["dag"]["tasks"])
    for name, task in first.tasks.items():
        assert task.state == "SUCCEEDED", name
        # Every task got the executor-logs output the driver adds since KFP 2.5.
        with open(task.outputs["executor-logs"][0]["uri"]) as f:
            assert f.read(), name
        for key, artifacts in task.outputs.items():
            if key != "executor-logs":
                assert os.path.isdir(artifacts[0]["uri"]), (name, key)
    # An empty registry: ChangeCheck finds no record, both lookups pass on "none".
    assert first.artifact("change-check", "result")["metadata"]["changed"] == 1.0
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


def test_a_rerun_with_the_same_images_ends_early_and_pushes_nothing(kfp, unchanged_run):
    from kubeflow.kfp_conditions import OMITTED, SKIPPED
    config, tasks = kfp["config"], kfp["doc"]["root"]["dag"]["tasks"]
    states = {n: t.state for n, t in unchanged_run.tasks.items()}
    assert set(states) == set(tasks)
    assert {n for n, s in states.items() if s == "SUCCEEDED"} == {"ImageExampleGen", "change-check"}
    # Skipped by its driver: inputs ready, condition false. Omitted: after a skipped task.
    ready = {n for n, t in tasks.items() if set(t.get("dependentTasks", [])) <= {"ImageExampleGen", "change-check"}}
    assert {n for n, s in states.items() if s == SKIPPED} == ready - {"ImageExampleGen", "change-check"}
    assert {"StatisticsGen", BASELINE_LOOKUP, CACHE_LOOKUP} <= ready
    assert {n for n, s in states.items() if s == OMITTED} == set(tasks) - ready
    assert {"Trainer", "TFLitePusher", "record-run-fingerprint"} <= set(tasks) - ready
    # Why, on ChangeCheck's output (the KFP UI shows an artifact's metadata).
    result = unchanged_run.artifact("change-check", "result")["metadata"]
    assert result["changed"] == 0.0 and result["since_run"] == "run-1"
    assert result["reason"].startswith(f"no new images since run run-1: same {3 * PER_CLASS} images")
    # Nothing pushed, nothing recorded; no skipped task left a folder.
    assert sorted(os.listdir(config.serving_dir)) == ["1"]
    for kind, records in kfp["recorded"].items():
        assert len(previous_artifacts.records(kfp["registry"], kind)) == len(records) == 1, kind
    run_dir = os.path.join(config.pipeline_root, config.pipeline_name, "run-same")
    assert sorted(os.listdir(run_dir)) == ["ImageExampleGen", "change-check"]


def test_first_run_records_its_blessed_model_and_feature_cache(kfp):
    first, doc, recorded = kfp["first"], kfp["doc"], kfp["recorded"]
    model = first.artifact(_task_of(doc, "trainer_component.TrainerExecutor"), "model")
    cache = first.artifact(_task_of(doc, "bottleneck_gen.Executor"), "feature_cache")
    assert [r["uri"] for r in recorded["blessed_model"]] == [model["uri"]]
    assert [r["uri"] for r in recorded["feature_cache"]] == [cache["uri"]]
    assert recorded["feature_cache"][0]["namespace"] == cache["metadata"]["namespace"]


def test_first_run_pushes_a_working_tflite_model(kfp):
    from components.tflite.variants import FILE_NAMES
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
        recorded = json.load(f)
    # TF's interpreter on the pushed file scores run 1's eval split as the Evaluator
    # (SavedModel) did, to within one near-tie example, and as the export measured.
    examples = first.artifact("ImageExampleGen", "examples")["uri"]
    eval_images = eval_split(examples)
    assert len(eval_images) == recorded["tflite"]["eval_examples"] > 0
    correct = 0
    for data, label in eval_images:
        probabilities = tflite_probabilities(os.path.join(version, FILE_NAMES["float32"]), data)
        assert probabilities.shape == (3,) and abs(float(np.sum(probabilities)) - 1.0) < 1e-3
        correct += int(np.argmax(probabilities) == label)
    accuracy = correct / len(eval_images)
    assert accuracy == pytest.approx(recorded["tflite"]["parity"]["float32"]["accuracy"], abs=1e-9)
    assert abs(accuracy - recorded["evaluation"]["accuracy"]) <= 1 / len(eval_images) + 1e-9
    # The backend hands TFLiteExport BottleneckGen's bottlenecks read back from MLMD: its
    # parity reference came from the cached features, its accuracy the Evaluator's.
    tflite = first.artifact(_task_of(doc, "tflite.component.Executor"), "tflite_models")["metadata"]
    assert tflite["parity_reference"] == "features", tflite.get("parity_reference_reason")
    assert recorded["tflite"]["reference_accuracy"] == pytest.approx(recorded["evaluation"]["accuracy"], abs=1e-6)


def test_second_run_uses_the_first_runs_blessed_model_and_feature_cache(kfp, second_run):
    from components import evaluation
    first, doc, config = kfp["first"], kfp["doc"], kfp["config"]
    trainer = _task_of(doc, "trainer_component.TrainerExecutor")
    features = _task_of(doc, "bottleneck_gen.Executor")
    model = first.artifact(trainer, "model")
    # New images after an early exit: a full run.
    reason = second_run.artifact("change-check", "result")["metadata"]["reason"]
    assert reason == "images changed since run run-1"
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
    # ExampleGen ran again (the shim ran its driver: span and fingerprint) and
    # saw the 3 new images.
    example_gen = _task_of(doc, "image_example_gen.Executor")
    assert second_run.tasks[example_gen].state == "SUCCEEDED"
    examples = second_run.artifact(example_gen, "examples")["metadata"]
    assert "num_files:48," in examples["input_fingerprint"]  # 45 + 3 images
    before = first.artifact(example_gen, "examples")["metadata"]
    counts = [sum(m[k] for k in m if k.startswith("split_count_")) for m in (before, examples)]
    assert counts == [3 * PER_CLASS, 3 * PER_CLASS + 3]
    guard = second_run.artifact(_task_of(doc, "label_guard.Executor"), "label_check")
    with open(os.path.join(guard["uri"], "label_check.json")) as f:
        assert json.load(f)["baseline_model"] == baseline["uri"]
    # BottleneckGen follows the pointer to run 1's FeatureCache: it computes
    # the new images' features only.
    assert second_run.tasks[features].state == "SUCCEEDED"
    meta = second_run.artifact(features, "bottlenecks")["metadata"]
    assert meta["reused_cache"] == 1 and meta["computed"] == 3 and meta["cache_hits"] > 0
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
    for kind in (*previous_artifacts.KINDS, change_check.RUN_FINGERPRINT):
        assert len(previous_artifacts.records(kfp["registry"], kind)) == 2
    # Run 2's artifacts went under the root it was given; its registry records did
    # not (docs/kubeflow.md: the registry location is compiled in).
    other = str(kfp["tmp"] / OTHER_ROOT)
    assert second_run.artifact(trainer, "model")["uri"].startswith(other + os.sep)
    assert not kfp["registry"].startswith(other)
    assert not os.path.exists(previous_artifacts.registry_uri(other, config.pipeline_name))


def _lookup_baseline(registry, tmp):
    """What the next run's baseline lookup task would pass on (the real executor)."""
    from tfx.types import standard_artifacts
    out = standard_artifacts.Model()
    out.uri = str(tmp)
    previous_artifacts.LookupExecutor().Do(
        {}, {"model": [out]}, {"kind": previous_artifacts.BLESSED_MODEL, "registry": registry})
    return out


def test_bless_and_reset_write_registry_records_the_lookup_follows(kfp, second_run, capsys):
    """`retrain bless --pipeline-root`: the registry, not MLMD, is what Kubeflow runs read."""
    from pipeline import cli
    config, registry, tmp = kfp["config"], kfp["registry"], kfp["tmp"]
    trainer = _task_of(kfp["doc"], "trainer_component.TrainerExecutor")
    v1_model = kfp["first"].artifact(trainer, "model")["uri"]
    v2_model = second_run.artifact(trainer, "model")["uri"]
    root = ["--pipeline-root", config.pipeline_root, "--serving-dir", config.serving_dir]
    assert _lookup_baseline(registry, tmp / "l0").get_string_custom_property("source_uri") == v2_model

    assert cli.main(["bless", *root, "--version", "1", "--reason", "v2 misbehaves", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["version"] == 1 and result["model_uri"] == v1_model
    looked_up = _lookup_baseline(registry, tmp / "l1")
    assert looked_up.get_int_custom_property("found") == 1
    assert looked_up.get_string_custom_property("source_uri") == v1_model
    assert os.path.isfile(tmp / "l1" / "Format-Serving" / "saved_model.pb")

    assert cli.main(["bless", *root, "--reset", "--reason", "new label space"]) == 0
    capsys.readouterr()
    assert _lookup_baseline(registry, tmp / "l2").get_int_custom_property("found") == 0
    with open(previous_artifacts.records(registry, previous_artifacts.BLESSED_MODEL)[-1]) as f:
        reset = json.load(f)
    assert reset["reset"] is True and reset["reason"] == "new label space" and reset["user"]

    assert cli.main(["bless", *root, "--version", "7"]) == 2
    assert "no pushed version 7" in capsys.readouterr().err
    empty = ["--pipeline-root", str(tmp / "empty-root")]
    assert cli.main(["bless", *empty, "--reset"]) == 2
    assert "nothing to reset" in capsys.readouterr().err
