"""One `retrain run` per workdir at a time: an exclusive flock on
<workdir>/.retrain.lock, held for the whole run.

The lock file also says who holds it (pid, its start time, host, run id), so a
second run can name the first, and `retrain runs`/`report` can tell the run
that is still going from runs whose process died (pipeline/run_record.py):
readers check that process (components/process_owner.py) and never take the
lock, so a `retrain runs` can't make a starting run fail. The kernel drops the
lock when its process ends, kill -9 included.
Local workdirs only (flock on NFS is unreliable; the MLMD SQLite store needs a
local disk anyway).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from typing import Iterator, Optional

from components.contracts import WORKDIR_LOCK_FILE
from components.process_owner import Owner

MAX_LOCK_FILE_BYTES = 4096


class WorkdirBusy(RuntimeError):
    """Another live process runs the pipeline in this workdir; the message names it."""


def _path(workdir: str) -> str:
    return os.path.join(workdir, WORKDIR_LOCK_FILE)


def _read_owner(f) -> dict:
    f.seek(0)
    try:
        owner = json.loads(f.read(MAX_LOCK_FILE_BYTES) or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _busy(workdir: str, other: dict) -> WorkdirBusy:
    return WorkdirBusy(
        f"workdir {workdir} is in use by another `retrain run` (pid {other.get('pid', '?')}"
        f" on {other.get('host', '?')}, run {other.get('run_id', '?')}, started "
        f"{other.get('started', '?')}): wait for it to end or use another --workdir")


def check_free(workdir: str) -> None:
    """Raises WorkdirBusy when a live run holds the workdir: `retrain run` asks
    before loading TensorFlow, so a second run is refused in a second (hold()
    still decides: a run may start in between)."""
    if live_run_id(workdir) is not None:
        try:
            with open(_path(workdir), "r", encoding="utf-8") as f:
                raise _busy(workdir, _read_owner(f))
        except OSError:
            pass


@contextlib.contextmanager
def hold(workdir: str, run_id: str) -> Iterator[None]:
    """Holds the workdir's lock for `run_id`; raises WorkdirBusy when another process does."""
    os.makedirs(workdir, exist_ok=True)
    # "a+": opening must not truncate the owner record of a run that holds the lock.
    with open(_path(workdir), "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(workdir, _read_owner(f)) from None
        me = Owner.current()
        f.seek(0)
        f.truncate()
        json.dump({"pid": me.pid, "start": me.start, "host": me.host, "run_id": run_id,
                   "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}, f)
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()  # nobody holds it: no owner to name
            fcntl.flock(f, fcntl.LOCK_UN)


def live_run_id(workdir: str) -> Optional[str]:
    """The run id of the live process that holds the workdir's lock, None when none does."""
    try:
        with open(_path(workdir), "r", encoding="utf-8") as f:
            owner = _read_owner(f)
    except OSError:
        return None
    try:
        process = Owner(pid=int(owner["pid"]), start=int(owner.get("start") or 0),
                        host=str(owner["host"]))
    except (KeyError, TypeError, ValueError):
        return None
    return str(owner.get("run_id") or "") if process.alive() else None
