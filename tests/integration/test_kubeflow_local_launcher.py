"""kubeflow.local_launcher on small specs: container tasks, caching, failures,
and TFX-compiled importer and resolver nodes (no TFX executor runs here: fast).

The open-source backend's own rules (untyped inputs, executor-logs, MLMD round
trip, cache key) are tested in test_kfp_backend.py; resolver tasks exist on
Vertex only, so those tests use ``backend="vertex"``."""

import json
import os
import re

import pytest
import yaml

from kubeflow import kfp_backend
from kubeflow.local_launcher import LocalLauncher, TaskFailed
from kubeflow.local_metadata import LocalMetadata, NotEmulated

# A stand-in executor: reads the ExecutorInput from argv, writes a file into its
# output artifact and reports metadata through the ExecutorOutput file.
MAKE = """
import json, os, sys
ei = json.loads(sys.argv[1])
text = ei["inputs"]["parameterValues"]["text"]
out = ei["outputs"]["artifacts"]["data"]["artifacts"][0]
assert sys.argv[2] == out["uri"], sys.argv[2]
open(os.path.join(out["uri"], "data.txt"), "w").write(text)
out["metadata"] = {"length": len(text)}
with open(ei["outputs"]["outputFile"], "w") as f:
    json.dump({"artifacts": {"data": {"artifacts": [out]}}}, f)
"""
USE = """
import json, os, sys
ei = json.loads(sys.argv[1])
data = ei["inputs"]["artifacts"]["data"]["artifacts"][0]
assert data["metadata"]["length"] == 5, data
text = open(os.path.join(data["uri"], "data.txt")).read()
out = ei["outputs"]["artifacts"]["result"]["artifacts"][0]
open(os.path.join(out["uri"], "result.txt"), "w").write(text.upper())
"""
DATASET = {"artifactType": {"schemaTitle": "system.Dataset"}}


def _toy_spec(tmp_path, make_script=MAKE, make_args=None, extra_task=None):
    spec = {
        "pipelineInfo": {"name": "toy"}, "schemaVersion": "2.1.0", "sdkVersion": "test",
        "root": {"dag": {"tasks": {
            "make": {"taskInfo": {"name": "make"}, "componentRef": {"name": "make"},
                     "cachingOptions": {"enableCache": True},
                     "inputs": {"parameters": {"text": {"runtimeValue": {"constant": "hello"}}}}},
            "use": {"taskInfo": {"name": "use"}, "componentRef": {"name": "use"},
                    "dependentTasks": ["make"],
                    "inputs": {"artifacts": {"data": {"taskOutputArtifact": {
                        "producerTask": "make", "outputArtifactKey": "data"}}}}},
        }}},
        "components": {
            "make": {"executorLabel": "make_executor",
                     "inputDefinitions": {"parameters": {"text": {"parameterType": "STRING"}}},
                     "outputDefinitions": {"artifacts": {"data": DATASET}}},
            "use": {"executorLabel": "use_executor",
                    "inputDefinitions": {"artifacts": {"data": DATASET}},
                    "outputDefinitions": {"artifacts": {"result": DATASET}}},
        },
        "deploymentSpec": {"executors": {
            "make_executor": {"container": {
                "image": "example/toy:1", "command": ["python", "-c", make_script],
                "args": make_args or ["{{$}}", "{{$.outputs.artifacts['data'].uri}}"]}},
            "use_executor": {"container": {
                "image": "example/toy:1", "command": ["python", "-c", USE], "args": ["{{$}}"]}},
        }},
    }
    if extra_task:
        extra_task(spec)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _quiet(_msg):
    pass


def test_container_tasks_pass_artifacts_and_metadata(tmp_path):
    root = tmp_path / "root"
    run = LocalLauncher(_toy_spec(tmp_path), str(root), backend="vertex", log=_quiet).run("run-1")
    assert {n: t.state for n, t in run.tasks.items()} == {"make": "SUCCEEDED", "use": "SUCCEEDED"}
    data = run.artifact("make", "data")
    assert data["uri"] == str(root / "toy" / "run-1" / "make" / "data")
    assert data["metadata"] == {"length": 5}
    result = run.artifact("use", "result")
    assert (root / "toy" / "run-1" / "use" / "result" / "result.txt").read_text() == "HELLO"
    assert result["name"] != data["name"]


def test_open_source_backend_gives_each_execution_its_own_folder(tmp_path):
    root = tmp_path / "root"
    run = LocalLauncher(_toy_spec(tmp_path), str(root), log=_quiet).run("run-1")
    data, result = run.artifact("make", "data"), run.artifact("use", "result")
    # driver.go provisionOutputs: <root>/<pipeline>/<run>/<task>/<uuid>/<key>
    task_dir, key = os.path.split(data["uri"])
    assert key == "data" and os.path.dirname(task_dir) == str(root / "toy" / "run-1" / "make")
    assert re.fullmatch(r"[0-9a-f-]{36}", os.path.basename(task_dir))
    with open(os.path.join(result["uri"], "result.txt")) as f:
        assert f.read() == "HELLO"
    # Stored as a double in MLMD, read back as a number, with the key as display_name.
    assert data["metadata"] == {"length": 5.0, "display_name": "data",
                                "store_session_info": kfp_backend.SESSION_INFO}


def test_cache_reuses_outputs_of_an_identical_task(tmp_path):
    spec, root = _toy_spec(tmp_path), str(tmp_path / "root")
    first = LocalLauncher(spec, root, log=_quiet).run("run-1")
    second = LocalLauncher(spec, root, log=_quiet).run("run-2")
    # `make` is compiled with caching on, `use` is not.
    assert second.tasks["make"].state == "CACHED" and second.tasks["use"].state == "SUCCEEDED"
    assert second.artifact("make", "data") == first.artifact("make", "data")
    third = LocalLauncher(spec, root, enable_caching=False, log=_quiet).run("run-3")
    assert third.tasks["make"].state == "SUCCEEDED"


def test_failed_task_is_named_with_its_log_and_stops_the_run(tmp_path):
    spec = _toy_spec(tmp_path, make_script="import sys; print('boom: bad input'); sys.exit(3)")
    with pytest.raises(TaskFailed) as err:
        LocalLauncher(spec, str(tmp_path / "root"), log=_quiet).run("run-1")
    message = str(err.value)
    assert "task make (executor) exited with 3" in message and "boom: bad input" in message
    assert not (tmp_path / "root" / "toy" / "run-1" / "use").exists()


def _conditional(condition):
    """`use` runs only if `condition` holds; `after` needs `use` (as TFX adds dependentTasks)."""
    def edit(spec):
        tasks = spec["root"]["dag"]["tasks"]
        tasks["use"]["triggerPolicy"] = {"condition": condition}
        tasks["after"] = {**tasks["use"], "taskInfo": {"name": "after"}, "dependentTasks": ["use", "make"]}
        del tasks["after"]["triggerPolicy"]
    return edit


LENGTH = "inputs.artifacts['data'].artifacts[0].metadata['length']"


@pytest.mark.parametrize("condition, runs", [(f"({LENGTH} == 5.0)", True), (f"({LENGTH} == 4.0)", False),
                                             (f"!({LENGTH} > 4.5)", False)])
def test_a_false_condition_skips_the_task_and_omits_those_after_it(tmp_path, condition, runs):
    """driver.go Container: the condition sees `make`'s metadata as read back from MLMD
    (a double); false skips the executor, Argo omits `after`; the run succeeds."""
    spec, root = _toy_spec(tmp_path, extra_task=_conditional(condition)), tmp_path / "root"
    run = LocalLauncher(spec, str(root), log=_quiet).run("run-1")
    states = {n: t.state for n, t in run.tasks.items()}
    assert states == ({"make": "SUCCEEDED", "use": "SUCCEEDED", "after": "SUCCEEDED"} if runs else
                      {"make": "SUCCEEDED", "use": "SKIPPED", "after": "OMITTED"})
    assert os.path.isdir(root / "toy" / "run-1" / "use") is runs  # no outputs provisioned
    assert (run.artifact("use", "result") is not None) is runs


def test_a_condition_the_driver_cannot_evaluate_fails_the_run(tmp_path):
    spec = _toy_spec(tmp_path, extra_task=_conditional(f"{LENGTH} = 5.0"))
    with pytest.raises(TaskFailed, match="task use: driver failed on triggerPolicy.condition: Syntax error"):
        LocalLauncher(spec, str(tmp_path / "r"), log=_quiet).run()
    spec = _toy_spec(tmp_path, extra_task=_conditional("inputs.artifacts['data'].artifacts[0].metadata['x'] == 1.0"))
    with pytest.raises(TaskFailed, match="evaluation error: no such key: x"):
        LocalLauncher(spec, str(tmp_path / "r2"), log=_quiet).run()
    assert not list((tmp_path / "r2" / "toy").glob("*/use"))  # its executor never started


def test_what_is_not_emulated_is_named(tmp_path):
    spec = _toy_spec(tmp_path, extra_task=_conditional("1.0 == 1.0"))
    with pytest.raises(NotEmulated, match="use: triggerPolicy.condition is emulated for the open-source"):
        LocalLauncher(spec, str(tmp_path / "r"), backend="vertex", log=_quiet).run()
    spec = _toy_spec(tmp_path, make_args=["{{$.pipeline_job_name}}"])
    with pytest.raises(NotEmulated, match=r"placeholder \{\{\$\.pipeline_job_name\}\}"):
        LocalLauncher(spec, str(tmp_path / "r2"), log=_quiet).run()


def test_rejects_a_file_that_is_no_pipeline_spec(tmp_path):
    path = tmp_path / "not.yaml"
    path.write_text("apiVersion: argoproj.io/v1alpha1\nkind: Workflow\n")
    with pytest.raises(ValueError, match="not a KFP v2 pipeline spec"):
        LocalLauncher(str(path), str(tmp_path / "root"))


# ------------------------------------------------------- TFX importer / resolvers

@pytest.fixture(scope="module")
def resolver_spec(tmp_path_factory):
    """Importer + LatestArtifactStrategy + LatestBlessedModelStrategy, compiled by TFX."""
    from tfx import v1 as tfx
    from tfx.types import standard_artifacts as sa
    from kubeflow import runner

    tmp = tmp_path_factory.mktemp("resolvers")
    data = tmp / "examples"
    (data / "Split-train").mkdir(parents=True)
    importer = tfx.dsl.Importer(source_uri=str(data), artifact_type=sa.Examples,
                                properties={"split_names": '["train"]'}).with_id("import_examples")
    latest = tfx.dsl.Resolver(strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
                              examples=tfx.dsl.Channel(type=sa.Examples)).with_id("latest_examples")
    blessed = tfx.dsl.Resolver(strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
                               model=tfx.dsl.Channel(type=sa.Model),
                               model_blessing=tfx.dsl.Channel(type=sa.ModelBlessing)).with_id("baseline")
    runner_cls, config_cls = runner.runner_classes()
    runner_cls(config_cls(default_image="example/unused:1", use_pipeline_spec_2_1=True),
               output_dir=str(tmp), output_filename="resolvers.yaml").run(tfx.dsl.Pipeline(
                   pipeline_name="toy-resolvers", pipeline_root=str(tmp / "root"),
                   components=[importer, latest, blessed]))
    return str(tmp / "resolvers.yaml"), str(data)


def test_importer_registers_once_and_latest_artifact_resolver_finds_it(tmp_path, resolver_spec):
    spec, data = resolver_spec
    root = str(tmp_path / "root")
    first = LocalLauncher(spec, root, backend="vertex", max_parallel=1, log=_quiet).run("run-1")
    imported = first.artifact("import_examples", "result")
    assert imported["uri"] == data and imported["metadata"]["split_names"] == '["train"]'
    assert first.tasks["import_examples"].state == "IMPORTED"
    second = LocalLauncher(spec, root, backend="vertex", log=_quiet).run("run-2")
    # reimport is off: the same artifact again, and it is the latest Examples.
    assert second.artifact("import_examples", "result") == imported
    assert second.artifact("latest_examples", "examples") == imported


def test_latest_blessed_model_resolver_picks_the_newest_blessed_model(tmp_path, resolver_spec):
    spec, _ = resolver_spec
    root = str(tmp_path / "root")
    doc = yaml.safe_load(open(spec))
    types = {key: defn["artifactType"] for comp in doc["components"].values()
             for key, defn in comp.get("outputDefinitions", {}).get("artifacts", {}).items()}
    with pytest.raises(kfp_backend.BackendError, match=kfp_backend.RESOLVER_REFUSED):
        LocalLauncher(spec, root, log=_quiet)  # compiler/visitor.go refuses the spec
    empty = LocalLauncher(spec, root, backend="vertex", log=_quiet).run("run-0")
    assert empty.tasks["baseline-model-resolver"].outputs == {"model": []}

    store = LocalMetadata(root)
    for i, blessed in enumerate([1, 1, 0]):  # run 3's model was refused
        model = {"name": f"models/{i}", "type": types["model"], "uri": f"/m/{i}", "metadata": {}}
        store.record_artifact("toy-resolvers", model)
        store.record_artifact("toy-resolvers", {
            "name": f"blessings/{i}", "type": types["model_blessing"], "uri": f"/b/{i}",
            "metadata": {"blessed": float(blessed), "current_model_id": model["name"]}})
    store.record_artifact("other-pipeline", {  # another MLMD context: never seen
        "name": "blessings/x", "type": types["model_blessing"], "uri": "/b/x",
        "metadata": {"blessed": 1.0, "current_model_id": "models/x"}})
    run = LocalLauncher(spec, root, backend="vertex", log=_quiet).run("run-4")
    assert run.artifact("baseline-model-blessing-resolver", "model_blessing")["name"] == "blessings/1"
    assert run.artifact("baseline-model-resolver", "model")["name"] == "models/1"


def test_resolver_filters_outside_the_emulated_grammar_are_named(tmp_path):
    store = LocalMetadata(str(tmp_path))
    with pytest.raises(NotEmulated, match="create_time"):
        store.resolve("p", 'schema_title="tfx.Model" AND create_time>5', {})
    with pytest.raises(NotEmulated, match="field not emulated: labels.x"):
        store.resolve("p", 'labels.x="y"', {})
    assert store.resolve("p", 'schema_title="tfx.Model" AND state=LIVE', {}) == []


def test_cli_entry_point_reports_states(tmp_path, capsys):
    from kubeflow import local_launcher
    assert local_launcher.main([_toy_spec(tmp_path), "--pipeline-root", str(tmp_path / "r")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "make": "SUCCEEDED", "use": "SUCCEEDED"}
