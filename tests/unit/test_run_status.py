"""RunRecord.status (issue 17 item 6): a run whose process died is interrupted, never running."""

import pytest

from pipeline.report.page import headline
from pipeline.run_record import Push, RunRecord, Step

DONE = ("ImageExampleGen", "Trainer", "Evaluator", "TFLiteExport", "TFLitePusher")


def _record(states, **kw):
    return RunRecord(run_id="r", steps=tuple(Step(n, s, 1.0) for n, s in states), **kw)


@pytest.mark.parametrize("states, live, status", [
    ([(n, "COMPLETE") for n in DONE], False, "complete"),
    ([("ImageExampleGen", "COMPLETE"), ("Trainer", "RUNNING")], True, "running"),
    # kill -9 inside a step: its execution stays RUNNING in MLMD
    ([("ImageExampleGen", "COMPLETE"), ("Trainer", "RUNNING")], False, "interrupted"),
    # kill -9 between steps: every recorded step finished, the rest never started
    ([("ImageExampleGen", "COMPLETE"), ("Trainer", "COMPLETE")], False, "interrupted"),
    ([("ImageExampleGen", "COMPLETE"), ("Trainer", "FAILED")], False, "failed"),
])
def test_status_from_steps_and_liveness(states, live, status):
    assert _record(states, live=live).status == status


def test_a_recorded_outcome_decides():
    steps = [("ImageExampleGen", "COMPLETE"), ("Trainer", "RUNNING")]
    assert _record(steps, outcome="interrupted", live=False).status == "interrupted"
    assert _record([(n, "COMPLETE") for n in DONE], outcome="failed").status == "failed"


def test_report_headline_says_the_run_was_cut_short():
    blessed_then_killed = _record([("Evaluator", "COMPLETE"), ("TFLiteExport", "RUNNING")],
                                  blessed=True)
    cls, text = headline(blessed_then_killed)
    assert (cls, text) == ("refused", "Run interrupted (last step: TFLiteExport): nothing shipped")
    pushed = _record([("TFLitePusher", "RUNNING")], blessed=True,
                     push=Push(pushed=True, version=3, recorded=False))
    assert headline(pushed)[1] == "Run interrupted (last step: TFLitePusher); version 3 was pushed"
