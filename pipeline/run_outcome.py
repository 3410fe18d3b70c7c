"""How each local run ended, recorded in MLMD, and what an unfinished run leaves.

The local runner records a run's outcome (complete, failed, interrupted) as a
custom property of its ``pipeline_run`` context when the run ends. A run killed
before that (kill -9, power loss, a full disk) has none: RunRecord.status calls
it ``interrupted`` once no live process holds the workdir (pipeline/workdir_lock.py).

An unfinished run's blessing is never a baseline: the Evaluator blessed a model
whose export or push did not finish, so nothing vouches that it was served.
``settle`` marks such blessings ``ABANDONED`` (with ``revoked_by`` naming why,
as `retrain bless --reset` does), so the next run's LatestBlessedModelStrategy,
which resolves LIVE artifacts only, skips them, and TFX's cache never reuses
the Evaluator execution that made them. A version such a run pushed stays in
serving/ (consumers may hold it) and is shown from its manifest; `retrain bless
--version N` makes it the baseline deliberately.
"""

from __future__ import annotations

import logging
from typing import List, Optional

from ml_metadata.proto import metadata_store_pb2

from components import contracts
from pipeline import mlmd_store
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)
UNFINISHED_RUN = "unfinished-run"  # revoked_by of an unfinished run's blessing
_Artifact = metadata_store_pb2.Artifact


def _abandon_blessings(store, run_ctx, outcome: str) -> List[int]:
    """Marks the LIVE blessed ModelBlessings of run `run_ctx` ABANDONED; their ids."""
    abandoned = []
    for ex in mlmd_store.run_executions(store, run_ctx):
        for a in mlmd_store.output_artifacts(store, ex.id).get("blessing", []):
            if a.state == _Artifact.LIVE and mlmd_store.custom_property(a, "blessed") == 1:
                a.state = _Artifact.ABANDONED
                a.custom_properties["revoked_by"].string_value = UNFINISHED_RUN
                a.custom_properties["revoked_reason"].string_value = (
                    f"run {run_ctx.name} {outcome}: its blessing is no baseline")
                abandoned.append(a)
    if abandoned:
        store.put_artifacts(abandoned)
    return [a.id for a in abandoned]


def _mark(store, run_ctx, outcome: str) -> None:
    run_ctx.custom_properties[contracts.RUN_OUTCOME_PROPERTY].string_value = outcome
    store.put_contexts([run_ctx])
    if outcome != contracts.RUN_COMPLETE:
        _abandon_blessings(store, run_ctx, outcome)


def record(config: PipelineConfig, run_id: str, outcome: str) -> None:
    """Records how run `run_id` ended (best effort: a full disk must not hide the
    run's own error; the next run then settles it as interrupted)."""
    try:
        store = mlmd_store.open_store(config, write=True)
        ctx = store.get_context_by_type_and_name(mlmd_store.RUN_CONTEXT_TYPE, run_id)
        if ctx is not None:  # None: it ended before its first node started
            _mark(store, ctx, outcome)
    except Exception as e:  # noqa: BLE001 - see docstring
        log.warning("could not record run %s as %s: %s", run_id, outcome, e)


def settle(config: PipelineConfig, live_run_id: Optional[str]) -> List[str]:
    """Records how every earlier run without an outcome ended (interrupted,
    failed, or complete for runs of releases that recorded none) and abandons
    the blessings of those that did not finish; the run ids it recorded.

    Called by a run holding the workdir lock: no other run is going on.
    """
    from pipeline.run_record import RunRecord
    try:
        store = mlmd_store.open_store(config, write=True)
    except FileNotFoundError:
        return []
    settled = []
    for ctx in mlmd_store.run_contexts(store, config.pipeline_name):
        if ctx.name == live_run_id:
            continue
        recorded = mlmd_store.custom_property(ctx, contracts.RUN_OUTCOME_PROPERTY)
        if recorded is None:
            _mark(store, ctx, RunRecord.from_store(store, ctx, config, read_files=False).status)
            settled.append(ctx.name)
        elif recorded != contracts.RUN_COMPLETE:
            _abandon_blessings(store, ctx, recorded)  # its own record() was cut short
    return settled
