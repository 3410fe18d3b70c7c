"""Who owns a lock or a staging folder: a process, told apart from a later one
that reuses its pid by its start time. TF-free (read by `retrain runs` too).

An owner is alive when a process with its pid runs on this host and started at
the recorded time (Linux: /proc/<pid>/stat; elsewhere the pid alone is checked).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Optional


def _start_ticks(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot, None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read(4096).decode("ascii", "replace")
    except OSError:
        return None
    # Field 2 (the command) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 of proc(5), counting from 1
    except (IndexError, ValueError):
        return None


def _pid_runs(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclasses.dataclass(frozen=True)
class Owner:
    pid: int
    start: int  # clock ticks since boot; 0 when the platform does not say
    host: str

    @classmethod
    def current(cls) -> "Owner":
        pid = os.getpid()
        return cls(pid=pid, start=_start_ticks(pid) or 0, host=socket.gethostname())

    def alive(self) -> bool:
        """False only when sure: another host's owner counts as alive."""
        if self.host != socket.gethostname():
            return True
        if not _pid_runs(self.pid):
            return False
        start = _start_ticks(self.pid)
        return not (self.start and start is not None and start != self.start)

    def token(self) -> str:
        """'<pid>-<start>': for names (hosts are recorded where text fits)."""
        return f"{self.pid}-{self.start}"

    @classmethod
    def from_token(cls, token: str) -> Optional["Owner"]:
        """The owner a token() names, on this host; None when it is not one."""
        pid, _, start = token.partition("-")
        if not (pid.isdigit() and start.isdigit()):
            return None
        return cls(pid=int(pid), start=int(start), host=socket.gethostname())
