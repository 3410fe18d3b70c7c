"""A self-contained HTML report of one pipeline run.

``build_report(config, summary)`` writes ``<workdir>/reports/<run id>.html`` and
a copy as ``<workdir>/reports/latest.html`` (and, when the pipeline root is a
remote URI as on Kubeflow, ``<pipeline root>/reports/<run id>.html``) and
returns the first path. Sections:

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

Plots are matplotlib PNGs embedded as data: URIs; the page loads nothing else
(a Content-Security-Policy forbids it) and has no scripts, so it opens offline.
A section that can't be built shows the error instead; the report itself never
fails a run (build_report logs and returns what it could write).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import logging
import os
import re
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from components.contracts import METRICS_FILE, PARITY_FILE
from components.tflite.parity import ParityReport, VariantParity, pushed_variants
from pipeline import run_summary
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

REPORTS_DIR = "reports"
LATEST = "latest.html"
SECTIONS = ("verdict", "data", "training", "evaluation", "tflite", "backbone", "timing")
MAX_SKIPPED_ROWS = 1000
LATENCY_RUNS = 20
_TFLITE_DIR = "tflite"  # components.trainer.TFLITE_DIR (older Trainers exported there)


# -------------------------------------------------------------------- helpers

def report_dir(config: PipelineConfig) -> str:
    return os.path.join(config.workdir, REPORTS_DIR)


def report_name(run_id: str) -> str:
    """A file name for a run id (run ids are timestamps with ':' and the like)."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", str(run_id)).strip("._") or "run") + ".html"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Optional[float], digits: int = 3) -> str:
    return "&ndash;" if value is None else f"{value:.{digits}f}"


def _pct(value: Optional[float]) -> str:
    return "&ndash;" if value is None else f"{100.0 * value:.1f}%"


def _size(n: Optional[int]) -> str:
    if n is None:
        return "&ndash;"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


def _png(fig) -> str:
    """A matplotlib Figure as a data: URI (Agg canvas; no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def _exists(path: str) -> bool:
    import tensorflow as tf  # tf.io.gfile: the pipeline root may be gs:// or s3://
    return bool(path) and tf.io.gfile.exists(path)


def _read_json(path: str) -> Optional[Any]:
    import tensorflow as tf
    if not _exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape with _e)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


# ------------------------------------------------------------ reading the run

class RunData:
    """Everything the sections use: the summary, MLMD artifacts, and files."""

    def __init__(self, config: PipelineConfig, summary: Dict[str, Any]):
        self.config = config
        self.summary = summary
        self.run_ctx = None
        self.created_ms: Optional[int] = None
        # node id -> output key -> [mlmd Artifact]; node id -> mlmd Execution
        self.outputs: Dict[str, Dict[str, List[Any]]] = {}
        self.executions: Dict[str, Any] = {}
        self.store = None
        self.mlmd_error: Optional[str] = None
        try:
            self._read_mlmd()
        except Exception as e:  # noqa: BLE001 - e.g. Kubeflow: no local store; sections degrade
            self.mlmd_error = f"{type(e).__name__}: {e}"
            log.warning("report: could not read MLMD for run %s: %s", summary.get("run_id"), e)
        names = list(config.label_names) or list(summary.get("label_names") or [])
        if not names and self.artifact("examples") is not None:
            names = json.loads(run_summary._prop(self.artifact("examples"), "label_names", "[]"))
        self.label_names: List[str] = names
        self._evaluation: Optional[Dict[str, Any]] = None

    def _read_mlmd(self) -> None:
        store = run_summary.open_store(self.config)
        self.store = store
        run_id = self.summary.get("run_id")
        ctx = store.get_context_by_type_and_name("pipeline_run", str(run_id)) if run_id else None
        if ctx is None:
            runs = run_summary.run_contexts(store, self.config.pipeline_name)
            ctx = runs[0] if runs and not run_id else None
        if ctx is None:
            raise LookupError(f"no run {run_id!r} in {self.config.metadata_path}")
        self.run_ctx, self.created_ms = ctx, ctx.create_time_since_epoch
        for ex in sorted(store.get_executions_by_context(ctx.id),
                         key=lambda e: (e.create_time_since_epoch, e.id)):
            node = run_summary._node_id(store, ex, self.config.pipeline_name)
            self.executions[node] = ex
            self.outputs[node] = run_summary._outputs(store, ex.id)

    def artifact(self, key: str, node: Optional[str] = None):
        """The run's first output artifact under `key` (of `node`, or any node)."""
        for n, outs in self.outputs.items():
            if (node is None or n == node) and outs.get(key):
                return outs[key][0]
        return None

    def exec_property(self, node: str, name: str) -> Optional[Any]:
        ex = self.executions.get(node)
        return run_summary._prop(ex, name) if ex is not None else None

    def evaluation(self) -> Optional[Dict[str, Any]]:
        if self._evaluation is None:
            ev = self.artifact("evaluation")
            if ev is None or not self.label_names:
                return None
            from components import evaluation
            self._evaluation = evaluation.summarize(ev.uri, self.label_names)
        return self._evaluation

    def trainer_config(self) -> Dict[str, Any]:
        raw = self.exec_property("Trainer", "custom_config")
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}


# ------------------------------------------------------------------- sections

def _section_verdict(d: RunData) -> str:
    s = d.summary
    blessing = d.artifact("blessing")
    pushed = d.artifact("pushed_model")
    thresholds = _thresholds(d)
    acc, base = s.get("accuracy"), s.get("baseline_accuracy")
    rows = []
    min_acc = thresholds.get("min_accuracy")
    if min_acc is not None:
        ok = acc is not None and acc >= min_acc
        rows.append(["eval accuracy &ge; min_accuracy",
                     f"{_num(acc, 4)} &ge; {_num(min_acc, 4)}", _mark(ok)])
    drop = thresholds.get("max_accuracy_drop")
    if drop is not None:
        if base is None:
            rows.append(["eval accuracy &ge; baseline &minus; max_accuracy_drop",
                         f"no baseline: not applied (max drop {_num(drop, 4)})", _mark(None)])
        else:
            ok = acc is not None and acc >= base - drop - 1e-9
            rows.append(["eval accuracy &ge; baseline &minus; max_accuracy_drop",
                         f"{_num(acc, 4)} &ge; {_num(base, 4)} &minus; {_num(drop, 4)}"
                         f" (change {acc - base:+.4f})" if acc is not None else "&ndash;", _mark(ok)])
    parts = [_table(["check", "values", "passed"], rows)] if rows else []
    if thresholds.get("source"):
        parts.append(f'<p class="note">Thresholds from {_e(thresholds["source"])}.</p>')
    failures = s.get("evaluation_failures") or []
    if failures:
        parts.append("<p>The Evaluator's validation failed:</p><ul>"
                     + "".join(f"<li><code>{_e(f)}</code></li>" for f in failures) + "</ul>")
    baseline_id = run_summary._prop(blessing, "baseline_model_id") if blessing is not None else None
    baseline_uri = run_summary._prop(blessing, "baseline_model") if blessing is not None else None
    parts.append("<p><b>Baseline:</b> " + _describe_baseline(d, baseline_id, baseline_uri) + "</p>")
    if pushed is not None:
        reason = run_summary._prop(pushed, "not_pushed_reason")
        if reason:
            parts.append(f'<p class="bad">Not pushed: {_e(reason)}</p>')
        not_pushed = run_summary._prop(pushed, "not_pushed_variants")
        if not_pushed and not_pushed not in ("{}", "null"):
            items = json.loads(not_pushed)
            parts.append("<p>TFLite variants left out:</p><ul>" + "".join(
                f"<li>{_e(v)}: {_e(r)}</li>" for v, r in sorted(items.items())) + "</ul>")
    failed = [n for n, st in (s.get("states") or {}).items() if st == "FAILED"]
    if failed:
        parts.append(f'<p class="bad">Failed step(s): {_e(", ".join(failed))}</p>')
    return "".join(parts)


def _mark(ok: Optional[bool]) -> str:
    if ok is None:
        return '<span class="na">n/a</span>'
    return '<span class="good">yes</span>' if ok else '<span class="bad">no</span>'


def _thresholds(d: RunData) -> Dict[str, Any]:
    """min_accuracy / max_accuracy_drop as the Evaluator had them (its eval config)."""
    ev = d.artifact("evaluation")
    if ev is not None:
        try:
            from tensorflow_model_analysis.writers import eval_config_writer
            eval_config = eval_config_writer.load_eval_run(ev.uri)[0]
            out: Dict[str, Any] = {}
            for spec in eval_config.metrics_specs:
                for metric in spec.metrics:
                    if not metric.HasField("threshold"):
                        continue
                    t = metric.threshold
                    if t.value_threshold.HasField("lower_bound"):
                        out["min_accuracy"] = t.value_threshold.lower_bound.value
                    if t.change_threshold.HasField("absolute"):
                        # configured as -(max_accuracy_drop) - 1e-9 (components/evaluation.py)
                        out["max_accuracy_drop"] = round(-t.change_threshold.absolute.value - 1e-9, 9)
        except Exception as e:  # noqa: BLE001
            log.warning("report: eval config unreadable: %s", e)
            out = {}
        if "min_accuracy" in out and "max_accuracy_drop" in out:
            return dict(out, source="the Evaluator's eval config")
    else:
        out = {}
    # Without a baseline TFX's Evaluator drops change thresholds from its config;
    # the Pusher records the whole gate as an execution property.
    gate = d.exec_property("TFLitePusher", "gate")
    try:
        gate = json.loads(gate) if gate else {}
    except ValueError:
        gate = {}
    source = "the Pusher's gate setting" if gate else "the run settings"
    fallback = {"min_accuracy": gate.get("min_accuracy", d.config.min_accuracy),
                "max_accuracy_drop": gate.get("max_accuracy_drop", d.config.max_accuracy_drop)}
    if not out:
        return dict(fallback, source=source)
    return {**fallback, **out,
            "source": f"the Evaluator's eval config (max_accuracy_drop: {source})"}


def _pushed_versions(config: PipelineConfig) -> Dict[int, Dict[str, Any]]:
    from components.tflite_pusher import list_versions  # complete ones: _SUCCESS written
    out = {}
    for version in list_versions(config.serving_dir):
        metrics = _read_json(os.path.join(config.serving_dir, str(version), METRICS_FILE))
        if metrics:
            out[version] = metrics
    return out


def _describe_baseline(d: RunData, model_id: Optional[int], uri: Optional[str]) -> str:
    if model_id is None and not uri:
        return ("none &mdash; no model was blessed yet (or the baseline was reset), so only the "
                "minimum accuracy applied")
    text = f"Model artifact {_e(model_id)} (<code>{_e(uri)}</code>)"
    if d.store is not None and model_id is not None:
        found = d.store.get_artifacts_by_id([int(model_id)])
        if found and run_summary._prop(found[0], "blessed_from_version") is not None:
            text += (f", made the baseline by hand from pushed version "
                     f"{_e(run_summary._prop(found[0], 'blessed_from_version'))} "
                     f"(<code>{_e(run_summary._prop(found[0], 'manual_operation'))}</code>)")
    versions = [v for v, m in sorted(_pushed_versions(d.config).items())
                if uri and os.path.normpath(str(m.get("model_uri", ""))) == os.path.normpath(uri)]
    if versions:
        text += f"; served as version {', '.join(map(str, versions))}"
    return text


def _class_counts(d: RunData) -> Tuple[List[str], Dict[str, Dict[str, int]]]:
    """(splits, class -> split -> images) from StatisticsGen's label_name histogram."""
    stats = d.artifact("statistics")
    if stats is None:
        return [], {}
    from components.label_guard import class_counts_from_statistics
    splits = json.loads(stats.properties["split_names"].string_value) \
        if "split_names" in stats.properties else ["train", "eval"]
    counts: Dict[str, Dict[str, int]] = {}
    for split in splits:
        for label, n in class_counts_from_statistics(stats.uri, [split]).items():
            counts.setdefault(label, {})[split] = n
    return splits, counts


def _section_data(d: RunData) -> str:
    s = d.summary
    parts = []
    splits, counts = _class_counts(d)
    if counts:
        classes = [c for c in d.label_names if c in counts] + sorted(set(counts) - set(d.label_names))
        rows = [[_e(c)] + [str(counts[c].get(sp, 0)) for sp in splits]
                + [str(sum(counts[c].values()))] for c in classes]
        rows.append(["<b>all</b>"] + [f"<b>{sum(counts[c].get(sp, 0) for c in classes)}</b>"
                                       for sp in splits]
                    + [f"<b>{sum(sum(v.values()) for v in counts.values())}</b>"])
        parts.append(_table(["class"] + [_e(sp) for sp in splits] + ["total"], rows, "num"))
        try:
            parts.append(_img(_plot_class_counts(classes, splits, counts), "class-counts",
                              "images per class and split"))
        except Exception as e:  # noqa: BLE001
            parts.append(_error("class chart", e))
    elif s.get("examples"):
        parts.append("<p>Examples per split: " + _e(", ".join(
            f"{k} {v}" for k, v in sorted(s["examples"].items()))) + "</p>")
    parts.append(_skipped_html(d))
    check = d.artifact("label_check")
    report = _read_json(os.path.join(check.uri, "label_check.json")) if check is not None else None
    if report is not None:
        problems = report.get("problems") or []
        parts.append("<p><b>Label-space check</b> against the baseline: " + (
            "no baseline to compare with." if not report.get("baseline") else
            ('<span class="good">same classes, shares within limits.</span>' if not problems else
             '<span class="bad">' + _e("; ".join(problems)) + "</span>")) + "</p>")
    return "".join(parts)


def _skipped_html(d: RunData) -> str:
    rows = d.summary.get("skipped") or []
    examples = d.artifact("examples")
    if examples is not None:
        try:
            from components.image_example_gen import read_report
            rows = [r for r in read_report(examples.uri) if r.get("status") == "skipped"]
        except Exception as e:  # noqa: BLE001 - fall back to the summary's first 100
            log.warning("report: ingestion report unreadable: %s", e)
    total = d.summary.get("skipped_files")
    total = len(rows) if total is None else total
    if not total:
        return "<p><b>Skipped files:</b> none.</p>"
    by_reason: Dict[str, int] = {}
    for r in rows:
        kind = str(r.get("reason") or "").split(":")[0].split("(")[0].strip() or "?"
        by_reason[kind] = by_reason.get(kind, 0) + 1
    out = [f"<p><b>Skipped files:</b> {total} "
           f"({_e(', '.join(f'{k}: {v}' for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])))})"]
    if d.summary.get("ingestion_report"):
        out.append(f"; every file is listed in <code>{_e(d.summary['ingestion_report'])}</code>")
    out.append(".</p>")
    shown = rows[:MAX_SKIPPED_ROWS]
    out.append(_table(["file", "class", "reason"],
                      [[f"<code>{_e(r.get('path'))}</code>", _e(r.get("label")), _e(r.get("reason"))]
                       for r in shown], "skipped"))
    if len(rows) > len(shown):
        out.append(f'<p class="note">First {len(shown)} of {len(rows)} shown.</p>')
    return "".join(out)


def _plot_class_counts(classes, splits, counts) -> str:
    fig = _figure(max(4.0, 0.7 * len(classes) + 2.0), 3.0)
    ax = fig.add_subplot()
    bottom = [0] * len(classes)
    for split in splits:
        values = [counts[c].get(split, 0) for c in classes]
        ax.bar(range(len(classes)), values, bottom=bottom, label=split)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _section_training(d: RunData) -> str:
    model_run = d.artifact("model_run")
    if model_run is None:
        return "<p>No Trainer output in this run.</p>"
    training = os.path.join(model_run.uri, "training")
    history = _read_json(os.path.join(training, "history.json"))
    parts = []
    if not history:
        parts.append("<p>No training history recorded.</p>")
    else:
        epochs = len(history.get("loss") or [])
        val = history.get("val_loss") or []
        best = min(range(len(val)), key=val.__getitem__) + 1 if val else None
        parts.append(f"<p>{epochs} epoch(s)"
                     + (f"; best eval loss at epoch {best} (its weights were kept: early stopping)"
                        if best else "") + ".</p>")
        try:
            parts.append(_img(_plot_history(history, best), "training-curves",
                              "loss and accuracy per epoch"))
        except Exception as e:  # noqa: BLE001
            parts.append(_error("training curves", e))
        last = {k: v[-1] for k, v in history.items() if v}
        if best:
            last = {k: v[best - 1] for k, v in history.items() if len(v) >= best}
        parts.append(_table(["metric", "value" + (f" (epoch {best})" if best else "")],
                            [[_e(k), _num(v, 4)] for k, v in sorted(last.items())], "num"))
    parts.append(f"<p>TensorBoard: <code>tensorboard --logdir {_e(training)}</code> "
                 f"({_count_event_files(training)} event file(s)).</p>")
    return "".join(parts)


def _count_event_files(path: str) -> int:
    import tensorflow as tf
    if not tf.io.gfile.isdir(path):
        return 0
    return sum(1 for root, _, files in tf.io.gfile.walk(path)
               for f in files if "tfevents" in f)


def _plot_history(history: Dict[str, List[float]], best: Optional[int]) -> str:
    fig = _figure(9.0, 3.2)
    for i, (metric, title) in enumerate((("loss", "loss"), ("accuracy", "accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for key, label in ((metric, "train"), (f"val_{metric}", "eval")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="." if len(values) < 40 else None,
                        label=label)
        if best:
            ax.axvline(best, color="grey", linestyle=":", label=f"best (epoch {best})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    return _png(fig)


def _section_evaluation(d: RunData) -> str:
    result = d.evaluation()
    if result is None:
        return "<p>No evaluation in this run.</p>"
    parts = [f"<p>Eval accuracy <b>{_num(result.get('accuracy'), 4)}</b> on "
             f"{_e(result.get('example_count'))} eval images; baseline on the same images: "
             f"{_num(result.get('baseline_accuracy'), 4)}.</p>"]
    matrix = result.get("confusion_matrix")
    if matrix:
        try:
            parts.append(_img(_plot_confusion(matrix, d.label_names), "confusion-matrix",
                              "confusion matrix: rows actual class, columns predicted class"))
        except Exception as e:  # noqa: BLE001
            parts.append(_error("confusion matrix", e))
    else:
        parts.append("<p>No confusion matrix recorded.</p>")
    parts.append(_per_class_table(d, result))
    return "".join(parts)


def _plot_confusion(matrix: List[List[int]], labels: Sequence[str]) -> str:
    import numpy as np
    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = max(4.0, 0.65 * n + 2.5)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.6 else "black", fontsize=9 if n < 15 else 6)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    fig.colorbar(im, ax=ax, label="share of the actual class")
    return _png(fig)


def _delta(value: Optional[float], base: Optional[float]) -> str:
    if value is None or base is None:
        return "&ndash;"
    diff = value - base
    cls = "bad" if diff < -1e-9 else ("good" if diff > 1e-9 else "")
    return f'<span class="{cls}">{diff:+.3f}</span>'


def _per_class_table(d: RunData, result: Dict[str, Any]) -> str:
    per_class = result.get("per_class") or {}
    splits, counts = [], {}
    try:
        splits, counts = _class_counts(d)
    except Exception as e:  # noqa: BLE001
        log.warning("report: statistics unreadable: %s", e)
    eval_split = "eval" if "eval" in splits else None
    worse = []
    rows = []
    for c in d.label_names:
        m = per_class.get(c) or {}
        got_worse = any(m.get(k) is not None and m.get(f"baseline_{k}") is not None
                        and m[k] < m[f"baseline_{k}"] - 1e-9 for k in ("precision", "recall"))
        if got_worse:
            worse.append(c)
        rows.append([
            _e(c) + (' <span class="bad">&#9660; worse</span>' if got_worse else ""),
            str(counts.get(c, {}).get(eval_split, "&ndash;")) if eval_split else "&ndash;",
            _num(m.get("precision")), _num(m.get("baseline_precision")),
            _delta(m.get("precision"), m.get("baseline_precision")),
            _num(m.get("recall")), _num(m.get("baseline_recall")),
            _delta(m.get("recall"), m.get("baseline_recall")),
        ])
    head = ["class", "eval images", "precision", "baseline", "change", "recall", "baseline", "change"]
    note = ("<p>Classes that got worse than the baseline: <b>" + _e(", ".join(worse)) + "</b>.</p>"
            if worse else ("<p>No class got worse than the baseline.</p>"
                           if result.get("baseline_accuracy") is not None else
                           "<p>No baseline: nothing to compare per class.</p>"))
    return note + _table(head, rows, "num per-class")


def _tflite_dirs(d: RunData) -> List[Tuple[str, str]]:
    """[(label, folder)] where this run's TFLite files are, best first."""
    out = []
    pushed_dir = d.summary.get("pushed_dir")
    if pushed_dir:
        out.append((f"pushed version {d.summary.get('pushed_version')}", pushed_dir))
    tfl = d.artifact("tflite_models")
    if tfl is not None:
        out.append(("TFLite export output", tfl.uri))
    model = d.artifact("model", "Trainer") or d.artifact("model")
    if model is not None:
        out.append(("Trainer output", os.path.join(model.uri, _TFLITE_DIR)))
    return out


def _parity(folder: str) -> Dict[str, VariantParity]:
    """file name -> its variant's parity (parity.json, or metrics.json's tflite record)."""
    by_file = {}
    if _exists(os.path.join(folder, PARITY_FILE)):
        by_file = {v.file: v for v in ParityReport.read(folder).variants}
    metrics = _read_json(os.path.join(folder, METRICS_FILE)) or {}
    if metrics.get("tflite"):
        for v in pushed_variants(metrics["tflite"], os.path.join(folder, METRICS_FILE)):
            by_file.setdefault(v.file, v)
    return by_file


def measure_latency_ms(path: str, runs: int = LATENCY_RUNS, num_threads: int = 2) -> float:
    """Median wall time of one single-image invoke() (random pixels), after 2 warm-ups."""
    import numpy as np
    import tensorflow as tf
    interp = tf.lite.Interpreter(model_path=path, num_threads=num_threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=inp["shape"]).astype(inp["dtype"])
    times = []
    for i in range(runs + 2):
        interp.set_tensor(inp["index"], data)
        start = time.perf_counter()
        interp.invoke()
        if i >= 2:
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _section_tflite(d: RunData, measure: bool = True) -> str:
    import tensorflow as tf
    for label, folder in _tflite_dirs(d):
        if not tf.io.gfile.isdir(folder):
            continue
        files = sorted(f for f in tf.io.gfile.listdir(folder) if f.endswith(".tflite"))
        if not files:
            continue
        parity = _parity(folder)
        rows = []
        for name in files:
            path = os.path.join(folder, name)
            p = parity.get(name)
            # parity.json records no latency: unmeasured cells read "recorded", as they always did
            latency, how = None, "recorded"
            if measure:
                try:
                    latency, how = measure_latency_ms(path), f"measured here, median of {LATENCY_RUNS}"
                except Exception as e:  # noqa: BLE001
                    latency, how = None, f"not measured: {type(e).__name__}"
            agreement = p.agreement if p else None
            bound = p.bound if p else None
            rows.append([
                f"<code>{_e(name)}</code>", _e(p.variant if p else ""),
                _size(tf.io.gfile.stat(path).length),
                f"{latency:.1f} ms <span class=\"note\">({_e(how)})</span>"
                if latency is not None else _e(how),
                _pct(agreement) + (f" (bound {_pct(bound)})" if bound is not None else ""),
                _pct(p.accuracy if p else None),
                _mark(p.passed) if p else '<span class="na">not recorded</span>',
            ])
        return (f"<p>From the {_e(label)}: <code>{_e(folder)}</code>. Latency: one image, "
                f"TFLite interpreter, 2 threads, on this machine. Parity: top-1 agreement with the "
                f"SavedModel on the eval split.</p>"
                + _table(["file", "variant", "size", "latency", "parity", "accuracy", "parity ok"],
                         rows, "num"))
    return "<p>No TFLite files for this run (nothing blessed, or conversion did not run).</p>"


def _section_backbone(d: RunData) -> str:
    from components import backbones
    cfg = d.trainer_config()
    name = cfg.get("backbone")
    source = "the Trainer's settings"
    if not name:
        tfl = d.artifact("tflite_models")
        if tfl is not None and _exists(os.path.join(tfl.uri, PARITY_FILE)):
            name, source = ParityReport.read(tfl.uri).backbone, "the TFLite export"
    if not name:
        name, source = d.config.backbone, "the run settings"
    weights = cfg.get("weights", d.config.weights)
    rows = [["backbone", f"<b>{_e(name)}</b> <span class=\"note\">(from {_e(source)})</span>"],
            ["weights", _e(weights)]]
    try:
        spec = backbones.get_spec(name)
        rows += [["input", f"{spec.input_size}&times;{spec.input_size} RGB"],
                 ["feature vector", f"{spec.feature_dim} floats (frozen; only the softmax head is trained)"],
                 ["scaling (inside the model)", _e(spec.scaling)]]
        if spec.label:
            rows.append(["description", _e(spec.label)])
    except Exception as e:  # noqa: BLE001 - unknown/removed backbone: show what we know
        rows.append(["spec", _e(f"unavailable: {e}")])
    for key in ("epochs", "batch_size", "learning_rate", "patience", "seed"):
        if key in cfg:
            rows.append([_e(key), _e(cfg[key])])
    if cfg.get("corrupt_train_labels"):
        rows.append(["corrupt_train_labels",
                     '<span class="bad">true: trained on shuffled labels (fault injection)</span>'])
    return _table(["", ""], rows, "kv")


def _section_timing(d: RunData) -> str:
    seconds = d.summary.get("seconds") or {}
    states = d.summary.get("states") or {}
    rows = [[_e(node), _e(states.get(node, "")), _num(sec, 1)] for node, sec in seconds.items()]
    total = d.summary.get("total_seconds")
    out = _table(["step", "state", "seconds"], rows, "num")
    if total is not None:
        out += f"<p>Total: {_num(total, 1)} s.</p>"
    return out


def _img(data_uri: str, ident: str, alt: str) -> str:
    return f'<figure><img id="{ident}" src="{data_uri}" alt="{_e(alt)}"><figcaption>{_e(alt)}</figcaption></figure>'


def _error(what: str, e: BaseException) -> str:
    log.warning("report: %s failed: %s: %s", what, type(e).__name__, e)
    return f'<p class="error">Could not draw the {_e(what)}: {_e(type(e).__name__)}: {_e(e)}</p>'


_TITLES = {
    "verdict": "Verdict", "data": "Data", "training": "Training",
    "evaluation": "Evaluation", "tflite": "TFLite models", "backbone": "Backbone",
    "timing": "Steps and timing",
}

_CSS = """
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
"""


def render(d: RunData, measure_latency: bool = True) -> str:
    s = d.summary
    builders: Dict[str, Callable[[], str]] = {
        "verdict": lambda: _section_verdict(d), "data": lambda: _section_data(d),
        "training": lambda: _section_training(d), "evaluation": lambda: _section_evaluation(d),
        "tflite": lambda: _section_tflite(d, measure_latency), "backbone": lambda: _section_backbone(d),
        "timing": lambda: _section_timing(d),
    }
    sections = []
    for key in SECTIONS:
        try:
            body = builders[key]()
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the report
            log.warning("report: section %s failed", key, exc_info=True)
            body = f'<p class="error">This section could not be built: {_e(type(e).__name__)}: {_e(e)}</p>'
        sections.append(f'<section id="{key}"><h2>{_TITLES[key]}</h2>{body}</section>')
    if s.get("pushed_version") is not None:
        cls, verdict = "shipped", f"Blessed and shipped as version {s['pushed_version']}"
    elif s.get("blessed"):
        cls, verdict = "blessed", "Blessed, but nothing was pushed"
    else:
        cls, verdict = "refused", "Not blessed: nothing shipped"
    when = (datetime.datetime.fromtimestamp(d.created_ms / 1000.0).astimezone()
            .strftime("%Y-%m-%d %H:%M:%S %Z") if d.created_ms else "")
    acc, base = s.get("accuracy"), s.get("baseline_accuracy")
    sub = (f"eval accuracy {_num(acc, 4)}"
           + (f" vs baseline {_num(base, 4)}" if base is not None else " (no baseline)"))
    nav = "".join(f'<a href="#{k}">{_TITLES[k]}</a>' for k in SECTIONS)
    warn = (f'<p class="error">MLMD could not be read ({_e(d.mlmd_error)}): only the run '
            f'summary is shown.</p>' if d.mlmd_error else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>retrain run {_e(s.get('run_id'))}: {_e(verdict)}</title>
<style>{_CSS}</style></head>
<body><header class="{cls}"><h1>{_e(verdict)}</h1>
<p>{_e(sub)}</p><p>run <code>{_e(s.get('run_id'))}</code> {_e(when)} &middot; pipeline {_e(d.config.pipeline_name)}
&middot; workdir <code>{_e(d.config.workdir)}</code></p></header>
<main><nav>{nav}</nav>{warn}{''.join(sections)}
<p class="note">Generated {_e(time.strftime('%Y-%m-%d %H:%M:%S'))} by pipeline/report.py.</p></main>
</body></html>
"""


def build_report(config: PipelineConfig, summary: Dict[str, Any],
                 measure_latency: bool = True) -> str:
    """Writes the run's report (and latest.html); returns its path. Never raises
    for a report problem: logs it and returns the path written (a page that
    says what went wrong, in the worst case)."""
    path = os.path.join(report_dir(config), report_name(summary.get("run_id") or "run"))
    try:
        page = render(RunData(config, summary), measure_latency)
    except Exception as e:  # noqa: BLE001 - the run's result must not depend on its report
        log.warning("report: could not build the report", exc_info=True)
        page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>report failed</title>"
                f"</head><body><p>The report for run {_e(summary.get('run_id'))} could not be "
                f"built: {_e(type(e).__name__)}: {_e(e)}</p><pre>{_e(json.dumps(summary, indent=2, default=str))}"
                f"</pre></body></html>")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for target in (path, os.path.join(os.path.dirname(path), LATEST)):
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
