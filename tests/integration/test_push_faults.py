"""kill -9 around a push (issue 17 items 1 and 7): the pusher in a child process
armed to kill itself at a named point (components/kill_hook.py). Each child
imports TensorFlow (~1 min on a loaded 2-core machine): integration tier."""

import json
import os
import subprocess
import sys

from components.contracts import list_versions
from components.tflite_pusher import publish_version


def _sources(tmp_path):
    (tmp_path / "m.tflite").write_bytes(b"tflite-bytes")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    return {"model.tflite": str(tmp_path / "m.tflite"), "labels.txt": str(tmp_path / "labels.txt")}


_PUSH_AND_DIE = """
import json, sys
from components.tflite_pusher import publish_version
files = json.loads(sys.argv[2])
publish_version(sys.argv[1], files, {"run_id": "run-A", "variants": ["float32"]})
"""


def _push_in_child(serving, files, kill_at):
    """publish_version in a child process armed to kill -9 itself at `kill_at`."""
    env = dict(os.environ, RETRAIN_TEST_KILL_AT=kill_at)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-c", _PUSH_AND_DIE, str(serving), json.dumps(files)],
                          env=env, cwd=root, capture_output=True, timeout=240)


def test_kill_after_rename_leaves_a_complete_version_naming_its_run(tmp_path):
    """Issue 17 item 1: the window between the rename and MLMD's record. The
    version is complete and its manifest names the run (pipeline/run_record.py
    reads it back for `retrain runs`)."""
    from components.tflite_pusher import serving_manifests
    serving = tmp_path / "serving"
    child = _push_in_child(serving, _sources(tmp_path), "TFLitePusher:after_rename")
    assert child.returncode == -9, child.stderr[-2000:]
    assert list_versions(str(serving)) == [1] and os.listdir(serving) == ["1"]
    assert json.loads((serving / "1" / "metrics.json").read_text())["run_id"] == "run-A"
    assert serving_manifests(str(serving)) == {"run-A": [1]}


def test_staging_of_a_killed_push_is_removed_by_the_next_push(tmp_path):
    """Issue 17 item 7: a kill mid-push left .incoming-* forever."""
    serving = tmp_path / "serving"
    child = _push_in_child(serving, _sources(tmp_path), "TFLitePusher:staged")
    assert child.returncode == -9, child.stderr[-2000:]
    [leftover] = os.listdir(serving)
    assert leftover.startswith(".incoming-") and list_versions(str(serving)) == []
    assert publish_version(str(serving), _sources(tmp_path), {}) == 1
    assert sorted(os.listdir(serving)) == ["1"]


