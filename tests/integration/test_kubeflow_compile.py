"""`retrain compile`: the local pipeline as a KFP v2 spec, and the image it names."""

import importlib
import json
import re
import shlex
import sys
import types
from pathlib import Path

import pytest
import yaml
from tfx.types.artifact import Artifact

from conftest import retrain_kubeflow as _retrain, png_bytes
from kubeflow import runner

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.example/retrain:1.0"
ROOT = "gs://bucket/retrain"


def _images(root: Path, classes=("cat", "dog"), n=12) -> Path:
    for label in classes:
        (root / label).mkdir(parents=True)
        for i in range(n):
            (root / label / f"{i}.png").write_bytes(png_bytes(hash((label, i)) % 10_000))
    return root


def _compile(tmp_path_factory, target):
    from pipeline import preflight
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_components
    tmp = tmp_path_factory.mktemp(f"compile-{target}")
    config = preflight.scan(PipelineConfig(images=str(_images(tmp / "images")), workdir=str(tmp)))
    config = runner.kubeflow_config(config, ROOT, beam_args=[
        "--direct_running_mode=multi_processing", "--direct_num_workers=2"], target=target)
    path = runner.compile_pipeline(config, str(tmp / "pipeline.yaml"), IMAGE)
    doc = yaml.safe_load(open(path))
    return {"path": path, "spec": runner.load_spec(path), "doc": doc, "config": config,
            "nodes": create_components(config)}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """--target kfp (the default): registry lookups, for open-source KFP."""
    return _compile(tmp_path_factory, "kfp")


@pytest.fixture(scope="module")
def compiled_vertex(tmp_path_factory):
    """--target vertex: TFX Resolver nodes, compiled to resolver tasks."""
    return _compile(tmp_path_factory, "vertex")


def _source(artifact):  # (producer task, output key) of a task's input artifact
    ref = artifact.get("taskOutputArtifact", {})
    return ref.get("producerTask"), ref.get("outputArtifactKey")


def _executor(doc, task):
    label = doc["components"][doc["root"]["dag"]["tasks"][task]["componentRef"]["name"]]["executorLabel"]
    return doc["deploymentSpec"]["executors"][label]


def test_yaml_is_a_kfp_v2_pipeline_spec(compiled):
    spec = compiled["spec"]
    assert compiled["path"].endswith(".yaml")
    assert spec.schema_version == "2.1.0" and spec.sdk_version == "tfx-1.16.0"
    assert spec.pipeline_info.name == compiled["config"].pipeline_name
    assert spec.default_pipeline_root == ROOT  # YAML drops runtime config; kept here
    from kfp.client.client import _extract_pipeline_yaml  # what Client.create_run_* reads
    assert _extract_pipeline_yaml(compiled["path"]).pipeline_spec == spec


def test_every_component_is_a_task_with_the_image_and_the_entry_point_shim(compiled):
    from tfx.dsl.components.common.resolver import Resolver
    from tfx.utils import import_utils, name_utils
    doc, tasks = compiled["doc"], compiled["doc"]["root"]["dag"]["tasks"]
    components = [n for n in compiled["nodes"] if not isinstance(n, Resolver)]
    assert len(components) >= 9
    for node in components:
        assert node.id in tasks, f"{node.id} missing from the spec"
        container = _executor(doc, node.id)["container"]
        assert container["image"] == IMAGE
        # TFX's entry point, through the shim that repairs the open-source
        # driver's ExecutorInput (kubeflow/executor_entrypoint.py).
        assert tuple(container["command"]) == runner.SHIM_ENTRYPOINT
        args = container["args"]
        outputs = json.loads(args[args.index("--json_serialized_outputs_spec_args") + 1])
        assert outputs == doc["components"][node.id].get("outputDefinitions", {})
        executor = name_utils.get_full_name(node.executor_spec.executor_class)
        assert args[args.index("--executor_class_path") + 1] == executor
        assert import_utils.import_class_by_path(executor) is node.executor_spec.executor_class
        assert args[args.index("--json_serialized_invocation_args") + 1] == "{{$}}"
        assert args[-2:] == ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    example_gen = _executor(doc, "ImageExampleGen")["container"]
    driver = example_gen["lifecycle"]["preCacheCheck"]
    assert tuple(driver["command"]) == runner.DRIVER_ENTRYPOINT
    # The open-source backend never runs the hook: the shim runs the driver.
    args = example_gen["args"]
    assert args[args.index("--pre_cache_check_module") + 1] == runner.DRIVER_ENTRYPOINT[-1]
    pusher = tasks["TFLitePusher"]["inputs"]["parameters"]["serving_dir"]["runtimeValue"]
    assert pusher["constant"] == f"{ROOT}/serving"


def test_kfp_spec_has_registry_lookups_and_no_resolver_task(compiled):
    from components import previous_artifacts, trainer_component
    from tfx.dsl.components.common.resolver import Resolver
    doc, tasks = compiled["doc"], compiled["doc"]["root"]["dag"]["tasks"]
    assert compiled["config"].lookup == "registry"
    assert not [n for n in compiled["nodes"] if isinstance(n, Resolver)]
    kinds = {label: sorted(e) for label, e in doc["deploymentSpec"]["executors"].items()}
    assert all(k == ["container"] for k in kinds.values()), kinds
    registry = f"{ROOT}/_registry/{compiled['config'].pipeline_name}"
    lookups = {"latest-blessed-model-lookup": "blessed_model", "latest-feature-cache-lookup": "feature_cache"}
    recorders = {"record-blessed-model": {"model": ("Trainer", "model"),
                                          "model_blessing": ("Evaluator", "blessing")},
                 "record-feature-cache": {"feature_cache": ("BottleneckGen", "feature_cache")}}
    # Only the lookups and the recorders know the registry (BottleneckGen does not).
    early_exit = {"change-check", "record-run-fingerprint"}  # test_kfp_spec_ends_early_...
    assert {n for n, t in tasks.items()
            if "registry" in t["inputs"].get("parameters", {})} == {*lookups, *recorders, *early_exit}
    for task in (*lookups, *recorders):  # (caching: test_compiled_caching_is_off_...)
        params = {k: p["runtimeValue"]["constant"] for k, p in tasks[task]["inputs"]["parameters"].items()}
        assert params == {"registry": registry, **({"kind": lookups[task]} if task in lookups else {})}
    # Their readers (each sees "nothing found" as none: test_previous_artifacts), the recorders' inputs.
    readers = {(name, key): _source(a) for name, task in tasks.items()
               for key, a in task["inputs"].get("artifacts", {}).items() if _source(a)[0] in lookups}
    assert readers == {("LabelGuard", "baseline_model"): ("latest-blessed-model-lookup", "model"),
                       ("Evaluator", "baseline_model"): ("latest-blessed-model-lookup", "model"),
                       ("BottleneckGen", "previous_cache"): ("latest-feature-cache-lookup", "cache"),
                       ("Trainer", "base_model"): ("latest-blessed-model-lookup", "model")}
    assert next(n for n in compiled["nodes"] if n.id == "Evaluator").executor_spec.executor_class \
        is previous_artifacts.EvaluatorExecutor
    assert next(n for n in compiled["nodes"] if n.id == "Trainer").executor_spec.executor_class \
        is trainer_component.TrainerExecutor
    for task, inputs in recorders.items():
        assert {k: _source(a) for k, a in tasks[task]["inputs"]["artifacts"].items()
                if not k.startswith("_")} == inputs  # "_change-check.result": the early exit's
    # An unfinished run's blessing is no baseline: recorded once the Pusher is done (issue 17).
    assert "TFLitePusher" in tasks["record-blessed-model"]["dependentTasks"]


def test_kfp_spec_ends_early_when_change_check_finds_nothing_new(compiled, compiled_vertex):
    """tfx.dsl.Cond around every step after ChangeCheck compiles to a triggerPolicy
    condition the open-source driver evaluates (kubeflow/kfp_conditions.py)."""
    from components import change_check, previous_artifacts
    from kubeflow import kfp_conditions
    tasks = compiled["doc"]["root"]["dag"]["tasks"]
    condition = "(inputs.artifacts['_change-check.result'].artifacts[0].metadata['changed'] == 1.0)"
    ungated = {"ImageExampleGen", "change-check"}
    for name, task in tasks.items():
        if name in ungated:
            assert "triggerPolicy" not in task, name
            continue
        assert "change-check" in task["dependentTasks"], name
        key = "change_check" if name == "record-run-fingerprint" else "_change-check.result"
        assert task["triggerPolicy"] == {"condition": condition.replace("_change-check.result", key)}
        assert _source(task["inputs"]["artifacts"][key]) == ("change-check", "result"), name
        for changed, runs in ((1.0, True), (0.0, False)):
            artifact = {"name": "7", "uri": "u", "metadata": {"changed": changed}}
            assert kfp_conditions.triggered(name, task, {key: [artifact]}, {}, oss=True) is runs
    check = tasks["change-check"]
    assert _source(check["inputs"]["artifacts"]["examples"]) == ("ImageExampleGen", "examples")
    params = dict(check["inputs"]["parameters"])
    # force: the pipeline parameter (a one-off `retrain submit --force`), default 0
    # written back into the root (TFX 1.16 drops it), as the backend fills it in.
    assert params.pop("force") == {"componentInputParameter": "force"}
    assert compiled["doc"]["root"]["inputDefinitions"]["parameters"] == {
        "force": {"parameterType": "NUMBER_INTEGER", "defaultValue": 0, "isOptional": True}}
    assert compiled["spec"].root.input_definitions.parameters["force"].default_value.number_value == 0
    params = {k: p["runtimeValue"]["constant"] for k, p in params.items()}
    config = compiled["config"]
    from pipeline import unchanged
    assert params == {"registry": f"{ROOT}/_registry/{config.pipeline_name}",
                      "serving_dir": f"{ROOT}/serving", "settings": unchanged.settings_digest(config)}
    # The inputs are recorded after the whole run: the last steps of each branch
    # (record-blessed-model runs after the Pusher).
    assert {"record-blessed-model", "record-feature-cache", "ExampleValidator"} <= \
        set(tasks["record-run-fingerprint"]["dependentTasks"])
    assert change_check.BLESSED_MODEL == previous_artifacts.BLESSED_MODEL
    # Vertex and the local runner: no gate.
    vertex = compiled_vertex["doc"]["root"]["dag"]["tasks"]
    assert not ({"change-check", "record-run-fingerprint"} & set(vertex))
    assert "inputDefinitions" not in compiled_vertex["doc"]["root"]
    assert not [n for n, t in vertex.items() if "triggerPolicy" in t]


def test_every_task_name_passes_argos_rule(compiled):
    # argo-workflows workflow/validate/validate.go: ^[a-zA-Z0-9][-a-zA-Z0-9]*$, max 128
    # (KFP adds "<name>-driver"; a leading digit fails with `depends`).
    for name in compiled["doc"]["root"]["dag"]["tasks"]:
        assert re.fullmatch(r"[a-zA-Z][-a-zA-Z0-9]*", name) and len(name) + len("-driver") <= 128, name


@pytest.mark.parametrize("name", ["latest_model", "9lives", "dot.name", "a" * 122])
def test_task_names_argo_would_refuse_are_refused_at_compile_time(name):
    doc = {"root": {"dag": {"tasks": {"ok-name": {}, name: {}}}}, "components": {}}
    with pytest.raises(runner.KubeflowError, match="would be refused by Argo"):
        runner.check_task_names(doc)
    runner.check_task_names({"root": {"dag": {"tasks": {"ok-name": {}, "a" * 121: {}}}}})


def test_compiled_caching_is_off_for_the_lookups_and_the_example_gen(tmp_path):
    from pipeline.config import PipelineConfig
    config = runner.kubeflow_config(PipelineConfig(
        images=f"{ROOT}/images", workdir=str(tmp_path), label_names=("a", "b"), enable_cache=True), ROOT)
    doc = yaml.safe_load(open(runner.compile_pipeline(config, str(tmp_path / "p.yaml"), IMAGE)))
    cached = {n for n, t in doc["root"]["dag"]["tasks"].items()
              if t.get("cachingOptions", {}).get("enableCache")}
    # The lookups' answer is in the registry; ImageExampleGen's pre-cache hook,
    # which would key its cache on the images, never runs on open-source KFP.
    assert set(doc["root"]["dag"]["tasks"]) - cached == {
        "latest-blessed-model-lookup", "latest-feature-cache-lookup", "ImageExampleGen"}
    from components import previous_artifacts
    assert runner.LOOKUP_EXECUTOR == f"{previous_artifacts.__name__}.{previous_artifacts.LookupExecutor.__name__}"


def test_a_resolver_task_in_a_kfp_spec_is_refused(compiled_vertex):
    runner.check_executors(compiled_vertex["path"], "resolver")
    with pytest.raises(runner.KubeflowError, match="other than container and importer "
                       r"\(latest_blessed_model_resolver-model-blessing-resolver_executor"):
        runner.check_executors(compiled_vertex["path"], "registry")


def test_latest_blessed_model_resolver_compiles_to_two_queries(compiled_vertex):
    from tfx.dsl.components.common.resolver import RESOLVER_STRATEGY_CLASS, Resolver
    from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
        LatestBlessedModelStrategy)
    compiled = compiled_vertex
    doc, tasks = compiled["doc"], compiled["doc"]["root"]["dag"]["tasks"]
    assert compiled["config"].lookup == "resolver"
    assert not {"record-blessed-model", "record-feature-cache"} & set(tasks) and "registry" not in str(tasks)
    (resolver,) = [n for n in compiled["nodes"] if isinstance(n, Resolver) and
                   n.exec_properties[RESOLVER_STRATEGY_CLASS] is LatestBlessedModelStrategy]
    blessing, model = f"{resolver.id}-model-blessing-resolver", f"{resolver.id}-model-resolver"
    assert _executor(doc, blessing)["resolver"]["outputArtifactQueries"]["model_blessing"]["filter"] == (
        'schema_title="tfx.ModelBlessing" AND state=LIVE AND metadata.blessed.number_value=1')
    query = _executor(doc, model)["resolver"]["outputArtifactQueries"]["model"]["filter"]
    assert query.startswith('schema_title="tfx.Model" AND state=LIVE AND name=')
    assert "metadata['current_model_id']" in query
    assert tasks[model]["inputs"]["artifacts"]["input"]["taskOutputArtifact"]["producerTask"] == blessing
    # Every consumer of the resolver's model reads the second query's output.
    def from_resolver(channel):
        return getattr(channel, "producer_component_id", None) == resolver.id
    consumers = [n for n in compiled["nodes"]
                 if n is not resolver and any(map(from_resolver, n.inputs.values()))]
    assert consumers
    for node in consumers:
        sources = {k: v["taskOutputArtifact"]["producerTask"]
                   for k, v in tasks[node.id]["inputs"]["artifacts"].items()}
        keys = [k for k, c in node.inputs.items() if from_resolver(c)]
        assert all(sources[k] == model for k in keys) and model in tasks[node.id]["dependentTasks"]


# ----------------------------------------------------------------- failing loudly

class Unimportable(Artifact):
    TYPE_NAME = "retrain.Unimportable"  # matches KFP's pattern, but no module `retrain`


class Unqualified(Artifact):
    TYPE_NAME = "Unqualified"


def test_custom_artifact_types_must_import_back_from_their_type_name():
    from tfx.types import standard_artifacts

    def pipeline(cls):
        node = types.SimpleNamespace(id="Guard", inputs={},
                                     outputs={"out": types.SimpleNamespace(type=cls)})
        return types.SimpleNamespace(components=[node])

    runner.check_artifact_types(pipeline(standard_artifacts.Model))
    with pytest.raises(runner.KubeflowError, match=r"Unimportable \(first used by Guard\) has "
                       r"TYPE_NAME 'retrain.Unimportable'"):
        runner.check_artifact_types(pipeline(Unimportable))
    with pytest.raises(runner.KubeflowError, match="'Unqualified': on Kubeflow it must be '<module>.<Class>'"):
        runner.check_artifact_types(pipeline(Unqualified))


def test_resolvers_over_custom_artifact_types_are_refused():
    from tfx import v1 as tfx
    from tfx.types import standard_artifacts

    def pipeline(cls):
        return types.SimpleNamespace(components=[tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
            cache=tfx.dsl.Channel(type=cls)).with_id("latest_cache")])

    runner.check_resolvers(pipeline(standard_artifacts.Examples))
    with pytest.raises(runner.KubeflowError, match=r"resolver latest_cache selects "
                       r"test_kubeflow_compile.Unqualified \(cache\), a custom artifact type"):
        runner.check_resolvers(pipeline(Unqualified))


def test_a_broken_kfp_install_is_an_error_not_a_missing_runner(monkeypatch):
    import tfx.orchestration.kubeflow.v2 as v2
    monkeypatch.setitem(sys.modules, "kfp.pipeline_spec", None)
    monkeypatch.setitem(sys.modules, "kfp.pipeline_spec.pipeline_spec_pb2", None)
    monkeypatch.delitem(sys.modules, "tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner")
    monkeypatch.delattr(v2, "kubeflow_v2_dag_runner")
    with pytest.raises(runner.KubeflowError, match="Kubeflow V2 runner cannot be imported .*kfp==2.5.0"):
        runner.runner_classes()


# ------------------------------------------------------------------------- CLI

def test_cli_compile_for_dataflow(tmp_path, capsys):
    """Also: --class-weights and --max-class-recall-drop reach the spec as `retrain run`
    passes them (one compile for both: each costs seconds of the suite)."""
    out_file = tmp_path / "pipeline.yaml"
    code, out, err = _retrain(
        capsys, "compile", "--output", out_file, "--image", IMAGE, "--pipeline-root", ROOT,
        "--labels", "dog,cat", "--beam-runner", "dataflow", "--dataflow-project", "proj",
        "--dataflow-region", "europe-west4", "--beam-arg=--max_num_workers=4",
        "--class-weights", "balanced", "--max-class-recall-drop", "0.05")
    assert code == 0, err
    assert out.strip() == str(out_file)
    assert err == []  # object-store serving dirs are supported (TFLitePusher marks versions)
    doc = yaml.safe_load(out_file.read_text())
    args = _executor(doc, "Transform")["container"]["args"]
    assert args[-7:] == ["--runner=DataflowRunner", "--project=proj", "--region=europe-west4",
                         f"--temp_location={ROOT}/tmp", f"--sdk_container_image={IMAGE}",
                         "--experiments=use_runner_v2", "--max_num_workers=4"]
    assert "latest-blessed-model-lookup" in doc["root"]["dag"]["tasks"]  # --target kfp, the default
    gen = doc["root"]["dag"]["tasks"]["ImageExampleGen"]["inputs"]["parameters"]
    assert gen["input_base"]["runtimeValue"]["constant"] == f"{ROOT}/images"  # default --images

    def constant(task, name):
        return doc["root"]["dag"]["tasks"][task]["inputs"]["parameters"][name]["runtimeValue"]["constant"]
    assert json.loads(constant("Trainer", "custom_config"))["class_weights"] == "balanced"
    import tensorflow_model_analysis as tfma
    from google.protobuf import json_format

    from components import evaluation
    config = json_format.Parse(constant("Evaluator", "eval_config"), tfma.EvalConfig())
    assert evaluation.gate_thresholds(config)["max_class_recall_drop"] == 0.05


def test_cli_compile_for_vertex_keeps_the_resolvers_and_their_check(tmp_path, capsys, monkeypatch):
    checked = []
    real = runner.check_resolvers
    monkeypatch.setattr(runner, "check_resolvers", lambda p: checked.append(
        sorted(n.id for n in p.components if "resolver" in n.id)) or real(p))
    out_file = tmp_path / "pipeline.yaml"
    code, out, err = _retrain(capsys, "compile", "--output", out_file, "--image", IMAGE,
                              "--pipeline-root", ROOT, "--labels", "dog,cat", "--target", "vertex",
                              "--serving-dir", "/mnt/serving")
    assert code == 0, err
    assert checked == [["latest_blessed_model_resolver", "latest_feature_cache_resolver"]]
    executors = yaml.safe_load(out_file.read_text())["deploymentSpec"]["executors"]
    assert sum("resolver" in e for e in executors.values()) == 3


def test_cli_compile_with_an_s3_secret_writes_a_platform_spec_kfp_reads(tmp_path, capsys):
    out_file = tmp_path / "pipeline.yaml"
    code, _, err = _retrain(capsys, "compile", "--output", out_file, "--image", IMAGE,
                            "--pipeline-root", "s3://bucket/retrain", "--labels", "dog,cat",
                            "--s3-secret", "mlpipeline-minio-artifact",
                            "--s3-endpoint", "http://minio-service.kubeflow:9000")
    assert code == 0, err
    from kfp.client.client import _extract_pipeline_yaml  # what Client.create_run_* sends
    doc = _extract_pipeline_yaml(str(out_file))
    assert doc.pipeline_spec == runner.load_spec(str(out_file))
    from google.protobuf import json_format
    platform = json_format.MessageToDict(doc.platform_spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    labels = set(yaml.safe_load_all(out_file.read_text()).__next__()["deploymentSpec"]["executors"])
    assert set(executors) == labels
    secret = executors["Trainer_executor"]["secretAsEnv"][0]
    assert secret["secretName"] == "mlpipeline-minio-artifact"
    assert {p["envVar"] for p in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    container = json_format.MessageToDict(doc.pipeline_spec)["deploymentSpec"]["executors"][
        "Trainer_executor"]["container"]
    assert container["env"] == [
        {"name": "AWS_ENDPOINT_URL", "value": "http://minio-service.kubeflow:9000"}]


@pytest.mark.parametrize("extra,message", [
    (["--output", "p.json", "--labels", "a,b"], "--output must end with .yaml or .yml"),
    (["--labels", "a,b", "--s3-endpoint", "http://m:9000"], "--s3-endpoint and --s3-region need --s3-secret"),
    (["--labels", "a,b", "--s3-secret", "s", "--s3-secret-keys", "a"], "--s3-secret-keys must be ACCESS,SECRET"),
    (["--labels", "a,b", "--beam-runner", "dataflow"], "needs --dataflow-project and --dataflow-region"),
    (["--labels", "a,b", "--beam-workers", "0"], "--beam-workers must be >= 1"),
    (["--labels", "only"], "--labels needs at least 2 class names"),
    (["--images", "s3://bucket/images"], "cannot list --images from this machine: s3://bucket/images: "
     "cannot reach the S3 endpoint http://127.0.0.1:9 (AWS_ENDPOINT_URL)"),
    (["--labels", "a,b", "--eval-percent", "0"], "eval_percent must be between 1 and 99"),
    # issue 17: NaN/inf in a float flag, a line break in a class name
    (["--labels", "a,b", "--max-accuracy-drop=nan"], "--max-accuracy-drop must be a finite number"),
    (["--labels", "a,b\u2028c"], "--labels: class name 'b\\u2028c' contains a line break (U+2028)"),
])
def test_cli_compile_bad_input(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    # s3://: an endpoint where nothing listens (port 9, discard), whatever this machine's AWS set-up.
    for name, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
                        "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL_S3": "", "S3_ENDPOINT": "",
                        "AWS_REGION": "", "AWS_DEFAULT_REGION": ""}.items():
        monkeypatch.setenv(name, value)  # removed or restored after the test
    argv = ["compile", "--image", IMAGE, "--pipeline-root", ROOT, *extra]
    if "--output" not in extra:
        argv += ["--output", "p.yaml"]
    code, out, err = _retrain(capsys, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("retrain: error: "), err
    assert message in err[0]
    assert not list(tmp_path.iterdir())


def test_cli_compile_lists_local_images(tmp_path, capsys):
    code, _, err = _retrain(capsys, "compile", "--output", tmp_path / "p.yaml", "--image", IMAGE,
                            "--pipeline-root", tmp_path / "root", "--images", tmp_path / "missing")
    assert code == 2 and err == [f"retrain: error: images folder not found: {tmp_path / 'missing'}"]


# ------------------------------------------------------------------ Dockerfile

def _dockerfile():
    text = (REPO / "kubeflow" / "Dockerfile").read_text()
    return re.sub(r"\\\n", " ", text)  # join continued lines


def test_dockerfile_builds_on_the_tfx_image_we_test_with():
    import tfx
    text = _dockerfile()
    base = re.search(r"^ARG TFX_IMAGE=(\S+)$", text, re.M).group(1)
    assert base == f"gcr.io/tfx-oss-public/tfx:{tfx.__version__}" and tfx.__version__ == "1.16.0"
    assert re.search(r"^FROM \$\{TFX_IMAGE\}$", text, re.M)
    env = re.search(r"^ENV (.+)$", text, re.M).group(1)
    assert "TF_USE_LEGACY_KERAS=1" in env.split() and "TFX_RETRAIN_CACHE=/opt/retrain/cache" in env.split()
    assert "-r requirements.lock" in text and "retrain fetch-weights" in text


def test_dockerfile_copies_only_what_exists_and_the_context_keeps():
    text = _dockerfile()
    sources = [shlex.split(line)[:-1] for line in re.findall(r"^COPY (.+)$", text, re.M)]
    sources = [s for group in sources for s in group]
    assert {"requirements.lock", "pyproject.toml", "pipeline", "components", "kubeflow"} <= set(sources)
    ignore = (REPO / "kubeflow" / "Dockerfile.dockerignore").read_text().split()
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such file"
        assert f"!{src}" in ignore, f"{src} is excluded from the build context"
    # Every package the wheel installs is copied (pyproject's package list).
    packages = re.search(r'include = \[(.*?)\]', (REPO / "pyproject.toml").read_text()).group(1)
    assert {p.strip(' "*') for p in packages.split(",")} <= set(sources)


def test_dockerfile_runs_the_image_check_which_covers_every_task(compiled, imagenet_weights):
    from kubeflow import image_check
    text = _dockerfile()
    assert re.search(r"python -m kubeflow\.image_check \$\{BACKBONES\}", text)
    assert 'ARG BACKBONES="mobilenet_v1"' in text  # the default backbone's weights are baked in
    image_check.check(["mobilenet_v1"])
    # What the compiled tasks start is what the check imports...
    doc = compiled["doc"]
    containers = [e["container"] for e in doc["deploymentSpec"]["executors"].values() if "container" in e]
    started = {m for c in containers for m in c["command"][2:]} | set(runner.DRIVER_ENTRYPOINT[2:])
    assert "kubeflow.executor_entrypoint" in started
    assert started <= set(image_check.modules())
    # ...and every executor class the spec names was imported along the way.
    for c in containers:
        module = c["args"][c["args"].index("--executor_class_path") + 1].rsplit(".", 1)[0]
        assert module in sys.modules, module
    scripts = re.search(r"\[project\.scripts\]\s*\nretrain = \"([\w.]+):(\w+)\"",
                        (REPO / "pyproject.toml").read_text())
    assert scripts and hasattr(importlib.import_module(scripts.group(1)), scripts.group(2))


def test_the_force_parameter_reaches_change_check_through_the_backend(compiled, tmp_path):
    """`retrain submit --force` passes the pipeline parameter force=1. Run from the
    compiled spec as the open-source backend would (ImageExampleGen and change-check
    only; the whole run is the e2e test's), ChangeCheck gets it as an int and says
    changed, which the gated tasks' condition reads as run. That a matching record
    is overridden too: test_change_check.py."""
    from kubeflow import kfp_conditions
    from kubeflow.local_launcher import LocalLauncher
    from pipeline.config import direct_beam_args
    doc = json.loads(json.dumps(compiled["doc"]))
    tasks = doc["root"]["dag"]["tasks"]
    trainer = tasks["Trainer"]
    doc["root"]["dag"]["tasks"] = {n: tasks[n] for n in ("ImageExampleGen", "change-check")}
    for name in doc["root"]["dag"]["tasks"]:  # Beam in the pod's process: no worker start-up
        container = _executor(doc, name)["container"]
        container["args"] = container["args"][:-2] + direct_beam_args(1)
    params = doc["root"]["dag"]["tasks"]["change-check"]["inputs"]["parameters"]
    registry = str(tmp_path / "registry")
    params["registry"]["runtimeValue"]["constant"] = registry  # compiled in: gs://
    params["serving_dir"]["runtimeValue"]["constant"] = str(tmp_path / "serving")
    spec = tmp_path / "two-tasks.yaml"
    spec.write_text(yaml.safe_dump(doc))
    launcher = LocalLauncher(str(spec), str(tmp_path / "root"), backend="kfp")
    with pytest.raises(ValueError, match="unknown pipeline parameters"):
        launcher.run("run-x", {"forced": 1})
    result = launcher.run("run-forced", {"force": 1}).artifact("change-check", "result")
    assert result["metadata"]["changed"] == 1.0
    assert result["metadata"]["reason"] == \
        f"forced by the run parameter force=1 (no completed run recorded in {registry})"
    key = "_change-check.result"
    assert kfp_conditions.triggered("Trainer", trainer, {key: [result]}, {}, oss=True)
