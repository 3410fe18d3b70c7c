"""pipeline/unchanged.py: when a rerun may end early, and what it records.

A real MLMD SQLite store stands in for a workdir whose last run completed (one
execution in the pipeline's context); no pipeline runs here.
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from conftest import png_bytes
from components import contracts
from pipeline import history, unchanged
from pipeline.config import PipelineConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _images(root, per_class=3):
    for label in ("cats", "dogs"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / label / f"{i}.png").write_bytes(png_bytes(hash((label, i)) % 1000))
    return root


def _add_execution(config, name="Trainer"):
    """An execution in the pipeline's context, as a run (or `retrain bless`) leaves one."""
    cfg = pb.ConnectionConfig()
    cfg.sqlite.filename_uri = config.metadata_path
    cfg.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(cfg)
    ctx_type = store.put_context_type(pb.ContextType(name="pipeline"))
    ctx = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
    if ctx is None:
        [ctx_id] = store.put_contexts([pb.Context(type_id=ctx_type, name=config.pipeline_name)])
        ctx = store.get_contexts_by_id([ctx_id])[0]
    ex_type = store.put_execution_type(pb.ExecutionType(name=name))
    store.put_execution(pb.Execution(type_id=ex_type, last_known_state=pb.Execution.COMPLETE),
                        [], [ctx])


@pytest.fixture
def completed(tmp_path):
    """(config, fingerprint) of a workdir whose last run, run-1, completed with these inputs."""
    config = PipelineConfig(images=str(_images(tmp_path / "images")), workdir=str(tmp_path / "work"))
    os.makedirs(config.workdir)
    _add_execution(config)
    fp, why = unchanged.fingerprint(config)
    assert fp is not None, why
    unchanged.record_completed(config, fp, "run-1")
    return config, fp


def _decide(config):
    return unchanged.check(config, *unchanged.fingerprint(config))


def test_same_inputs_end_early_and_say_since_which_run(completed):
    config, fp = completed
    decision = _decide(config)
    assert decision.unchanged and decision.since_run == "run-1"
    assert decision.reason.startswith("no new images since run run-1")
    assert f"same {fp.entries} files" in decision.reason


def test_changed_image_new_image_and_removed_image_each_run_in_full(completed):
    config, _ = completed
    image = os.path.join(config.images, "cats", "0.png")
    with open(image, "r+b") as f:  # same size, mtime put back: ctime still moves
        stat = os.stat(image)
        data = f.read()
        f.seek(0)
        f.write(data[:-1] + bytes([data[-1] ^ 1]))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    decision = _decide(config)
    assert not decision.unchanged and decision.reason == "images changed since run run-1"

    unchanged.record_completed(config, unchanged.fingerprint(config)[0], "run-2")
    assert _decide(config).unchanged
    with open(os.path.join(config.images, "dogs", "new.png"), "wb") as f:
        f.write(png_bytes(7))
    assert _decide(config).reason == "images changed since run run-2"

    unchanged.record_completed(config, unchanged.fingerprint(config)[0], "run-3")
    os.remove(os.path.join(config.images, "dogs", "new.png"))
    assert not _decide(config).unchanged


@pytest.mark.parametrize("change", [
    {"epochs": 7}, {"min_accuracy": 0.9}, {"backbone": "efficientnet_lite0"},
    {"tflite_variants": ("float32",)}, {"seed": 1}, {"augment_views": 2},
    {"serving_uri": "/elsewhere/serving"}])
def test_a_setting_that_shapes_the_model_or_its_push_runs_in_full(completed, change):
    config, _ = completed
    decision = _decide(dataclasses.replace(config, **change))
    assert not decision.unchanged and decision.reason == "settings changed since run run-1"


def test_label_names_and_beam_workers_do_not_count(completed):
    config, _ = completed
    assert _decide(dataclasses.replace(config, label_names=("cats", "dogs"),
                                       beam_args=["--direct_num_workers=4"])).unchanged


def test_code_version_change_runs_in_full(completed, monkeypatch):
    config, _ = completed
    monkeypatch.setattr(unchanged, "code_digest", lambda: "another version")
    assert _decide(config).reason == "code version changed since run run-1"


def test_later_runs_or_baseline_operations_run_in_full(completed):
    config, _ = completed
    _add_execution(config, name=history.OPERATION_EXECUTION_TYPE)  # e.g. `retrain bless --reset`
    decision = _decide(config)
    assert not decision.unchanged
    assert decision.reason == "other runs or baseline operations since run run-1"


def test_a_version_removed_from_serving_runs_in_full(completed):
    config, fp = completed
    version = os.path.join(config.serving_dir, "1")
    os.makedirs(version)
    open(os.path.join(version, contracts.COMPLETE_MARKER), "w").close()
    assert "pushed versions" in _decide(config).reason
    unchanged.record_completed(config, fp, "run-2")
    assert _decide(config).unchanged


def test_no_or_bad_record_runs_in_full(completed):
    config, _ = completed
    path = unchanged.record_path(config)
    with open(path, "w") as f:
        f.write("{not json")
    assert _decide(config).reason == "no completed run with recorded inputs in this workdir"
    with open(path, "w") as f:
        json.dump({"run_id": "run-1"}, f)
    assert not _decide(config).unchanged
    with open(path, "w") as f:
        f.write(" " * (unchanged.MAX_RECORD_BYTES + 1))
    assert not _decide(config).unchanged
    os.remove(path)  # an older workdir: runs in full, as before
    assert not _decide(config).unchanged


def test_inputs_that_cannot_be_fingerprinted_always_run_in_full(tmp_path, completed):
    config, _ = completed
    assert unchanged.fingerprint(dataclasses.replace(config, images="s3://bucket/images"))[0] is None
    assert unchanged.fingerprint(dataclasses.replace(config, weights="random"))[0] is None
    manifest = tmp_path / "remote.csv"
    manifest.write_text("uri,label\ngs://bucket/a.png,cats\n")
    fp, why = unchanged.fingerprint(dataclasses.replace(config, images=str(manifest)))
    assert fp is None and "gs://" in why
    # No record is kept for such a run, so the next one cannot end early either.
    unchanged.record_completed(config, None, "run-2")
    assert not os.path.exists(unchanged.record_path(config))


def test_manifest_fingerprint_covers_its_rows_and_the_files_they_name(tmp_path, completed):
    config, _ = completed
    manifest = tmp_path / "images.csv"
    manifest.write_text("uri,label\nimages/cats/0.png,cats\nimages/dogs/0.png,dogs\n")
    m_config = dataclasses.replace(config, images=str(manifest))
    first = unchanged.fingerprint(m_config)[0]
    assert first.entries == 2
    (tmp_path / "images" / "dogs" / "0.png").write_bytes(png_bytes(99, size=(40, 30)))
    assert unchanged.fingerprint(m_config)[0].images != first.images
    second = unchanged.fingerprint(m_config)[0]
    manifest.write_text("uri,label\nimages/cats/0.png,cats\nimages/dogs/0.png,cats\n")
    assert unchanged.fingerprint(m_config)[0].images != second.images  # a relabelled row


def test_ended_early_run_is_recorded_listed_and_does_not_block_the_next(completed):
    config, _ = completed
    decision = _decide(config)
    run_id = unchanged.record_unchanged(config, decision)
    assert _decide(config).unchanged  # its own record is no "other run"
    store = history.open_store(config)
    ctx = store.get_context_by_type_and_name("pipeline", config.pipeline_name)
    [row] = unchanged.history_rows(store, ctx)
    assert row["id"] == run_id and row["status"] == "unchanged" and row["since_run"] == "run-1"
    assert row["reason"] == decision.reason and row["pushed_version"] is None
    assert "unchanged" in history.format_runs([row]) and decision.reason in history.format_runs([row])


def test_cli_rerun_ends_early_without_tensorflow_and_force_bypasses_it(completed, capsys):
    config, _ = completed
    argv = ["run", "--images", config.images, "--workdir", config.workdir, "--json"]
    probe = ("import sys; from pipeline import cli; code = cli.main(sys.argv[1:]); "
             "print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_NOT_LOADED'); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.splitlines()[-2])
    assert proc.stdout.splitlines()[-1] == "TF_NOT_LOADED"
    assert summary["unchanged"] is True and summary["unchanged_since"] == "run-1"
    assert summary["pushed_version"] is None and not summary["blessed"]
    assert summary["not_pushed_reason"].startswith("no new images since run run-1")
    page = open(summary["report"], encoding="utf-8").read()
    assert "ended early" in page and 'href="run-1.html"' in page
    store = history.open_store(config)
    rows = unchanged.history_rows(store, store.get_context_by_type_and_name("pipeline", "image-retrain"))
    assert [r["id"] for r in rows] == [summary["run_id"]]
    # --force goes on to the real run, whose preflight stops it here (3 images a class).
    # In process: the unit tier has TensorFlow loaded already.
    from pipeline import cli
    assert cli.main([*argv, "--force"]) == 2
    assert "2 classes have fewer than 10 images (the minimum): 'cats' (3), 'dogs' (3)" in capsys.readouterr().err
