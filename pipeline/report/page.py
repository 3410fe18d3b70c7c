"""The whole page: reads each section's data (pipeline/report/sources.py),
renders the sections (pipeline/report/sections.py) under a header that states
the verdict. A section whose data or rendering fails shows its error instead."""

from __future__ import annotations

import datetime
import time
from typing import Callable, Dict, Optional

from components import contracts
from pipeline.config import PipelineConfig
from pipeline.report import galleries, sections, sources
from pipeline.report.html import e, log, num
from pipeline.run_record import RunRecord

SECTIONS = ("verdict", "data", "audit", "training", "evaluation", "misclassified", "tflite",
            "backbone", "timing")
TITLES = {
    "verdict": "Verdict", "data": "Data", "audit": "Data audit", "training": "Training",
    "evaluation": "Evaluation", "misclassified": "Misclassified eval images",
    "tflite": "TFLite models", "backbone": "Backbone",
    "timing": "Steps and timing",
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:1.2em 1.5em 3em}
header{padding:1em 1.5em;color:#fff}
header.shipped{background:#1f7a3d}header.blessed{background:#8a6d00}header.refused{background:#a12a2a}
header h1{margin:.1em 0;font-size:1.5em}header p{margin:.2em 0;opacity:.9}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.6em 1.2em 1em;margin:1em 0}
h2{font-size:1.15em;border-bottom:1px solid #eee;padding-bottom:.3em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border-bottom:1px solid #e6e8eb;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#f0f2f5}table.num td{font-variant-numeric:tabular-nums}
table.skipped{font-size:.85em}code{font-size:.92em;word-break:break-all}
.good{color:#1f7a3d;font-weight:600}.bad{color:#b3261e;font-weight:600}.na{color:#777}
.note{color:#666;font-size:.88em}.error{color:#b3261e;background:#fdecea;padding:.5em}
figure{margin:.6em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#666}nav a{margin-right:1em;color:#2458b3}
""" + galleries.CSS


def section_builders(record: RunRecord, config: PipelineConfig,
                     measure_latency: bool = True) -> Dict[str, Callable[[], str]]:
    """Section key -> a call that reads the section's data and renders it."""
    counts: Optional[sources.ClassCounts] = None
    counts_error: Optional[Exception] = None
    try:  # read once: the data section fails without it, the evaluation section does without
        counts = sources.class_counts(record)
    except Exception as exc:  # noqa: BLE001
        log.warning("report: statistics unreadable: %s", exc)
        counts_error = exc

    def data() -> str:
        if counts_error is not None:
            raise counts_error
        return sections.section_data(record, counts, sources.label_check(record))

    def backbone() -> str:
        export = None if record.trainer_settings.get("backbone") else sources.export_backbone(record)
        fine_tune = sources.fine_tune_choice(record) if record.trainer_settings.get("trainable_blocks") else None
        return sections.section_backbone(record, export, config, fine_tune)

    return {
        "verdict": lambda: sections.section_verdict(record, sources.served_models(config.serving_dir)),
        "data": data,
        "audit": lambda: galleries.section_audit(record),
        "training": lambda: sections.section_training(sources.training_log(record)),
        "evaluation": lambda: sections.section_evaluation(record, counts),
        "misclassified": lambda: galleries.section_misclassified(record),
        "tflite": lambda: sections.section_tflite(
            sources.tflite_files(sources.tflite_folders(record), measure_latency)),
        "backbone": backbone,
        "timing": lambda: sections.section_timing(record),
    }


def headline(record: RunRecord) -> tuple:
    """(header CSS class, verdict text)."""
    if record.status in (contracts.RUN_INTERRUPTED, contracts.RUN_FAILED):
        last = next((s.node for s in reversed(record.steps) if s.state != "EMPTY"), "none")
        return "refused", (f"Run {record.status} (last step: {last})"
                           + (f"; version {record.pushed_version} was pushed"
                              if record.pushed_version is not None else ": nothing shipped"))
    if record.pushed_version is not None:
        return "shipped", f"Blessed and shipped as version {record.pushed_version}"
    if record.blessed:
        return "blessed", "Blessed, but nothing was pushed"
    return "refused", "Not blessed: nothing shipped"


def render(record: RunRecord, config: PipelineConfig, measure_latency: bool = True) -> str:
    """The report page of `record` (a whole HTML document)."""
    builders = section_builders(record, config, measure_latency)
    bodies = []
    for key in SECTIONS:
        try:
            body = builders[key]()
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the report
            log.warning("report: section %s failed", key, exc_info=True)
            body = (f'<p class="error">This section could not be built: '
                    f'{e(type(exc).__name__)}: {e(exc)}</p>')
        bodies.append(f'<section id="{key}"><h2>{TITLES[key]}</h2>{body}</section>')
    cls, verdict = headline(record)
    when = (datetime.datetime.fromtimestamp(record.created_ms / 1000.0).astimezone()
            .strftime("%Y-%m-%d %H:%M:%S %Z") if record.created_ms else "")
    acc, base = record.accuracy, record.baseline_accuracy
    sub = (f"eval accuracy {num(acc, 4)}"
           + (f" vs baseline {num(base, 4)}" if base is not None else " (no baseline)"))
    nav = "".join(f'<a href="#{k}">{TITLES[k]}</a>' for k in SECTIONS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>retrain run {e(record.run_id)}: {e(verdict)}</title>
<style>{CSS}</style></head>
<body><header class="{cls}"><h1>{e(verdict)}</h1>
<p>{e(sub)}</p><p>run <code>{e(record.run_id)}</code> {e(when)} &middot; pipeline {e(config.pipeline_name)}
&middot; workdir <code>{e(config.workdir)}</code></p></header>
<main><nav>{nav}</nav>{''.join(bodies)}
<p class="note">Generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))} by pipeline/report.</p></main>
</body></html>
"""
