"""pipeline.workdir_lock: one `retrain run` per workdir; readers tell live from dead runs."""

import os
import signal
import subprocess
import sys

import pytest

from pipeline import workdir_lock

_HOLDER = """
import sys, time
from pipeline import workdir_lock
with workdir_lock.hold(sys.argv[1], "run-held"):
    print("held", flush=True)
    time.sleep(120)
"""
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def holder(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=_ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    yield child
    if child.poll() is None:
        child.kill()
    child.wait()


def test_a_second_run_is_refused_naming_the_first(tmp_path, holder):
    assert workdir_lock.live_run_id(str(tmp_path)) == "run-held"
    with pytest.raises(workdir_lock.WorkdirBusy) as err:
        with workdir_lock.hold(str(tmp_path), "run-2"):
            pass
    message = str(err.value)
    assert f"pid {holder.pid}" in message and "run-held" in message and "\n" not in message


def test_a_killed_holder_leaves_no_live_run_and_frees_the_workdir(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert workdir_lock.live_run_id(str(tmp_path)) is None  # its record still names it
    with workdir_lock.hold(str(tmp_path), "run-2"):
        assert workdir_lock.live_run_id(str(tmp_path)) == "run-2"
    assert workdir_lock.live_run_id(str(tmp_path)) is None


def test_no_or_unreadable_owner_record_means_no_live_run(tmp_path):
    assert workdir_lock.live_run_id(str(tmp_path)) is None  # no lock file yet
    (tmp_path / ".retrain.lock").write_text('{"pid": "x"')
    assert workdir_lock.live_run_id(str(tmp_path)) is None
    (tmp_path / ".retrain.lock").write_text('[1, 2]')
    assert workdir_lock.live_run_id(str(tmp_path)) is None


def test_retrain_run_refuses_a_busy_workdir_first(tmp_path, holder, capsys):
    """Before anything else (the missing --images would be refused next): one line, exit 2."""
    from pipeline import cli
    code = cli.main(["run", "--images", str(tmp_path / "none"), "--workdir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"pid {holder.pid}" in err, err
    assert err.startswith(f"retrain: error: workdir {tmp_path} is in use by another")
