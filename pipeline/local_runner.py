"""Runs create_pipeline() with LocalDagRunner and an MLMD SQLite store."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfx import v1 as tfx  # noqa: E402

from pipeline import preflight, report, run_summary  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.pipeline import create_pipeline  # noqa: E402
from pipeline.progress import Progress  # noqa: E402


def metadata_config(config: PipelineConfig):
    return tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)


def run(config: PipelineConfig, show_progress: bool = False) -> dict:
    """Preflight, run the whole pipeline, return the run summary (see run_summary)
    with the path of its HTML report (pipeline/report.py) under "report".

    show_progress prints live component progress to stderr (pipeline.progress).
    """
    config = preflight.scan(config)
    os.makedirs(config.workdir, exist_ok=True)
    pipeline = create_pipeline(config, metadata_config(config))
    with (Progress(config, len(pipeline.components)) if show_progress
          else contextlib.nullcontext()):
        tfx.orchestration.LocalDagRunner().run(pipeline)
    summary = run_summary.latest_run(config)
    summary["report"] = report.build_report(config, summary)
    return summary
