"""Beam counters of a finished pipeline, summed per name."""

from __future__ import annotations

from typing import Dict

import apache_beam as beam


def counters(result, namespace: str) -> Dict[str, int]:
    """{counter name: committed total} of ``namespace`` in a finished pipeline's
    ``result``: a runner reports one result per step that used the counter."""
    totals: Dict[str, int] = {}
    for m in result.metrics().query(beam.metrics.MetricsFilter().with_namespace(namespace))["counters"]:
        totals[m.key.metric.name] = totals.get(m.key.metric.name, 0) + int(m.committed)
    return totals
