"""The report's sections: pure functions of a RunRecord and the data
pipeline/report/sources.py read, each returning an HTML fragment.

A plot that fails shows its error in place; a section that raises is replaced
by its error by the page (pipeline/report/page.py).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from components import contracts, continuation
from pipeline.config import PipelineConfig
from pipeline.report import plots
from pipeline.report.html import (DASH, delta, e, figure_or_error, mark, num, pct, size,
                                  table)
from pipeline.report.sources import ClassCounts, LabelCheck, TFLiteFiles, TrainingLog
from pipeline.run_record import Baseline, RunRecord

MAX_SKIPPED_ROWS = 1000
_CHANGE = "eval accuracy &ge; baseline &minus; max_accuracy_drop"


# -------------------------------------------------------------------- verdict

def _class_recall_row(record: RunRecord, drop: float) -> list:
    """The opt-in per-class gate: its verdict is TFMA's (a failure names the class)."""
    check = "each class's recall &ge; baseline's &minus; max_class_recall_drop"
    if record.baseline_accuracy is None:
        return [check, f"no baseline: not applied (max drop {num(drop, 4)})", mark(None)]
    failed = [f for f in (record.evaluation.failures if record.evaluation else ())
              if f.startswith(contracts.CLASS_RECALL_FAILURE_PREFIX)]
    return [check, e("; ".join(failed)) if failed else f"no class dropped more than {num(drop, 4)}",
            mark(not failed)]


def section_verdict(record: RunRecord, served: Dict[int, str]) -> str:
    """Thresholds and how the candidate fared, the baseline, what was (not) pushed.
    `served`: pushed version -> the model URI it was made from."""
    acc, base = record.accuracy, record.baseline_accuracy
    gate = record.gate
    rows = []
    if gate is not None and gate.min_accuracy is not None:
        ok = acc is not None and acc >= gate.min_accuracy
        rows.append(["eval accuracy &ge; min_accuracy",
                     f"{num(acc, 4)} &ge; {num(gate.min_accuracy, 4)}", mark(ok)])
    if gate is not None and gate.max_accuracy_drop is not None:
        drop = gate.max_accuracy_drop
        compared = gate.baseline_compared if gate.baseline_compared is not None else base is not None
        if not compared or base is None:
            rows.append([_CHANGE, f"no baseline: not applied (max drop {num(drop, 4)})", mark(None)])
        else:
            ok = acc is not None and acc >= base - drop - 1e-9
            rows.append([_CHANGE, f"{num(acc, 4)} &ge; {num(base, 4)} &minus; {num(drop, 4)}"
                         f" (change {acc - base:+.4f})" if acc is not None else DASH, mark(ok)])
    if gate is not None and gate.max_class_recall_drop is not None:
        rows.append(_class_recall_row(record, gate.max_class_recall_drop))
    parts = [table(["check", "values", "passed"], rows)] if rows else []
    if gate is not None and gate.source:
        parts.append(f'<p class="note">Thresholds from {e(gate.source)}.</p>')
    failures = record.evaluation.failures if record.evaluation else ()
    if failures:
        parts.append("<p>The Evaluator's validation failed:</p><ul>"
                     + "".join(f"<li><code>{e(f)}</code></li>" for f in failures) + "</ul>")
    parts.append("<p><b>Baseline:</b> " + _describe_baseline(record.baseline, served) + "</p>")
    push = record.push
    if push is not None:
        if push.reason:
            parts.append(f'<p class="bad">Not pushed: {e(push.reason)}</p>')
        if push.not_pushed:
            parts.append("<p>TFLite variants left out:</p><ul>" + "".join(
                f"<li>{e(v)}: {e(r)}</li>" for v, r in sorted(push.not_pushed.items())) + "</ul>")
    failed = [node for node, state in record.states.items() if state == "FAILED"]
    if failed:
        parts.append(f'<p class="bad">Failed step(s): {e(", ".join(failed))}</p>')
    return "".join(parts)


def _describe_baseline(baseline: Optional[Baseline], served: Dict[int, str]) -> str:
    if baseline is None:
        return ("none &mdash; no model was blessed yet (or the baseline was reset), so only the "
                "minimum accuracy applied")
    text = f"Model artifact {e(baseline.model_id)} (<code>{e(baseline.uri)}</code>)"
    if baseline.blessed_from_version is not None:
        text += (f", made the baseline by hand from pushed version "
                 f"{e(baseline.blessed_from_version)} (<code>{e(baseline.manual_operation)}</code>)")
    versions = [v for v, uri in sorted(served.items())
                if baseline.uri and os.path.normpath(uri) == os.path.normpath(baseline.uri)]
    if versions:
        text += f"; served as version {', '.join(map(str, versions))}"
    return text


# ----------------------------------------------------------------------- data

def section_data(record: RunRecord, counts: Optional[ClassCounts],
                 check: Optional[LabelCheck]) -> str:
    """Images per class and split (table, chart), skipped files, the label-space check."""
    parts = []
    if counts is not None and counts.counts:
        c = counts.counts
        classes = _ordered_classes(record, c)
        rows = [[e(k)] + [str(c[k].get(sp, 0)) for sp in counts.splits]
                + [str(sum(c[k].values()))] for k in classes]
        rows.append(["<b>all</b>"] + [f"<b>{sum(c[k].get(sp, 0) for k in classes)}</b>"
                                       for sp in counts.splits]
                    + [f"<b>{sum(sum(v.values()) for v in c.values())}</b>"])
        parts.append(table(["class"] + [e(sp) for sp in counts.splits] + ["total"], rows, "num"))
        parts.append(figure_or_error(
            "class chart", "class-counts", "images per class and split",
            lambda: plots.plot_class_counts(classes, counts.splits, c)))
    elif record.examples:
        parts.append("<p>Examples per split: " + e(", ".join(
            f"{k} {v}" for k, v in sorted(record.examples.items()))) + "</p>")
    parts.append(_skipped(record))
    if check is not None:
        parts.append("<p><b>Label-space check</b> against the baseline: " + (
            "no baseline to compare with." if not check.had_baseline else
            ('<span class="good">same classes, shares within limits.</span>' if not check.problems
             else '<span class="bad">' + e("; ".join(check.problems)) + "</span>")) + "</p>")
    return "".join(parts)


def _ordered_classes(record: RunRecord, counts: Dict[str, Dict[str, int]]) -> List[str]:
    """The run's label order, then any other class seen, sorted."""
    return ([k for k in record.label_names if k in counts]
            + sorted(set(counts) - set(record.label_names)))


def _skipped(record: RunRecord) -> str:
    rows = record.skipped
    total = len(rows) if record.skipped_files is None else record.skipped_files
    if not total:
        return "<p><b>Skipped files:</b> none.</p>"
    by_reason: Dict[str, int] = {}
    for r in rows:
        kind = r.reason.split(":")[0].split("(")[0].strip() or "?"
        by_reason[kind] = by_reason.get(kind, 0) + 1
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1]))
    out = [f"<p><b>Skipped files:</b> {total} ({e(reasons)})"]
    if record.ingestion_report:
        out.append(f"; every file is listed in <code>{e(record.ingestion_report)}</code>")
    out.append(".</p>")
    shown = rows[:MAX_SKIPPED_ROWS]
    out.append(table(["file", "class", "reason"],
                     [[f"<code>{e(r.path)}</code>", e(r.label), e(r.reason)] for r in shown],
                     "skipped"))
    if len(rows) > len(shown):
        out.append(f'<p class="note">First {len(shown)} of {len(rows)} shown.</p>')
    return "".join(out)


# ------------------------------------------------------------------- training

def section_training(log: Optional[TrainingLog]) -> str:
    """Loss and accuracy per epoch, the best epoch, where the TensorBoard logs are."""
    if log is None:
        return "<p>No Trainer output in this run.</p>"
    history = log.history
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
        parts.append(figure_or_error("training curves", "training-curves",
                                     "loss and accuracy per epoch",
                                     lambda: plots.plot_history(history, best)))
        last = {k: v[-1] for k, v in history.items() if v}
        if best:
            last = {k: v[best - 1] for k, v in history.items() if len(v) >= best}
        parts.append(table(["metric", "value" + (f" (epoch {best})" if best else "")],
                           [[e(k), num(v, 4)] for k, v in sorted(last.items())], "num"))
    parts.append(f"<p>TensorBoard: <code>tensorboard --logdir {e(log.folder)}</code> "
                 f"({log.event_files} event file(s)).</p>")
    return "".join(parts)


# ----------------------------------------------------------------- evaluation

def section_evaluation(record: RunRecord, counts: Optional[ClassCounts]) -> str:
    """Accuracy, the confusion matrix, per-class precision/recall against the baseline.
    `counts` (None: unreadable) gives the eval images per class."""
    ev = record.evaluation
    if ev is None:
        return "<p>No evaluation in this run.</p>"
    parts = [f"<p>Eval accuracy <b>{num(ev.accuracy, 4)}</b> on {e(ev.example_count)} eval "
             f"images; baseline on the same images: {num(ev.baseline_accuracy, 4)}.</p>"]
    if ev.confusion_matrix:
        parts.append(figure_or_error(
            "confusion matrix", "confusion-matrix",
            "confusion matrix: rows actual class, columns predicted class",
            lambda: plots.plot_confusion(ev.confusion_matrix, record.label_names)))
        parts.append(_most_confused(ev.confusion_matrix, record.label_names))
    else:
        parts.append("<p>No confusion matrix recorded.</p>")
    eval_images = (counts.counts if counts is not None and "eval" in counts.splits else None)
    worse, rows = [], []
    for name in record.label_names:
        m = ev.per_class.get(name)
        pairs = [(m.precision, m.baseline_precision), (m.recall, m.baseline_recall)] if m else []
        got_worse = any(v is not None and b is not None and v < b - 1e-9 for v, b in pairs)
        if got_worse:
            worse.append(name)
        n = (eval_images.get(name) or {}).get("eval") if eval_images is not None else None
        rows.append([e(name) + (' <span class="bad">&#9660; worse</span>' if got_worse else ""),
                     DASH if n is None else str(n)]
                    + ([num(m.precision), num(m.baseline_precision),
                        delta(m.precision, m.baseline_precision),
                        num(m.recall), num(m.baseline_recall), delta(m.recall, m.baseline_recall)]
                       if m else [DASH, DASH, DASH, DASH, DASH, DASH]))
    head = ["class", "eval images", "precision", "baseline", "change", "recall", "baseline", "change"]
    if worse:
        note = f"<p>Classes that got worse than the baseline: <b>{e(', '.join(worse))}</b>.</p>"
    elif ev.baseline_accuracy is not None:
        note = "<p>No class got worse than the baseline.</p>"
    else:
        note = "<p>No baseline: nothing to compare per class.</p>"
    return "".join(parts) + note + table(head, rows, "num per-class")


MOST_CONFUSED = 10  # rows of the most-confused table


def _most_confused(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> str:
    """The largest off-diagonal cells: which class is taken for which, most often
    (what a 100-class matrix image cannot show legibly)."""
    cells = sorted(((-count, a, p) for a, row in enumerate(matrix) for p, count in enumerate(row)
                    if a != p and count > 0 and a < len(labels) and p < len(labels)))[:MOST_CONFUSED]
    if not cells:
        return "<p>No eval image was misclassified.</p>"
    rows = [[e(labels[a]), e(labels[p]), str(-neg), num(-neg / max(sum(matrix[a]), 1), 2)]
            for neg, a, p in cells]
    return ("<p>Most often confused (actual class taken for the predicted one):</p>"
            + table(["actual", "predicted as", "eval images", "share of the actual class"], rows,
                    "num most-confused"))


# ------------------------------------------------------------ models, timing

def section_tflite(files: Optional[TFLiteFiles]) -> str:
    """The TFLite files: size, single-image latency, parity with the SavedModel."""
    if files is None:
        return "<p>No TFLite files for this run (nothing blessed, or conversion did not run).</p>"
    rows = []
    for f in files.files:
        p = f.parity
        passed = p.passed if p else None
        if p and passed is None and p.agreement is not None and p.bound is not None:
            passed = p.agreement >= p.bound
        rows.append([
            f"<code>{e(f.name)}</code>", e(p.variant if p else ""), size(f.bytes),
            f"{f.latency_ms:.1f} ms <span class=\"note\">({e(f.latency_source)})</span>"
            if f.latency_ms is not None else e(f.latency_source),
            pct(p.agreement if p else None)
            + (f" (bound {pct(p.bound)})" if p and p.bound is not None else "")
            + (f"; confident {pct(p.confident_agreement)}"
               if p and p.confident_agreement is not None and p.agreement != 1.0 else ""),
            pct(p.accuracy if p else None),
            mark(passed) if p else '<span class="na">not recorded</span>',
        ])
    return (f"<p>From the {e(files.origin)}: <code>{e(files.folder)}</code>. Latency: one image, "
            f"TFLite interpreter, 2 threads, on this machine. Parity: top-1 agreement with the "
            f"SavedModel on the eval split; a variant below its bound passes when it meets "
            f"the bound on the confident predictions (the SavedModel's top-1 probability "
            f"&ge; 0.5) and costs at most 1 point of accuracy.</p>"
            + table(["file", "variant", "size", "latency", "parity", "accuracy", "parity ok"],
                    rows, "num"))


def section_backbone(record: RunRecord, export_backbone: Optional[str],
                     settings: PipelineConfig, fine_tune: Optional[Dict] = None) -> str:
    """The frozen CNN: from the Trainer's settings, else the TFLite export's
    record (`export_backbone`), else `settings` (the run settings)."""
    from components import backbones
    cfg = record.trainer_settings
    name, source = cfg.get("backbone"), "the Trainer's settings"
    if not name:
        name, source = export_backbone, "the TFLite export"
    if not name:
        name, source = settings.backbone, "the run settings"
    rows = [["backbone", f"<b>{e(name)}</b> <span class=\"note\">(from {e(source)})</span>"],
            ["weights", e(cfg.get("weights", settings.weights))]]
    try:
        spec = backbones.get_spec(name)
        rows += [["input", f"{spec.input_size}&times;{spec.input_size} RGB"],
                 ["feature vector", f"{spec.feature_dim} floats (frozen; only the softmax head is trained)"
                  if not cfg.get("trainable_blocks") else f"{spec.feature_dim} floats"],
                 ["scaling (inside the model)", e(spec.scaling)]]
        if spec.label:
            rows.append(["description", e(spec.label)])
    except Exception as exc:  # noqa: BLE001 - unknown/removed backbone: show what we know
        rows.append(["spec", e(f"unavailable: {exc}")])
    if cfg.get("trainable_blocks"):  # --trainable-blocks N (components/fine_tune.py)
        rows.append(["trainable blocks", e(f"top {cfg['trainable_blocks']} fine-tuned with the head "
                                           f"(activations cached as {cfg.get('activation_dtype')})")])
        if fine_tune:  # components/trainer.py FineTuneChoice
            def loss(key):
                value = fine_tune.get(key)
                return "n/a" if value is None else f"{float(value):.4f}"
            losses = (f"best eval loss {loss('fine_tuned_eval_loss')} fine-tuned, "
                      f"{loss('head_only_eval_loss')} for the head alone")
            start = continuation.describe(fine_tune.get("start"))
            if start:
                rows.append(["start", e(start)])
            kept = fine_tune.get("kept")
            if kept == "served":
                rows.append(["kept", e(f"the served model's blocks and head: no epoch lowered their eval loss "
                                       f"{loss('served_eval_loss')} ({losses})")])
            elif kept == "fine-tuned":
                rows.append(["kept", e(f"the fine-tuned blocks ({losses})")])
            elif kept:
                rows.append(["kept", '<span class="bad">' + e(f"the head alone on the ImageNet blocks: fine-tuning "
                                                              f"did not lower the eval loss ({losses})") + "</span>"])
    for key in ("epochs", "batch_size", "learning_rate", "patience", "seed"):
        if key in cfg:
            rows.append([e(key), e(cfg[key])])
    if cfg.get("corrupt_train_labels"):
        rows.append(["corrupt_train_labels",
                     '<span class="bad">true: trained on shuffled labels (fault injection)</span>'])
    return table(["", ""], rows, "kv")


def section_timing(record: RunRecord) -> str:
    """Each step's state and wall seconds."""
    states = record.states
    return table(["step", "state", "seconds"],
                 [[e(node), e(states[node]), num(sec, 1)] for node, sec in record.seconds.items()],
                 "num")
