"""A workdir written by the code before the architecture change still works.

MLMD stores artifact type names, and the report and `runs` read files the
components wrote, so moving code can silently orphan old workdirs. The old
workdir here is made by the old code itself: commit OLD_COMMIT (main before
the change) is extracted with `git archive` and run from its own folder with
this environment. Then today's code lists the run, renders its report, and a
new run compares with the old run's blessed model and reuses its features.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import copy_subset

pytestmark = pytest.mark.slow

OLD_COMMIT = "e71acafc0514175fa66a36fc534f9439d1cbcb5e"
REPO = pathlib.Path(__file__).resolve().parents[2]
CLASSES = ["flags", "food_and_drink", "smileys_and_emotion"]
PER_CLASS = 14


def _old_source(dest: pathlib.Path) -> pathlib.Path:
    git = shutil.which("git")
    if git is None or subprocess.run([git, "-C", str(REPO), "cat-file", "-e", OLD_COMMIT],
                                     capture_output=True).returncode != 0:
        pytest.skip(f"needs the git history holding {OLD_COMMIT[:7]} (a shallow or exported checkout)")
    dest.mkdir(parents=True)
    archive = subprocess.run([git, "-C", str(REPO), "archive", OLD_COMMIT], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _retrain(args, cwd=None, pythonpath=None):
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)
    return proc


RUN_ARGS = ["--epochs", "30", "--tflite-variants", "float32", "--json", "--quiet"]


@pytest.fixture(scope="module")
def old_workdir(tmp_path_factory, emoji_root, imagenet_weights):
    tmp = tmp_path_factory.mktemp("old-workdir")
    old = _old_source(tmp / "old-src")
    images = copy_subset(emoji_root, tmp / "images", CLASSES, per_class=PER_CLASS)
    workdir = tmp / "workdir"
    proc = _retrain(["run", "--images", images, "--workdir", workdir, *RUN_ARGS], cwd=old, pythonpath=old)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["blessed"] and summary["pushed_version"] == 1
    return {"tmp": tmp, "workdir": workdir, "images": images, "old": summary}


def test_runs_lists_the_old_run(old_workdir):
    proc = _retrain(["runs", "--workdir", old_workdir["workdir"], "--json"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["id"] == old_workdir["old"]["run_id"] and row["status"] == "complete"
    assert row["blessed"] and row["pushed_version"] == 1
    assert row["baseline"] is True  # its model is what the next run compares with
    assert abs(row["accuracy"] - old_workdir["old"]["accuracy"]) < 1e-9


def test_report_renders_the_old_run(old_workdir):
    proc = _retrain(["report", "--workdir", old_workdir["workdir"], "--no-latency"], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    page = path.read_text()
    assert old_workdir["old"]["run_id"] in page
    assert 'class="error"' not in page and "Traceback" not in page  # every section drew


def test_a_new_run_compares_with_the_old_baseline_and_reuses_its_features(old_workdir, emoji_root):
    for c in CLASSES:  # one new image per class
        new = sorted((emoji_root / c).iterdir())[PER_CLASS]
        shutil.copy(new, old_workdir["images"] / c / new.name)
    proc = _retrain(["run", "--images", old_workdir["images"], "--workdir", old_workdir["workdir"],
                     *RUN_ARGS], cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # The only model in the store is the old run's: a baseline accuracy (measured
    # on today's eval split) means the resolver found it.
    assert summary["baseline_accuracy"] is not None
    assert _computed_features(old_workdir["workdir"]) == [PER_CLASS * 3, 3]
    # The old blessed model has no head-only signature: the Evaluator ran the images (issue 15).
    assert _eval_inputs(old_workdir["workdir"]) == [
        ("images", "the baseline model has no serving_features signature")]


def _artifacts(workdir):
    """Every artifact in the workdir's MLMD store, oldest first (read directly)."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(workdir / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return sorted(metadata_store.MetadataStore(config).get_artifacts(), key=lambda a: a.id)


def _computed_features(workdir):
    """BottleneckGen's `computed` count per run, oldest first."""
    return [int(a.custom_properties["computed"].int_value) for a in _artifacts(workdir)
            if "computed" in a.custom_properties]


def _eval_inputs(workdir):
    """(eval_input, reason) of each evaluation that records them (code since issue 15)."""
    return [(a.custom_properties["eval_input"].string_value,
             a.custom_properties["eval_input_reason"].string_value)
            for a in _artifacts(workdir) if "eval_input" in a.custom_properties]
