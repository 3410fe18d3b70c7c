"""Runs create_pipeline() with LocalDagRunner and an MLMD SQLite store."""

from __future__ import annotations

import contextlib
import logging
import os

from tfx.orchestration import metadata as tfx_metadata
from tfx.dsl.components.base.base_beam_component import BaseBeamComponent

from components import contracts, object_store
from components.contracts import FEATURE_CACHE_RESOLVER
from pipeline import (dag_runner, preflight, report, run_outcome, run_record, run_summary,
                      unchanged, workdir_lock)
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
from pipeline.progress import Progress


def metadata_config(config: PipelineConfig):
    return tfx_metadata.sqlite_metadata_connection_config(config.metadata_path)


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


def run(config: PipelineConfig, show_progress: bool = False, force: bool = False) -> dict:
    """Preflight, run the whole pipeline, return the run summary (see run_summary)
    with the path of its HTML report (pipeline/report/) under "report".

    show_progress prints live component progress to stderr (pipeline.progress).
    force (`retrain run --force`): a gated run (object-store root) runs in full too.
    """
    object_store.prepare(config.locations())  # s3://: settings, login check, tf.io.gfile plugin
    config = preflight.scan(config)
    os.makedirs(config.workdir, exist_ok=True)
    run_id = dag_runner.new_run_id()
    # One run per workdir (WorkdirBusy names the other); the lock also tells
    # `retrain runs` this run is live. Runs that died before recording how they
    # ended are settled first (pipeline/run_outcome.py), and so are staging
    # folders of pushes whose process died.
    with workdir_lock.hold(config.workdir, run_id):
        run_outcome.settle(config, run_id)
        from components.tflite_pusher import remove_stale_staging
        remove_stale_staging(config.serving_dir)
        inputs, _ = unchanged.fingerprint(config)  # before it runs: a file changed meanwhile is new next time
        _run(config, run_id, show_progress, force)
        record = run_record.by_id(config, run_id)
        if record is not None and record.status == contracts.RUN_COMPLETE:
            unchanged.record_completed(config, inputs, record.run_id)
        summary = run_summary.summarize(record)
        summary["report"] = report.build_report(config, record, latest=True)
    return summary


def _run(config: PipelineConfig, run_id: str, show_progress: bool, force: bool = False) -> None:
    """Runs the pipeline as run `run_id` and records how it ended."""
    pipeline = create_pipeline(config, metadata_config(config))
    quiet_first_run = _FirstRunCacheFilter()
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(quiet_first_run)
    outcome = contracts.RUN_FAILED
    try:
        beam_steps = [c.id for c in pipeline.components if isinstance(c, BaseBeamComponent)]
        with (Progress(config, len(pipeline.components), beam_steps=beam_steps) if show_progress
              else contextlib.nullcontext()):
            dag_runner.run(pipeline, run_id, force)
        outcome = contracts.RUN_COMPLETE
    except KeyboardInterrupt:  # Ctrl-C
        outcome = contracts.RUN_INTERRUPTED
        raise
    finally:
        absl_logger.removeFilter(quiet_first_run)
        run_outcome.record(config, run_id, outcome)
