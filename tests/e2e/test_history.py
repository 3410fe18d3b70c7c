"""Run history and baseline control on real pipeline runs (one workdir, cache on).

  R1  good model, first run: blessed, version 1.
  R2  broken model (shuffled labels), gate opened wide (max drop 1.0): blessed
      anyway and pushed as version 2 -- the "bad push". `runs` lists two runs.
  --  `bless --version 1`: the resolver's pick moves from R2's model to version 1's.
  R3  R1's settings, min accuracy 1.0 (so that, most likely, nothing is converted or
      pushed: quicker): its Evaluator compared with version 1.
  --  `bless --reset`: no live blessing left.
  R4  same as R3: its Evaluator had no baseline.

`scenario()` is shared with tests/test_report.py (built once per test process).
"""

import contextlib
import dataclasses
import io
import json

import pytest

from conftest import copy_subset

pytestmark = pytest.mark.slow

CLASSES = ["flags", "food_and_drink", "smileys_and_emotion"]
_SCENARIO = {}


def ops(*args):
    """`retrain <args>` through pipeline.ops_cli's parser and handlers (what cli.py
    registers), in this process: a subprocess would spend ~20 s importing TFX."""
    from pipeline import ops_cli
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = ops_cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _ops_json(*args):
    code, out, err = ops(*args, "--json")
    assert code == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _baseline(config):
    from pipeline import history
    return history.current_baseline(history.open_store(config), config.pipeline_name)


def _evaluator_blessing(config, run_id):
    from pipeline import mlmd_store
    store = mlmd_store.open_store(config)
    ctx = store.get_context_by_type_and_name("pipeline_run", run_id)
    for ex in store.get_executions_by_context(ctx.id):
        for b in mlmd_store.output_artifacts(store, ex.id).get("blessing", []):
            return {k: mlmd_store.custom_property(b, k)
                    for k in ("blessed", "baseline_model", "baseline_model_id")}
    return None


def _label_check(config, run_id):
    """(LabelGuard's state, its label_check.json) in run `run_id`."""
    from pipeline import mlmd_store, run_record
    store = mlmd_store.open_store(config)
    ctx = store.get_context_by_type_and_name("pipeline_run", run_id)
    record = run_record.RunRecord.from_store(store, ctx, config, read_files=False)
    from components.contracts import LABEL_CHECK_FILE
    with open(f"{record.uris.label_check}/{LABEL_CHECK_FILE}") as f:
        return record.states["LabelGuard"], json.load(f)


def scenario(tmp_path_factory, emoji_root):
    if _SCENARIO:
        return _SCENARIO
    from pipeline import local_runner
    from pipeline.config import PipelineConfig
    root = tmp_path_factory.mktemp("history")
    images = copy_subset(emoji_root, root / "images", CLASSES, per_class=15)
    (images / "flags" / "half_synced.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    workdir = root / "work"
    base = PipelineConfig(images=str(images), workdir=str(workdir), epochs=40, enable_cache=True,
                          min_accuracy=0.0, max_accuracy_drop=1.0, tflite_variants=("float32",))
    s = _SCENARIO
    s["config"], s["workdir"] = base, workdir
    s["r1"] = local_runner.run(base)
    s["r2"] = local_runner.run(dataclasses.replace(base, corrupt_train_labels=True))
    s["runs_after_two"] = _ops_json("runs", "--workdir", workdir)
    s["baseline_before_bless"] = _baseline(base)
    s["bless"] = _ops_json("bless", "--workdir", workdir, "--version", 1,
                           "--reason", "version 2 was trained on shuffled labels")
    s["baseline_after_bless"] = _baseline(base)
    gated = dataclasses.replace(base, min_accuracy=1.0, max_accuracy_drop=0.01)
    s["r3"] = local_runner.run(gated)
    s["r3_blessing"] = _evaluator_blessing(base, s["r3"]["run_id"])
    s["r3_label_check"] = _label_check(base, s["r3"]["run_id"])
    s["reset"] = _ops_json("bless", "--workdir", workdir, "--reset", "--reason", "new label space")
    s["baseline_after_reset"] = _baseline(base)
    s["r4"] = local_runner.run(gated)
    s["r4_blessing"] = _evaluator_blessing(base, s["r4"]["run_id"])
    return s


@pytest.fixture(scope="module")
def hist(tmp_path_factory, emoji_root, imagenet_weights):
    return scenario(tmp_path_factory, emoji_root)


def _version_metrics(workdir, version):
    return json.loads((workdir / "serving" / str(version) / "metrics.json").read_text())


def test_runs_lists_two_runs_after_two_runs(hist):
    rows = hist["runs_after_two"]
    assert [r["kind"] for r in rows] == ["run", "run"]
    assert [r["id"] for r in rows] == [hist["r2"]["run_id"], hist["r1"]["run_id"]]  # newest first
    r2, r1 = rows
    assert (r1["pushed_version"], r2["pushed_version"]) == (1, 2)
    assert r1["blessed"] and r2["blessed"] and r1["status"] == r2["status"] == "complete"
    assert r1["examples"] == hist["r1"]["examples"] and sum(r1["examples"].values()) == 45
    assert r1["accuracy"] == pytest.approx(hist["r1"]["accuracy"])
    assert r1["baseline_accuracy"] is None and r2["baseline_accuracy"] is not None
    assert r1["time"] <= r2["time"]
    assert r2["baseline"] and not r1["baseline"]  # R2's model is the next baseline


def test_runs_table_and_bless_rows(hist):
    code, out, err = ops("runs", "--workdir", hist["workdir"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["time", "kind", "status"]
    body = [line for line in lines[1:-1]]
    assert len(body) == 6  # 4 runs, 1 bless, 1 reset, newest first
    assert " reset " in body[1] and "new label space" in body[1]
    assert " bless " in body[3] and "version 1 made the baseline" in body[3]
    assert " revoked " in body[4] and " revoked " in body[5]  # R2's and R1's blessings
    assert not any(line.startswith("*") for line in body)  # reset: no baseline in force


def test_bless_makes_version_1_the_evaluators_baseline(hist):
    v1, v2 = _version_metrics(hist["workdir"], 1), _version_metrics(hist["workdir"], 2)
    assert v1["model_uri"] != v2["model_uri"]
    before, after, bless = hist["baseline_before_bless"], hist["baseline_after_bless"], hist["bless"]
    assert before["model_uri"] == v2["model_uri"]  # latest blessed: the bad push
    assert bless["version"] == 1 and bless["source_model_id"] == v1["model_id"]
    assert after["model_id"] == bless["model_id"] > before["model_id"]
    assert after["model_uri"] == v1["model_uri"] and after["blessed_from_version"] == 1
    # The real run: its Evaluator got version 1's model from the unchanged resolver.
    blessing, r3 = hist["r3_blessing"], hist["r3"]
    assert blessing["baseline_model"] == v1["model_uri"]
    assert blessing["baseline_model_id"] == bless["model_id"]
    # Version 1's model scored on the same eval images as when it was pushed.
    assert r3["baseline_accuracy"] == pytest.approx(v1["evaluation"]["accuracy"])


def test_label_guard_checks_against_the_blessed_version(hist):
    """After `bless --version 1`, R3's LabelGuard (run, not cached: its baseline input
    changed) compared with version 1's model and its label_space.json, not R2's."""
    v1, v2 = _version_metrics(hist["workdir"], 1), _version_metrics(hist["workdir"], 2)
    state, check = hist["r3_label_check"]
    assert state == "COMPLETE"
    assert check["baseline_model"] == v1["model_uri"] != v2["model_uri"]
    from components.label_guard import read_label_space
    assert check["baseline"] == read_label_space(v1["model_uri"])
    assert check["problems"] == [] and sorted(check["current"]) == CLASSES


def test_bless_is_recorded_in_mlmd_with_lineage(hist):
    from pipeline import history, mlmd_store
    prop = mlmd_store.custom_property
    store = mlmd_store.open_store(hist["config"])
    [ex] = [e for e in store.get_executions_by_type(history.OPERATION_EXECUTION_TYPE)
            if prop(e, "action") == "bless"]
    assert prop(ex, "reason") == "version 2 was trained on shuffled labels"
    assert prop(ex, "version") == 1 and prop(ex, "user")
    contexts = {store.get_context_types_by_id([c.type_id])[0].name: c.name
                for c in store.get_contexts_by_execution(ex.id)}
    assert contexts["pipeline"] == hist["config"].pipeline_name
    assert contexts[history.OPERATION_CONTEXT_TYPE] == hist["bless"]["operation"]
    events = {e.path.steps[0].key: e.artifact_id for e in store.get_events_by_execution_ids([ex.id])}
    assert events["source_model"] == hist["bless"]["source_model_id"]
    assert events["model"] == hist["bless"]["model_id"] and "blessing" in events
    assert "pushed_model" in events
    # Not a pipeline run: the run listing and "latest run" never pick it.
    assert mlmd_store.run_contexts(store, hist["config"].pipeline_name)[0].name == hist["r4"]["run_id"]


def test_reset_leaves_no_baseline_for_the_next_run(hist):
    reset, r4 = hist["reset"], hist["r4"]
    assert len(reset["revoked"]) >= 3  # R1's, R2's, the manual one (and R3's if it passed)
    assert hist["baseline_after_reset"] is None
    assert r4["baseline_accuracy"] is None and hist["r4_blessing"]["baseline_model"] is None
    assert not any("change vs baseline" in f for f in r4["evaluation_failures"])
    # History stays true: the revoked blessings still say blessed=1.
    from pipeline import mlmd_store
    store = mlmd_store.open_store(hist["config"])
    revoked = store.get_artifacts_by_id(reset["revoked"])
    assert all(mlmd_store.custom_property(a, "blessed") == 1 and a.state == a.ABANDONED
               for a in revoked)
    assert all(mlmd_store.custom_property(a, "revoked_by") == reset["operation"] for a in revoked)


def test_bad_requests_exit_2_with_a_message(hist, tmp_path):
    code, _, err = ops("bless", "--workdir", hist["workdir"], "--version", 9)
    assert code == 2 and "no pushed version 9" in err and "[1, 2]" in err
    code, _, err = ops("runs", "--workdir", tmp_path)
    assert code == 2 and "no MLMD database" in err
    code, _, err = ops("report", "--workdir", hist["workdir"], "--run-id", "nope")
    assert code == 2 and "no run 'nope'" in err
    code, _, err = ops("bless", "--workdir", hist["workdir"])  # neither --version nor --reset
    assert code == 2 and "--version" in err


def test_bless_and_reset_without_runs_exit_2(tmp_path):
    """docs/operations.md: both exit 2 with one line on a workdir without runs (no pipeline run)."""
    code, _, err = ops("bless", "--workdir", tmp_path, "--version", 1)
    assert code == 2 and "no pushed version 1" in err and len(err.strip().splitlines()) == 1
    code, _, err = ops("bless", "--workdir", tmp_path, "--reset")
    assert code == 2 and "no MLMD database" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing created there
