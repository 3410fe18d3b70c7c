"""Runs create_pipeline() with LocalDagRunner and an MLMD SQLite store."""

from __future__ import annotations

import contextlib
import logging
import os

from tfx import v1 as tfx
from tfx.dsl.components.base.base_beam_component import BaseBeamComponent

from components import object_store
from components.contracts import FEATURE_CACHE_RESOLVER
from pipeline import preflight, report, run_record, run_summary, unchanged
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
from pipeline.progress import Progress


def metadata_config(config: PipelineConfig):
    return tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)


class _FirstRunCacheFilter(logging.Filter):
    """Drops the traceback TFX logs when the feature-cache resolver finds no cache.

    That is every first run (LatestArtifactStrategy returns None on an empty
    store; BottleneckGen takes the input as optional and computes everything),
    so the traceback would only alarm; any other resolution error still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "Input resolution error" not in str(record.msg):
            return True
        text = record.getMessage()
        return not (FEATURE_CACHE_RESOLVER in text and "returned None" in text)


def run(config: PipelineConfig, show_progress: bool = False) -> dict:
    """Preflight, run the whole pipeline, return the run summary (see run_summary)
    with the path of its HTML report (pipeline/report/) under "report".

    show_progress prints live component progress to stderr (pipeline.progress).
    """
    object_store.prepare(config.locations())  # s3://: settings, login check, tf.io.gfile plugin
    config = preflight.scan(config)
    os.makedirs(config.workdir, exist_ok=True)
    inputs, _ = unchanged.fingerprint(config)  # before it runs: a file changed meanwhile is new next time
    pipeline = create_pipeline(config, metadata_config(config))
    quiet_first_run = _FirstRunCacheFilter()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(quiet_first_run)
    try:
        beam_steps = [c.id for c in pipeline.components if isinstance(c, BaseBeamComponent)]
        with (Progress(config, len(pipeline.components), beam_steps=beam_steps) if show_progress
              else contextlib.nullcontext()):
            tfx.orchestration.LocalDagRunner().run(pipeline)
    finally:
        absl_logger.removeFilter(quiet_first_run)
    record = run_record.latest(config)
    if record is not None and record.status == "complete":
        unchanged.record_completed(config, inputs, record.run_id)
    summary = run_summary.summarize(record)
    summary["report"] = report.build_report(config, record, latest=True)
    return summary
