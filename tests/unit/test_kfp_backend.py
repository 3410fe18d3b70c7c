"""The local launcher's open-source KFP v2 mode against the real backend's contract.

Each test names the file of kubeflow/pipelines (backend/src/v2, read at tags
2.0.0, 2.5.0, 2.14.0 and master) whose behaviour it reproduces. A probe
executor records the ExecutorInput it was given, so the tests check what an
executor really receives, not what the launcher meant to send.
"""

import json
import os

import pytest
import yaml

from kubeflow import kfp_backend
from kubeflow.kfp_backend import Backend, BackendError
from kubeflow.local_launcher import LocalLauncher, TaskFailed

# Writes its ExecutorInput next to the pipeline root, an output file, and
# metadata of every JSON kind through the ExecutorOutput file; prints a line
# (the launcher tees stdout into executor-logs).
PROBE = """
import json, os, sys
ei = json.loads(sys.argv[1])
task = sys.argv[2]
with open(os.path.join(os.environ["PROBE_DIR"], task + ".json"), "w") as f:
    json.dump(ei, f)
print("probe ran", task)
report = {}
for key, listed in ei["outputs"]["artifacts"].items():
    out = dict(listed["artifacts"][0])
    if key == "executor-logs":
        continue
    os.makedirs(out["uri"], exist_ok=True)
    open(os.path.join(out["uri"], "data.txt"), "w").write(task)
    out["metadata"] = json.loads(os.environ.get("PROBE_METADATA", "{}"))
    if os.environ.get("PROBE_URI"):
        out["uri"] = os.environ["PROBE_URI"]
    report[key] = {"artifacts": [out]}
extra = json.loads(os.environ.get("PROBE_EXTRA", "{}"))
with open(ei["outputs"]["outputFile"], "w") as f:
    json.dump({"artifacts": report, **extra}, f)
"""
TYPED = {"artifactType": {"instanceSchema": "title: tfx.Examples\ntype: object\n"}}
METADATA = {"count": 3, "ratio": 0.5, "flag": True, "names": ["a", "b"], "conf": {"k": 1},
            "text": "x"}


def _spec(tmp_path, caching=False, hook=False, names=("make", "use")):
    make, use = names

    def container(task):
        c = {"image": "example/probe:1", "command": ["python", "-c", PROBE], "args": ["{{$}}", task]}
        if hook:
            marker = str(tmp_path / "hook-ran")
            c["lifecycle"] = {"preCacheCheck": {"command": ["python", "-c", f"open({marker!r}, 'w')"],
                                                "args": []}}
        return c
    spec = {
        "pipelineInfo": {"name": "probe"}, "schemaVersion": "2.1.0", "sdkVersion": "test",
        "root": {"dag": {"tasks": {
            make: {"taskInfo": {"name": make}, "componentRef": {"name": "make"},
                   **({"cachingOptions": {"enableCache": True}} if caching else {})},
            use: {"taskInfo": {"name": use}, "componentRef": {"name": "use"},
                  **({"cachingOptions": {"enableCache": True}} if caching else {}),
                  "inputs": {"artifacts": {"data": {"taskOutputArtifact": {
                      "producerTask": make, "outputArtifactKey": "data"}}}}},
        }}},
        "components": {
            "make": {"executorLabel": "make_executor", "outputDefinitions": {"artifacts": {"data": TYPED}}},
            "use": {"executorLabel": "use_executor", "inputDefinitions": {"artifacts": {"data": TYPED}},
                    "outputDefinitions": {"artifacts": {"result": TYPED}}},
        },
        "deploymentSpec": {"executors": {"make_executor": {"container": container(make)},
                                         "use_executor": {"container": container(use)}}},
    }
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _launcher(tmp_path, spec, backend="kfp", metadata=None, extra=None, uri=None, **kw):
    probe = tmp_path / "probe-inputs"
    probe.mkdir(exist_ok=True)
    env = {"PROBE_DIR": str(probe), "PROBE_METADATA": json.dumps(metadata or {}),
           "PROBE_EXTRA": json.dumps(extra or {}), "PROBE_URI": uri or ""}
    return LocalLauncher(spec, str(tmp_path / "root"), backend=backend, env=env,
                         log=lambda _: None, **kw)


def _seen(tmp_path, task):
    with open(tmp_path / "probe-inputs" / f"{task}.json") as f:
        return json.load(f)


def test_inputs_arrive_untyped_named_by_id_with_metadata_as_read_back_from_mlmd(tmp_path):
    # metadata/client.go GetOutputArtifactsByExecutionId (Schema: ""), converter.go
    # StructValueToMLMDValue + toRuntimeArtifact, RecordArtifact's display_name.
    run = _launcher(tmp_path, _spec(tmp_path), metadata=METADATA).run("r1")
    (data,) = _seen(tmp_path, "use")["inputs"]["artifacts"]["data"]["artifacts"]
    assert data["type"] == {"instanceSchema": ""}
    assert data["name"] == str(run.artifact("make", "data")["id"]) and data["name"].isdigit()
    assert data["metadata"] == {
        "count": 3.0, "ratio": 0.5, "flag": 1.0, "names": {"list": ["a", "b"]},
        "conf": {"struct": {"k": 1}}, "text": "x", "display_name": "data",
        "store_session_info": kfp_backend.SESSION_INFO}


def test_vertex_mode_keeps_types_and_metadata(tmp_path):
    _launcher(tmp_path, _spec(tmp_path), backend="vertex", metadata=METADATA).run("r1")
    (data,) = _seen(tmp_path, "use")["inputs"]["artifacts"]["data"]["artifacts"]
    assert data["type"] == TYPED["artifactType"] and data["metadata"] == METADATA


def test_executor_logs_output_from_2_5_holds_the_tasks_output(tmp_path):
    # driver.go provisionOutputs adds it (--publish_logs defaults to true,
    # cmd/driver/main.go); launcher_v2.go tees stdout and stderr into it.
    run = _launcher(tmp_path, _spec(tmp_path)).run("r1")
    outputs = _seen(tmp_path, "make")["outputs"]["artifacts"]
    assert set(outputs) == {"data", "executor-logs"}
    logs = outputs["executor-logs"]["artifacts"][0]
    assert logs["type"] == {"schemaTitle": "system.Artifact"}
    assert os.path.dirname(logs["uri"]) == os.path.dirname(outputs["data"]["artifacts"][0]["uri"])
    with open(run.artifact("make", "executor-logs")["uri"]) as f:
        assert "probe ran make" in f.read()
    # 2.0-2.4: no executor-logs, and no per-execution folder (the uuid came in 2.4).
    _launcher(tmp_path, _spec(tmp_path), backend="kfp-2.0").run("r2")
    outputs = _seen(tmp_path, "make")["outputs"]["artifacts"]
    assert set(outputs) == {"data"}
    assert outputs["data"]["artifacts"][0]["uri"] == str(tmp_path / "root" / "probe" / "r2" / "make" / "data")


def test_output_file_lives_in_the_pod_and_outputs_are_unnamed_before_2_15(tmp_path):
    _launcher(tmp_path, _spec(tmp_path)).run("r1")
    outputs = _seen(tmp_path, "make")["outputs"]
    assert outputs["outputFile"].endswith("/tmp/kfp_outputs/output_metadata.json")
    assert not outputs["outputFile"].startswith(str(tmp_path / "root"))
    assert "name" not in outputs["artifacts"]["data"]["artifacts"][0]
    _launcher(tmp_path, _spec(tmp_path), backend="kfp-2.15").run("r2")
    outputs = _seen(tmp_path, "make")["outputs"]
    assert outputs["artifacts"]["data"]["artifacts"][0]["name"] == "data"
    assert outputs["outputFile"].endswith("/output_metadata.json")


def test_no_pre_cache_hook_runs_on_the_open_source_backend(tmp_path):
    # No lifecycle/preCacheCheck anywhere in backend/src/v2; Vertex runs it.
    _launcher(tmp_path, _spec(tmp_path, hook=True)).run("r1")
    assert not (tmp_path / "hook-ran").exists()
    _launcher(tmp_path, _spec(tmp_path, hook=True), backend="vertex").run("r2")
    assert (tmp_path / "hook-ran").exists()


def test_cache_key_holds_inputs_by_mlmd_id(tmp_path):
    # cacheutils/cache.go GenerateCacheKey: a rerun upstream gives new ids, so a miss.
    spec = _spec(tmp_path, caching=True)
    first = _launcher(tmp_path, spec).run("r1")
    second = _launcher(tmp_path, spec).run("r2")
    assert {n: t.state for n, t in second.tasks.items()} == {"make": "CACHED", "use": "CACHED"}
    assert second.artifact("use", "result") == first.artifact("use", "result")
    third = _launcher(tmp_path, spec, metadata={"count": 4}).run("r3")  # env is not in the key
    assert third.tasks["make"].state == "CACHED"
    # Caching off for `make` only (the kfp client rewrites root tasks): `use` sees a new id.
    doc = yaml.safe_load(open(spec))
    del doc["root"]["dag"]["tasks"]["make"]["cachingOptions"]
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(doc))
    fourth = _launcher(tmp_path, spec).run("r4")
    assert fourth.tasks["make"].state == "SUCCEEDED" and fourth.tasks["use"].state == "SUCCEEDED"


def test_executor_output_is_parsed_strictly_and_uris_stay_under_the_root(tmp_path):
    # launcher_v2.go getExecutorOutputFile (strict protojson) and the bucket prefix check.
    with pytest.raises(TaskFailed, match="not an ExecutorOutput"):
        _launcher(tmp_path, _spec(tmp_path), extra={"surprise": 1}).run("r1")
    with pytest.raises(TaskFailed, match="does not have expected bucket prefix"):
        _launcher(tmp_path, _spec(tmp_path), uri=str(tmp_path / "elsewhere")).run("r2")
    with pytest.raises(TaskFailed, match="metadata 'gone' is null"):
        _launcher(tmp_path, _spec(tmp_path), metadata={"gone": None}).run("r3")
    # A reported URI under the root replaces the provisioned one downstream.
    moved = str(tmp_path / "root" / "moved")
    run = _launcher(tmp_path, _spec(tmp_path), uri=moved).run("r4")
    assert run.artifact("make", "data")["uri"] == moved


def test_task_names_argo_refuses_are_refused(tmp_path):
    # Argo's workflow/validate/validate.go, applied when KFP creates a run.
    spec = _spec(tmp_path, names=("make_data", "use"))
    with pytest.raises(BackendError, match=r"make_data"):
        _launcher(tmp_path, spec)
    _launcher(tmp_path, spec, backend="vertex")  # Vertex has no such rule here


def test_backend_names_parse():
    assert Backend.parse("kfp") == Backend("kfp", (2, 14))
    assert str(Backend.parse("kfp-2.5")) == "kfp-2.5" and Backend.parse("kfp-2.5").publish_logs
    assert not Backend.parse("kfp-2.4").publish_logs and Backend.parse("kfp-2.4").execution_dirs
    assert not Backend.parse("vertex").oss
    for bad in ("argo", "kfp-two"):
        with pytest.raises(ValueError):
            Backend.parse(bad)


def test_parameter_text_matches_go_formatting():
    # metadata/converter.go PbValueToText with strconv.FormatFloat(x, 'f', -1, 64).
    assert [kfp_backend.parameter_text(v) for v in (6.0, 0.5, 1e-7, True, ["a", 1], None)] == \
        ["6", "0.5", "0.0000001", "true", '["a",1]', ""]


ENV_PROBE = """
import json, os, sys
ei = json.loads(sys.argv[1])
keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
with open(os.path.join(os.environ["PROBE_DIR"], "env.json"), "w") as f:
    json.dump({k: os.environ.get(k) for k in keys}, f)
"""


def test_pods_take_s3_credentials_from_a_secret_through_the_platform_spec(tmp_path):
    # kfp-kubernetes' secretAsEnv, applied to the pod by driver.go (2.0-2.5) / k8s.go.
    from kubeflow import pod_env
    spec_path = _spec(tmp_path)
    doc = yaml.safe_load(open(spec_path))
    for executor in doc["deploymentSpec"]["executors"].values():
        executor["container"]["command"] = ["python", "-c", ENV_PROBE]
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(doc))
    access = pod_env.S3Access(endpoint="http://minio-service.kubeflow:9000")
    pod_env.add_s3_access(spec_path, access)
    spec, platform = pod_env.read(spec_path)
    text = open(spec_path).read()
    assert "minio123" not in text and "AWS_SECRET_ACCESS_KEY" in text  # names only, no value
    assert platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["make_executor"] == {
        "secretAsEnv": [access.secret_as_env()]}
    secrets = {"mlpipeline-minio-artifact": {"accesskey": "minio", "secretkey": "minio123"}}
    _launcher(tmp_path, spec_path, secrets=secrets).run("r1")
    with open(tmp_path / "probe-inputs" / "env.json") as f:
        assert json.load(f) == {"AWS_ACCESS_KEY_ID": "minio", "AWS_SECRET_ACCESS_KEY": "minio123",
                                "AWS_ENDPOINT_URL": "http://minio-service.kubeflow:9000"}
    with pytest.raises(TaskFailed, match="secret 'mlpipeline-minio-artifact' not found"):
        _launcher(tmp_path, spec_path).run("r2")
