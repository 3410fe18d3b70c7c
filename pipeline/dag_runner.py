"""LocalDagRunner with a run id chosen by the caller, and the test kill points.

TFX's LocalDagRunner names a run ``datetime.now().isoformat()`` inside
run_with_ir; choosing it beforehand (same format) lets the process record it in
the workdir lock and report its own run by id, never "the newest run".

It also binds ChangeCheck's ``force`` parameter (a gated local run on an object
store, kubeflow/change_gate.py): TFX's IR compiler keeps no falsy default
(dsl/compiler/compiler_utils.py set_runtime_parameter_pb, ``if default_value:``),
so its default 0 would be lost; ``retrain run --force`` binds 1.
"""

from __future__ import annotations

import contextlib
import datetime
from typing import Iterator

from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.portable import launcher, runtime_parameter_utils
from tfx.dsl.compiler import constants

from components import contracts, kill_hook


def new_run_id() -> str:
    return datetime.datetime.now().isoformat()


class _Runner(LocalDagRunner):

    def __init__(self, run_id: str, force: bool = False):
        super().__init__()
        self.run_id = run_id
        self.force = force

    def run_with_ir(self, pipeline, run_options=None):
        # Substituted here, TFX's own substitution finds nothing left to fill.
        runtime_parameter_utils.substitute_runtime_parameter(
            pipeline, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: self.run_id,
                       contracts.FORCE_PARAMETER: int(self.force)})
        return super().run_with_ir(pipeline, run_options=run_options)


@contextlib.contextmanager
def _kill_points() -> Iterator[None]:
    """Arms "<node>:running" and "<node>:after" (components/kill_hook.py)."""
    if not kill_hook.armed():
        yield
        return
    launch, run_executor = launcher.Launcher.launch, launcher.Launcher._run_executor

    def node(self) -> str:
        return self._pipeline_node.node_info.id

    def launch_then_maybe_die(self, *args, **kwargs):
        result = launch(self, *args, **kwargs)
        kill_hook.point(node(self), "after")
        return result

    def maybe_die_then_run(self, *args, **kwargs):
        kill_hook.point(node(self), "running")
        return run_executor(self, *args, **kwargs)

    launcher.Launcher.launch = launch_then_maybe_die
    launcher.Launcher._run_executor = maybe_die_then_run
    try:
        yield
    finally:
        launcher.Launcher.launch, launcher.Launcher._run_executor = launch, run_executor


def run(pipeline, run_id: str, force: bool = False) -> None:
    """Runs `pipeline` locally as run `run_id`; `force`: ChangeCheck's parameter."""
    with _kill_points():
        _Runner(run_id, force).run(pipeline)
