"""A test hook: kill -9 this process at a named point, so fault tests need no timing.

`point(component, where)` is a no-op unless the environment variable
contracts.TEST_KILL_AT_ENV names that point as "<component>:<where>", e.g.
RETRAIN_TEST_KILL_AT=TFLitePusher:after_rename. The points: "<node id>:after"
for every pipeline node (pipeline/local_runner.py, once its execution is
recorded), "<node id>:running" (its execution recorded as RUNNING, the executor
not started), "TFLitePusher:staged" (files copied to the staging folder) and
"TFLitePusher:after_rename" (a version in place, nothing recorded yet). A ":int" suffix sends SIGINT instead (Ctrl-C at that point).
See tests/e2e/test_faults.py.
"""

from __future__ import annotations

import os
import signal

from components.contracts import TEST_KILL_AT_ENV


def armed() -> bool:
    return bool(os.environ.get(TEST_KILL_AT_ENV))


def point(component: str, where: str) -> None:
    armed_at = os.environ.get(TEST_KILL_AT_ENV)
    if armed_at == f"{component}:{where}":
        os.kill(os.getpid(), signal.SIGKILL)
    elif armed_at == f"{component}:{where}:int":
        os.kill(os.getpid(), signal.SIGINT)
