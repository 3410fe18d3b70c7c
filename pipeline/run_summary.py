"""The run summary: the JSON object `retrain run --json` prints last, made from a RunRecord."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from pipeline import audit_cli, run_record
from pipeline.run_record import RunRecord

MAX_LISTED_SKIPS = 100  # the full list is in the ingestion report


def summarize(record: RunRecord) -> Dict[str, Any]:
    """The summary of a run (keys documented in docs/operations.md, "The JSON run summary")."""
    push = record.push or run_record.Push()
    ev = record.evaluation
    has_baseline = ev is not None and ev.baseline_accuracy is not None
    return {
        "run_id": record.run_id, "blessed": record.blessed,
        "pushed_version": record.pushed_version, "pushed_dir": push.destination,
        "accuracy": record.accuracy, "baseline_accuracy": record.baseline_accuracy,
        "examples": dict(record.examples), "skipped_files": record.skipped_files,
        "ingestion_report": record.ingestion_report,
        "skipped": [{"path": s.path, "reason": s.reason}
                    for s in record.skipped[:MAX_LISTED_SKIPS]],
        "evaluation_failures": list(ev.failures) if ev else [],
        "per_class": {name: _class_metrics(m, has_baseline)
                      for name, m in ev.per_class.items()} if ev else {},
        "pushed_variants": list(push.variants), "not_pushed": dict(push.not_pushed),
        "not_pushed_reason": push.reason or record.ended_early,
        "seconds": record.seconds, "states": record.states,
        "label_names": list(record.label_names),
        "audit": audit_cli.summary_audit(record.uris.data_audit),
        # The registry path's ChangeCheck stopped the run (kubeflow/change_gate.py).
        **({"unchanged": True} if record.ended_early else {}),
    }


def _class_metrics(m: run_record.ClassMetrics, has_baseline: bool) -> Dict[str, Optional[float]]:
    # Without a baseline TFMA computes no baseline_* metrics: leave the keys out.
    return {k: v for k, v in dataclasses.asdict(m).items()
            if has_baseline or not k.startswith("baseline_")}

