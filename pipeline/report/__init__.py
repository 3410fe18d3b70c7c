"""A self-contained HTML report of one pipeline run.

``build_report(config, record, latest=...)`` writes
``<workdir>/reports/<run id>.html`` (and, when the pipeline root is a remote URI
as on Kubeflow, ``<pipeline root>/reports/<run id>.html``) and returns the
first path; with ``latest=True`` (the run is the workdir's newest) also
``<workdir>/reports/latest.html``. Sections (pipeline/report/sections.py):

  verdict     blessed or not, pushed version, the thresholds that decided it and
              how the candidate fared against each, the baseline it was compared with
  data        images per class per split (table + chart), skipped files with reasons,
              the label-space check
  training    loss and accuracy per epoch (chart), best epoch, TensorBoard log dir
  evaluation  confusion matrix (image), per-class precision/recall with the change
              against the baseline (classes that got worse are marked)
  tflite      the TFLite files (pushed version, or the run's TFLite/Trainer output):
              size, single-image latency, parity with the SavedModel
  backbone    the frozen CNN: name, weights, input size, feature size, scaling
  timing      each component's state and wall seconds

The run's facts come from its RunRecord (pipeline/run_record.py); the files
only the report needs are read by pipeline/report/sources.py; sections are pure
functions of both; plots (pipeline/report/plots.py) are matplotlib PNGs embedded
as data: URIs. The page loads nothing else (a Content-Security-Policy forbids
it) and has no scripts, so it opens offline. A section that can't be built
shows the error instead; the report itself never fails a run (build_report
logs and returns what it could write).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from pipeline.config import PipelineConfig
from pipeline.report.html import e, log
from pipeline.report.page import SECTIONS, render
from pipeline.report.sources import measure_latency_ms
from pipeline.run_record import RunRecord

__all__ = ["LATEST", "REPORTS_DIR", "SECTIONS", "build_report", "measure_latency_ms",
           "render", "report_dir", "report_name"]

REPORTS_DIR = "reports"
LATEST = "latest.html"


def report_dir(config: PipelineConfig) -> str:
    return os.path.join(config.workdir, REPORTS_DIR)


def report_name(run_id: str) -> str:
    """A file name for a run id (run ids are timestamps with ':' and the like)."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", str(run_id)).strip("._") or "run") + ".html"


def build_report(config: PipelineConfig, record: RunRecord, *, latest: bool,
                 measure_latency: bool = True) -> str:
    """Writes the run's report, and latest.html when `latest` (the newest run's
    report only); returns its path. Never raises for a report problem: logs it
    and returns the path written (a page that says what went wrong, at worst)."""
    path = os.path.join(report_dir(config), report_name(record.run_id or "run"))
    try:
        page = render(record, config, measure_latency)
    except Exception as exc:  # noqa: BLE001 - the run's result must not depend on its report
        log.warning("report: could not build the report", exc_info=True)
        page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>report failed</title>"
                f"</head><body><p>The report for run {e(record.run_id)} could not be "
                f"built: {e(type(exc).__name__)}: {e(exc)}</p><pre>{e(_as_json(record))}"
                f"</pre></body></html>")
    targets = [path] + ([os.path.join(os.path.dirname(path), LATEST)] if latest else [])
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for target in targets:
            tmp = target + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(page)
            os.replace(tmp, target)
    except Exception:  # noqa: BLE001
        log.warning("report: could not write %s", path, exc_info=True)
    if config.pipeline_root_uri:  # Kubeflow: beside the pipeline's artifacts
        remote = os.path.join(config.pipeline_root_uri, REPORTS_DIR, os.path.basename(path))
        try:
            import tensorflow as tf
            tf.io.gfile.makedirs(os.path.dirname(remote))
            with tf.io.gfile.GFile(remote, "w") as f:
                f.write(page)
        except Exception:  # noqa: BLE001
            log.warning("report: could not write %s", remote, exc_info=True)
    return path


def _as_json(record: RunRecord) -> str:
    try:
        return json.dumps(dataclasses.asdict(record), indent=2, default=str)
    except Exception:  # noqa: BLE001 - the fallback page must not fail too
        return repr(record)
