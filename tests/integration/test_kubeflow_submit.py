"""`retrain submit` / `retrain schedule` against a local fake of the KFP v2 REST API.

The fake speaks the subset kfp's client uses (healthz, experiments, runs,
recurring runs), binds 127.0.0.1 on an ephemeral port, serves a bounded number
of requests and records them, so the tests can check what was sent.
"""

import http.server
import json
import socket
import threading
import urllib.parse

import pytest
import yaml

from conftest import retrain_kubeflow as _retrain

ROOT = "gs://bucket/retrain/pipeline_root"
SECRET = "s3cr3t-t0ken-value"
MAX_REQUESTS = 50

SPEC = {
    "pipelineInfo": {"name": "image-retrain"}, "schemaVersion": "2.1.0", "sdkVersion": "tfx-1.16.0",
    "defaultPipelineRoot": ROOT,
    "root": {"dag": {"tasks": {
        "ImageExampleGen": {"taskInfo": {"name": "ImageExampleGen"},
                            "componentRef": {"name": "ImageExampleGen"},
                            "cachingOptions": {"enableCache": True}},
        "Trainer": {"taskInfo": {"name": "Trainer"}, "componentRef": {"name": "Trainer"},
                    "dependentTasks": ["ImageExampleGen"]}}}},
    "components": {"ImageExampleGen": {"executorLabel": "e1"}, "Trainer": {"executorLabel": "e2"}},
    "deploymentSpec": {"executors": {
        "e1": {"container": {"image": "example/retrain:1", "command": ["python"]}},
        "e2": {"container": {"image": "example/retrain:1", "command": ["python"]}}}},
}


class FakeKfp:
    """Records requests; `token` makes it demand that bearer token; `fail_runs` a 500."""

    def __init__(self, token=None, fail_runs=None, healthz_html=False, experiments=()):
        self.requests, self.token = [], token
        # Experiments that exist already: {display_name: experiment_id}.
        self.experiments = dict(experiments)
        self.fail_runs, self.healthz_html = fail_runs, healthz_html
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, doc, kind="application/json"):
                body = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                url = urllib.parse.urlparse(self.path)
                fake.requests.append({"method": method, "path": url.path, "body": body,
                                      "query": urllib.parse.parse_qs(url.query),
                                      "auth": self.headers.get("Authorization")})
                if len(fake.requests) > MAX_REQUESTS:
                    return self._reply(503, {"message": "too many requests for a test"})
                if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._reply(401, {"code": 16, "message": "Unauthenticated"})
                route = (method, url.path)
                if route == ("GET", "/apis/v2beta1/healthz"):
                    if fake.healthz_html:
                        return self._reply(200, "<html>Sign in</html>", "text/html")
                    return self._reply(200, {"multi_user": False})
                if route == ("GET", "/apis/v2beta1/experiments"):
                    # The filter kfp's client sends: display_name EQUALS <name>.
                    wanted = json.loads(urllib.parse.parse_qs(url.query)["filter"][0])
                    name = wanted["predicates"][0]["string_value"] \
                        if "string_value" in wanted["predicates"][0] else wanted["predicates"][0]["stringValue"]
                    found = [{"experiment_id": i, "display_name": n}
                             for n, i in fake.experiments.items() if n == name]
                    return self._reply(200, {"experiments": found} if found else {})
                if route == ("POST", "/apis/v2beta1/experiments"):
                    return self._reply(200, {"experiment_id": "exp-1", **body})
                if route == ("POST", "/apis/v2beta1/runs"):
                    if fake.fail_runs:
                        return self._reply(500, {"code": 13, "message": fake.fail_runs})
                    return self._reply(200, {"run_id": "run-123", "display_name": body["display_name"]})
                if route == ("POST", "/apis/v2beta1/recurringruns"):
                    return self._reply(200, {"recurring_run_id": "rr-9", "display_name": body["display_name"]})
                return self._reply(404, {"message": f"no route {method} {url.path}"})

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 0.05
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self._stop.is_set():
            self.server.handle_request()  # returns after one request or 0.05 s

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.server_close()

    def posted(self, path):
        return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"] == path]


@pytest.fixture
def spec_file(tmp_path, monkeypatch):
    import kfp.client.client as kfp_client_module
    # Keep the kfp client away from this machine's ~/.config/kfp/context.json.
    monkeypatch.setattr(kfp_client_module.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "ctx.json"))
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return str(path)


def test_submit_creates_a_run_with_the_compiled_pipeline_root(spec_file, capsys):
    with FakeKfp() as kfp:
        code, out, err = _retrain(capsys, "submit", "--host", kfp.url, spec_file,
                                  "--run-name", "nightly")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "run run-123"
    (run,) = kfp.posted("/apis/v2beta1/runs")
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    # No experiment named Default existed: the client created it.
    # The YAML carries no runtime config: the root is sent with the run.
    assert run["runtime_config"]["pipeline_root"] == ROOT
    assert set(run["pipeline_spec"]["root"]["dag"]["tasks"]) == {"ImageExampleGen", "Trainer"}
    assert kfp.posted("/apis/v2beta1/experiments")[0]["display_name"] == "Default"


def test_submit_force_sets_the_force_parameter_a_spec_without_it_is_refused(spec_file, tmp_path, capsys):
    """`--force`: a one-off full run of the scheduled spec (kubeflow/change_gate.py)."""
    with FakeKfp() as kfp:  # no `force` declared (a --target vertex spec): refused before any call
        code, _, err = _retrain(capsys, "submit", "--host", kfp.url, spec_file, "--force")
    assert code == 2 and "declares no pipeline parameter force" in err[-1] and not kfp.requests
    gated = json.loads(json.dumps(SPEC))
    gated["root"]["inputDefinitions"] = {"parameters": {"force": {
        "parameterType": "NUMBER_INTEGER", "defaultValue": 0, "isOptional": True}}}
    path = tmp_path / "gated.yaml"
    path.write_text(yaml.safe_dump(gated))
    for extra, sent in (([], {}), (["--force"], {"force": 1})):
        with FakeKfp() as kfp:
            code, _, err = _retrain(capsys, "submit", "--host", kfp.url, str(path), *extra)
        assert code == 0, err
        (run,) = kfp.posted("/apis/v2beta1/runs")
        assert run["runtime_config"].get("parameters") == sent


def test_an_existing_experiment_is_reused(spec_file, capsys):
    with FakeKfp(experiments={"nightly-retrain": "exp-42", "other": "exp-7"}) as kfp:
        code, _, err = _retrain(capsys, "submit", "--host", kfp.url, spec_file,
                                "--experiment", "nightly-retrain")
    assert code == 0, err
    assert not kfp.posted("/apis/v2beta1/experiments")  # found, not created again
    assert kfp.posted("/apis/v2beta1/runs")[0]["experiment_id"] == "exp-42"


@pytest.fixture(scope="module")
def compiled_spec(tmp_path_factory):
    """A really compiled pipeline.yaml (open-source KFP target, S3 credentials from a secret)."""
    from kubeflow import pod_env, runner
    from pipeline.config import PipelineConfig
    tmp = tmp_path_factory.mktemp("compiled")
    config = runner.kubeflow_config(PipelineConfig(
        images=f"{ROOT}/images", workdir=str(tmp), label_names=("cat", "dog")), ROOT)
    path = runner.compile_pipeline(config, str(tmp / "pipeline.yaml"), "example/retrain:1",
                                   pod_env.S3Access(endpoint="http://minio:9000"))
    return path


def test_submit_sends_the_compiled_spec_and_its_platform_spec(compiled_spec, spec_file, capsys):
    from kubeflow import pod_env
    spec, platform = pod_env.read(compiled_spec)
    with FakeKfp() as kfp:
        code, _, err = _retrain(capsys, "submit", "--host", kfp.url, compiled_spec)
    assert code == 0, err
    (run,) = kfp.posted("/apis/v2beta1/runs")
    # kfp's client (client.py _PipelineDoc.to_dict) sends both documents when a
    # platform spec is present: the whole spec, and the secretAsEnv with it.
    assert run["pipeline_spec"] == {"pipeline_spec": spec, "platform_spec": platform}
    assert run["runtime_config"]["pipeline_root"] == ROOT


def test_submit_pipeline_root_flag_overrides_and_is_required_somewhere(spec_file, tmp_path, capsys):
    with FakeKfp() as kfp:
        code, _, err = _retrain(capsys, "submit", "--host", kfp.url, spec_file,
                                "--pipeline-root", "gs://other/root")
        assert code == 0, err
        assert kfp.posted("/apis/v2beta1/runs")[0]["runtime_config"]["pipeline_root"] == "gs://other/root"
        bare = tmp_path / "bare.yaml"
        bare.write_text(yaml.safe_dump({k: v for k, v in SPEC.items() if k != "defaultPipelineRoot"}))
        code, _, err = _retrain(capsys, "submit", "--host", kfp.url, bare)
    assert code == 2 and err == [f"retrain: error: {bare} names no pipeline root: pass --pipeline-root URI"]


def test_schedule_sends_cron_concurrency_catchup_and_caching_off(spec_file, capsys):
    with FakeKfp() as kfp:
        code, out, err = _retrain(capsys, "schedule", "--host", kfp.url, "--cron", "0 0 3 * * *",
                                  spec_file)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "recurring run rr-9"
    assert not kfp.posted("/apis/v2beta1/experiments")[1:]
    (job,) = kfp.posted("/apis/v2beta1/recurringruns")
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(job["max_concurrency"]) == 1 and job["no_catchup"] is True
    assert job["mode"] == "ENABLE" and job["experiment_id"] == "exp-1"
    assert job["runtime_config"]["pipeline_root"] == ROOT
    tasks = job["pipeline_spec"]["root"]["dag"]["tasks"]
    # Caching off on every task, including the one compiled with it on.
    assert all("cachingOptions" in t and not t["cachingOptions"].get("enableCache")
               for t in tasks.values())


def test_schedule_refuses_a_five_field_cron_before_any_request(spec_file, capsys):
    with FakeKfp() as kfp:
        code, _, err = _retrain(capsys, "schedule", "--host", kfp.url, "--cron", "0 3 * * *", spec_file)
    assert code == 2 and len(err) == 1
    assert "6 fields, seconds first" in err[0] and "'0 0 3 * * *'" in err[0]
    assert kfp.requests == []


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_is_a_clear_error(spec_file, capsys):
    code, _, err = _retrain(capsys, "submit", "--host", f"http://127.0.0.1:{_free_port()}", spec_file)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("retrain: error: cannot reach Kubeflow Pipelines at http://127.0.0.1:")


def test_a_host_that_never_answers_times_out(spec_file, capsys):
    with socket.socket() as silent:  # accepts connections (backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        code, _, err = _retrain(capsys, "schedule", "--host",
                                f"http://127.0.0.1:{silent.getsockname()[1]}",
                                "--cron", "0 0 3 * * *", "--timeout", "1", spec_file)
    assert code == 2 and "cannot reach" in err[0] and "within 1 s" in err[0]


def test_refused_login_is_named_and_the_token_never_printed(spec_file, capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", SECRET + "-wrong")
    with FakeKfp(token=SECRET) as kfp:
        code, out, err = _retrain(capsys, "submit", "--host", kfp.url, "--token-env", "KFP_TOKEN",
                                  spec_file)
        assert code == 2 and len(err) == 1
        assert "refused the request (HTTP 401): authentication failed" in err[0]
        assert SECRET not in out + "".join(err)
        code, _, err = _retrain(capsys, "submit", "--host", kfp.url, "--token-env", "NO_SUCH_VAR",
                                spec_file)
        assert code == 2 and "NO_SUCH_VAR" in err[0]


@pytest.mark.parametrize("raw,sent", [(SECRET + "\r", SECRET), ("  " + SECRET + "\n", SECRET),
                                      (SECRET + "\nX", None), (SECRET + "\x07", None),
                                      (SECRET + "é", None), (SECRET + " tail", None)])
def test_a_token_is_stripped_or_refused_and_never_printed(spec_file, capsys, monkeypatch, raw, sent):
    monkeypatch.setenv("KFP_TOKEN", raw)
    with FakeKfp(token=SECRET) as kfp:
        code, out, err = _retrain(capsys, "submit", "--host", kfp.url, "--token-env", "KFP_TOKEN",
                                  spec_file)
    if sent is None:  # refused before any request: exit 2, one line naming the variable
        assert code == 2 and len(err) == 1 and "KFP_TOKEN" in err[0] and not kfp.requests
    else:
        assert code == 0, err
        assert all(r["auth"] == f"Bearer {sent}" for r in kfp.requests)
    assert SECRET not in out + "".join(err) and "Traceback" not in "".join(err)


def test_a_valid_token_goes_with_every_request(spec_file, capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", SECRET)
    with FakeKfp(token=SECRET) as kfp:
        code, out, err = _retrain(capsys, "submit", "--host", kfp.url, "--token-env", "KFP_TOKEN",
                                  spec_file)
    assert code == 0, err
    assert kfp.requests and all(r["auth"] == f"Bearer {SECRET}" for r in kfp.requests)
    assert SECRET not in out + "".join(err)


def test_login_page_and_server_errors_are_explained(spec_file, capsys):
    with FakeKfp(healthz_html=True) as kfp:
        code, _, err = _retrain(capsys, "submit", "--host", kfp.url, spec_file)
    assert code == 2 and "login page" in err[0]
    for refusal in ("resolver not implemented yet",
                    'executor(label="x"): non-container and non-importer executor not implemented'):
        with FakeKfp(fail_runs=f"Failed to create a run: {refusal}") as kfp:
            code, _, err = _retrain(capsys, "submit", "--host", kfp.url, spec_file)
        assert code == 2 and len(err) == 1
        assert "HTTP 500" in err[0] and "cannot run TFX Resolver nodes" in err[0]


def test_bad_host_and_bad_package_are_bad_input(spec_file, tmp_path, capsys):
    code, _, err = _retrain(capsys, "submit", "--host", "ml-pipeline:8888", spec_file)
    assert code == 2 and "--host must be an http(s) URL" in err[0]
    json_spec = tmp_path / "pipeline.json"
    json_spec.write_text(json.dumps(SPEC))
    code, _, err = _retrain(capsys, "submit", "--host", "http://127.0.0.1:1", json_spec)
    assert code == 2 and ".yaml/.yml" in err[0]
    not_spec = tmp_path / "argo.yaml"
    not_spec.write_text("kind: Workflow\nspec: {}\n")
    code, _, err = _retrain(capsys, "submit", "--host", "http://127.0.0.1:1", not_spec)
    assert code == 2 and "is not a KFP v2 pipeline spec" in err[0]


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_timeout_must_be_a_positive_finite_number(spec_file, capsys, value):
    """issue 17: NaN and inf refused for every float flag, before any request."""
    with FakeKfp() as kfp:
        code, _, err = _retrain(capsys, "submit", "--host", kfp.url, f"--timeout={value}", spec_file)
    assert code == 2 and err == [f"retrain: error: --timeout must be a positive number of "
                                 f"seconds, got {float(value)}"]
    assert kfp.requests == []
