"""The HTML run report, built from real runs (the scenario of tests/test_history.py),
and rendered in headless Chromium (Debian `chromium` + `chromium-driver`)."""

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

from test_history import CLASSES, ops, scenario

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1200,3000"]


def _record(config, run_id):
    from pipeline import mlmd_store
    from pipeline.run_record import RunRecord
    store = mlmd_store.open_store(config)
    return RunRecord.from_store(store, store.get_context_by_type_and_name("pipeline_run", run_id),
                                config)


@pytest.fixture(scope="module")
def built(tmp_path_factory, emoji_root, imagenet_weights):
    from pipeline import report
    s = scenario(tmp_path_factory, emoji_root)
    # R2: the bad push. Baseline version 1, pushed version 2, per-class changes.
    # Not the newest run (R4 is): latest.html stays R4's.
    path = report.build_report(s["config"], _record(s["config"], s["r2"]["run_id"]), latest=False)
    return s, path


def _html(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_report_contains_every_section(built):
    from pipeline import report
    s, path = built
    r2 = s["r2"]
    assert path == os.path.join(s["workdir"], "reports", report.report_name(r2["run_id"]))
    page = _html(path)
    latest = _html(os.path.join(s["workdir"], "reports", report.LATEST))
    assert s["r4"]["run_id"] in latest and r2["run_id"] not in latest  # the newest run's report
    for key in report.SECTIONS:
        assert f'<section id="{key}">' in page, key
    assert 'class="error"' not in page  # every section and plot was built
    assert "Blessed and shipped as version 2" in page
    # data: images per class per split, skipped files with the reason
    assert '<img id="class-counts" src="data:image/png;base64,' in page
    assert all(c in page for c in CLASSES)
    assert "flags/half_synced.png" in page and "not a recognised image format" in page
    # training curves, confusion matrix, per-class table with the baseline
    assert '<img id="training-curves" src="data:image/png;base64,' in page
    assert '<img id="confusion-matrix" src="data:image/png;base64,' in page
    assert "precision</th><th>baseline</th><th>change" in page
    # the verdict with its thresholds (as the Evaluator recorded them) and the
    # baseline (version 1's model)
    assert "min_accuracy" in page and "max_accuracy_drop" in page
    assert "Thresholds from the Evaluator&#x27;s record (gate.json)" in page
    assert "&minus; 1.0000 (change" in page  # R2's gate: max drop 1.0, against the baseline
    v1 = json.loads((s["workdir"] / "serving" / "1" / "metrics.json").read_text())
    assert v1["model_uri"] in page and "served as version 1" in page
    # the pushed TFLite file with size and latency; the backbone
    assert "model.tflite" in page and re.search(r"\d+\.\d MiB", page) and " ms " in page
    assert "mobilenet_v1" in page and "1024 floats" in page
    # self-contained: nothing to fetch
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_report_of_a_run_without_baseline(built):
    from pipeline import report
    s, _ = built
    record = _record(s["config"], s["r1"]["run_id"])
    page = _html(report.build_report(s["config"], record, latest=False, measure_latency=False))
    assert "no baseline: not applied" in page and "Blessed and shipped as version 1" in page
    assert 'class="error"' not in page


def test_the_evaluator_records_its_gate(built):
    from components import contracts
    s, _ = built
    gates = {}
    for run in ("r1", "r2", "r4"):
        record = _record(s["config"], s[run]["run_id"])
        with open(os.path.join(record.uris.evaluation, contracts.GATE_FILE)) as f:
            gates[run] = json.load(f)
    assert gates["r2"] == {"min_accuracy": 0.0, "max_accuracy_drop": 1.0, "baseline_compared": True}
    assert gates["r1"] == {"min_accuracy": 0.0, "max_accuracy_drop": 1.0, "baseline_compared": False}
    assert gates["r4"] == {"min_accuracy": 1.0, "max_accuracy_drop": 0.01, "baseline_compared": False}


def test_report_of_a_run_from_before_gate_json(built, tmp_path):
    """Older code wrote no gate.json: the thresholds come from the eval config
    (without a baseline TFX left the change threshold out) and the Pusher's gate."""
    from components import contracts
    from pipeline import report
    s, _ = built
    gate_file = os.path.join(_record(s["config"], s["r4"]["run_id"]).uris.evaluation,
                             contracts.GATE_FILE)
    shutil.move(gate_file, tmp_path / "gate.json")
    try:
        record = _record(s["config"], s["r4"]["run_id"])
    finally:
        shutil.move(tmp_path / "gate.json", gate_file)
    assert (record.gate.min_accuracy, record.gate.max_accuracy_drop) == (1.0, 0.01)
    assert record.gate.source == ("the Evaluator's eval config "
                                  "(max_accuracy_drop: the Pusher's gate setting)")
    config = dataclasses.replace(s["config"], workdir=str(tmp_path))
    page = _html(report.build_report(config, record, latest=False, measure_latency=False))
    assert "&ge; 1.0000" in page and "no baseline: not applied (max drop 0.0100)" in page


def _audit_cli(*args):
    """`retrain audit <args>` in this process (pipeline/audit_cli.py, as cli.py registers it)."""
    import contextlib
    import io

    from pipeline import audit_cli
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = audit_cli.main(["audit", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


def test_data_audit_in_the_summary_the_report_and_retrain_audit(built):
    """DataAudit ran in every run: paths under the images root, scores in [0, 1],
    the 5 % floor; the run summary's `audit` is what `retrain audit --json` prints;
    the report shows the suspects and the misclassified eval images (R2 was trained
    on shuffled labels, so it has some) with embedded thumbnails."""
    s, path = built
    r4 = s["r4"]
    audit = r4["audit"]
    assert audit["images"] == sum(r4["examples"].values()) == 45
    suspects = audit["suspected_mislabels"]
    assert len(suspects) >= 3  # ceil(5 % of 45)
    for x in suspects:
        assert os.path.isfile(os.path.join(s["config"].images, x["path"])), x
        assert x["path"].split("/")[0] == x["label"] != x["suggested_label"] in CLASSES
        assert 0.0 <= x["score"] <= 1.0
    assert [x["score"] for x in suspects] == sorted((x["score"] for x in suspects), reverse=True)
    assert audit["small_classes"] == {c: 15 for c in CLASSES}  # 15 < 20 images each
    code, out, err = _audit_cli("--workdir", s["workdir"], "--json")
    assert code == 0, err
    assert json.loads(out) == audit
    code, out, err = _audit_cli("--workdir", s["workdir"], "--run-id", s["r2"]["run_id"])
    assert code == 0 and "suspected mislabels:" in out and "near-duplicates:" in out, err
    assert suspects[0]["path"] in _audit_cli("--workdir", s["workdir"])[1]
    code, out, err = _audit_cli("--workdir", s["workdir"], "--run-id", "nope")
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "nope" in err
    page = _html(path)
    r2_audit = s["r2"]["audit"]
    assert f'<code>{r2_audit["suspected_mislabels"][0]["path"]}</code>' in page
    assert page.count('class="thumb" src="data:image/jpeg;base64,') >= 4
    misclassified = page.split('<section id="misclassified">')[1].split("</section>")[0]
    assert "eval image(s) misclassified" in misclassified and "<h3>true class " in misclassified
    assert os.path.getsize(path) < 5 << 20


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebDriver:
    """The few W3C WebDriver calls the check needs, straight to chromedriver."""

    def __init__(self):
        self.port = _free_port()
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                self.call("GET", "/status")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        caps = {"browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {"binary": CHROMIUM, "args": CHROMIUM_ARGS}}
        self.session = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def call(self, method, path, body=None):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["value"]

    def session_call(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def close(self):
        try:
            self.session_call("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def test_report_renders_in_headless_chromium(built, tmp_path):
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), \
        "headless Chromium is missing: `make system-deps` installs chromium and chromium-driver"
    from pipeline import report
    _, path = built
    driver = WebDriver()
    try:
        driver.session_call("POST", "/url", {"url": "file://" + os.path.abspath(path)})
        state = driver.session_call("POST", "/execute/sync", {"args": [], "script": """
            const img = document.getElementById('confusion-matrix');
            const r = img.getBoundingClientRect();
            return {ready: document.readyState, complete: img.complete, width: img.naturalWidth,
                    shown: r.width > 100 && r.height > 100,
                    sections: document.querySelectorAll('section').length,
                    thumbs: ['audit', 'misclassified'].map(id => Array.from(
                        document.querySelectorAll('#' + id + ' img.thumb')).filter(
                        i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 20).length),
                    broken: Array.from(document.images).filter(i => !i.naturalWidth).length};"""})
        logs = driver.session_call("POST", "/se/log", {"type": "browser"})
        png = driver.session_call("GET", "/screenshot")
    finally:
        driver.close()
    assert state["ready"] == "complete"
    assert state["complete"] and state["width"] > 100 and state["shown"], state
    assert state["broken"] == 0 and state["sections"] == len(report.SECTIONS)
    assert min(state["thumbs"]) >= 2, state  # both galleries show decoded thumbnails
    errors = [entry for entry in logs if entry.get("level") in ("SEVERE", "WARNING")]
    assert not errors, errors
    assert len(png) > 1000


def test_trainer_writes_tensorboard_logs(built):
    s, _ = built
    training = os.path.join(_record(s["config"], s["r1"]["run_id"]).uris.model_run, "training")
    events = [os.path.join(root, f) for root, _, files in os.walk(training)
              for f in files if "tfevents" in f]
    assert {os.path.basename(os.path.dirname(e)) for e in events} >= {"train", "validation"}
    assert all(os.path.getsize(e) > 0 for e in events)
    history = json.loads(open(os.path.join(training, "history.json")).read())
    assert len(history["loss"]) == len(history["val_accuracy"]) >= 1


def test_report_command_rebuilds_the_latest_run(built):
    from pipeline import report
    s, _ = built
    code, out, err = ops("report", "--workdir", s["workdir"], "--no-latency")
    assert code == 0, err[-3000:]
    path = out.strip().splitlines()[-1]
    assert path == os.path.join(s["workdir"], "reports", report.report_name(s["r4"]["run_id"]))
    page = _html(path)
    assert "Not blessed" in page and 'id="confusion-matrix"' in page
    latest = os.path.join(s["workdir"], "reports", report.LATEST)
    assert _html(latest) == page
    # An older run's report leaves latest.html alone.
    code, out, err = ops("report", "--workdir", s["workdir"], "--no-latency",
                         "--run-id", s["r1"]["run_id"])
    assert code == 0, err[-3000:]
    assert "Blessed and shipped as version 1" in _html(out.strip().splitlines()[-1])
    assert _html(latest) == page


def test_build_report_never_fails_the_run(tmp_path):
    from pipeline import report
    from pipeline.config import PipelineConfig
    from pipeline.run_record import ArtifactUris, RunRecord
    config = PipelineConfig(images=str(tmp_path), workdir=str(tmp_path / "work"),
                            pipeline_root_uri=str(tmp_path / "remote_root"))
    record = RunRecord(run_id="2024-01-01T00:00:00.1", statistics_splits=("train",),
                       uris=ArtifactUris(statistics=str(tmp_path / "gone")))
    path = report.build_report(config, record, latest=True)
    assert os.path.basename(path) == "2024-01-01T00_00_00.1.html"
    page = _html(path)
    assert "This section could not be built" in page and "Not blessed" in page
    # a remote pipeline root (Kubeflow) gets a copy beside the pipeline's artifacts
    assert _html(tmp_path / "remote_root" / "reports" / os.path.basename(path)) == page
