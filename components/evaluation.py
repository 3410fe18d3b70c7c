"""Evaluator configuration (the gate) and reading its results back.

The gate on the candidate's eval accuracy:
  * value threshold:  accuracy >= min_accuracy (always applies);
  * change threshold: accuracy >= baseline accuracy - max_accuracy_drop, where
    the baseline is the latest blessed model. On a first run there is no
    baseline; TFX's Evaluator then drops change thresholds (rubber stamp) and
    only the value threshold decides.

Opt-in per-class gate (max_class_recall_drop, `--max-class-recall-drop`): the
candidate's recall on each class must be >= the baseline's minus the drop, even
when overall accuracy passes. It is TFMA's own: a metrics spec binarized by
class_ids with a Recall named CLASS_RECALL carrying a change threshold, so TFMA's
validator (tensorflow_model_analysis/evaluators/metrics_validator.py) refuses
the blessing and names the class in its failure (sub_key.class_id).

That Recall counts an example of class c as recalled when the model gives c a
probability > 0.5 (Recall's default threshold, set explicitly), not when c is
the argmax (the report's per-class table): matched against TFMA 0.47.1's source,
a threshold is keyed by the spec's sub-keys (metrics/metric_specs.py,
_create_sub_keys: class_id alone) while a Recall configured with top_k adds
top_k to its own key (metrics/confusion_matrix_metrics.py,
_validate_and_update_sub_key), so a top-k recall's threshold is never checked
and fails as "missing". Above 0.5 a class is the argmax, so a class the
candidate stops predicting loses its recall either way. The explicit threshold
also keeps TFMA off its calibration-histogram path (metrics/binary_confusion_matrices.py),
which gave a never-predicted class recall 1.0 at top_k (issue 17, item 9).
A class without eval examples has no recall (NaN fails any threshold): the
Evaluator keeps only the classes present in the eval split (components/evaluator.py).
The gate costs TFMA a pass per class over every example: with 120 classes and
2,000 eval examples, 33 s against 4.1 s without it (one model; the benchmark
below), so it stays opt-in.

Without the gate, no metric is binarized by class: the report's per-class
precision and recall come from the confusion matrix (summarize), each example
counted once at its argmax. A binarized top-k Recall and Precision per class,
computed on every run until 2026-12-01 and read by nothing, cost the same
per-class pass on the calibration-histogram path: the Evaluator took 8.1 s
instead of 5.7 s on 436 eval examples of 9 classes with a baseline, and TFMA
36 s instead of 4.1 s on 2,000 examples of 120 classes, one model
(python -m benchmarks.evaluator_classes: results/evaluator_classes.json).

The Evaluator (components/evaluator.EvaluatorExecutor) records the gate
it applied as ``contracts.GATE_FILE`` in its ``evaluation`` output (write_gate):
TFMA's own eval config loses the change threshold when there is no baseline.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import tensorflow_model_analysis as tfma

from components import contracts

ACCURACY = "sparse_categorical_accuracy"
CLASS_RECALL = "class_recall"  # the per-class gate's Recall (binarized by class_ids)
# Class c is predicted when its probability is > 0.5 (see the module docstring).
CLASS_RECALL_THRESHOLD = 0.5
CLASS_RECALL_CONFIG = '"name": "%s", "thresholds": [%s]' % (CLASS_RECALL, CLASS_RECALL_THRESHOLD)
CANDIDATE = "candidate"
BASELINE = "baseline"
# Change = candidate - baseline must be > -max_accuracy_drop - CHANGE_EPSILON,
# so that "equal to the baseline" passes at drop 0.
CHANGE_EPSILON = 1e-9


def make_eval_config(label_names: Sequence[str], min_accuracy: float,
                     max_accuracy_drop: float,
                     max_class_recall_drop: Optional[float] = None) -> tfma.EvalConfig:
    """The Evaluator's config; max_class_recall_drop None leaves the per-class gate off
    (and the config as it was before the gate existed)."""
    def spec(name: str, is_baseline: bool) -> tfma.ModelSpec:
        return tfma.ModelSpec(name=name, is_baseline=is_baseline,
                              signature_name="serving_default", label_key=contracts.LABEL_KEY,
                              prediction_key="probabilities")

    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": float(min_accuracy)}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -float(max_accuracy_drop) - CHANGE_EPSILON}))
    config = tfma.EvalConfig(
        model_specs=[spec(CANDIDATE, False), spec(BASELINE, True)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[
            # Per-class precision and recall come from the confusion matrix (summarize).
            tfma.MetricsSpec(metrics=[
                tfma.MetricConfig(class_name="ExampleCount"),
                tfma.MetricConfig(class_name="SparseCategoricalAccuracy", threshold=threshold),
                tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
            ]),
        ])
    if max_class_recall_drop is not None:
        config.metrics_specs.append(class_recall_spec(range(len(label_names)), max_class_recall_drop))
    return config


def class_recall_spec(class_ids: Sequence[int], max_drop: float) -> tfma.MetricsSpec:
    """Recall per class (binarized by class_ids) that may drop by at most max_drop
    against the baseline (a change threshold only: no baseline, no gate)."""
    return tfma.MetricsSpec(
        binarize=tfma.BinarizationOptions(class_ids={"values": list(class_ids)}),
        metrics=[tfma.MetricConfig(
            class_name="Recall", config=CLASS_RECALL_CONFIG,
            threshold=tfma.MetricThreshold(change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -float(max_drop) - CHANGE_EPSILON})))])


def is_class_recall(metric: "tfma.MetricConfig") -> bool:
    return metric.class_name == "Recall" and f'"name": "{CLASS_RECALL}"' in metric.config


def gate_thresholds(eval_config: tfma.EvalConfig) -> Dict[str, float]:
    """``min_accuracy`` / ``max_accuracy_drop`` (and ``max_class_recall_drop`` when
    the per-class gate is on) as make_eval_config wrote them into `eval_config`
    (its inverse). A key is missing when its threshold is: the eval config TFMA
    writes out has no change threshold when there was no baseline."""
    out: Dict[str, float] = {}
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            if not metric.HasField("threshold"):
                continue
            t = metric.threshold
            if is_class_recall(metric):
                if t.change_threshold.HasField("absolute"):
                    out["max_class_recall_drop"] = round(
                        -t.change_threshold.absolute.value - CHANGE_EPSILON, 9)
                continue
            if t.value_threshold.HasField("lower_bound"):
                out["min_accuracy"] = t.value_threshold.lower_bound.value
            if t.change_threshold.HasField("absolute"):
                out["max_accuracy_drop"] = round(-t.change_threshold.absolute.value - CHANGE_EPSILON, 9)
    return out


def write_gate(evaluation_uri: str, eval_config: Union[str, tfma.EvalConfig],
               baseline_compared: bool) -> Dict[str, Any]:
    """Writes ``contracts.GATE_FILE`` into an Evaluator output: the thresholds of
    `eval_config` (the Evaluator's exec property: JSON or the proto) and whether
    a baseline model was compared. Returns what it wrote."""
    import tensorflow as tf
    from google.protobuf import json_format
    if isinstance(eval_config, str):
        eval_config = json_format.Parse(eval_config, tfma.EvalConfig(), ignore_unknown_fields=True)
    gate = dict(gate_thresholds(eval_config), baseline_compared=bool(baseline_compared))
    with tf.io.gfile.GFile(os.path.join(evaluation_uri, contracts.GATE_FILE), "w") as f:
        f.write(json.dumps(gate, sort_keys=True))
    return gate


def summarize(eval_uri: str, label_names: Sequence[str]) -> Dict[str, Any]:
    """Overall-slice metrics of an Evaluator output, as plain JSON-able data.

    {"accuracy", "baseline_accuracy" (None without baseline), "example_count",
     "per_class": {name: {"recall", "precision", "baseline_recall", ...}},
     "confusion_matrix": [[count]] (rows actual, columns predicted),
     "validation_ok", "failures": [str]}
    """
    out: Dict[str, Any] = {"accuracy": None, "baseline_accuracy": None, "example_count": None}
    for slice_metrics in tfma.load_metrics(eval_uri):
        if slice_metrics.slice_key.single_slice_keys:
            continue  # overall slice only
        for kv in slice_metrics.metric_keys_and_values:
            key, value = kv.key, kv.value
            if key.is_diff or key.sub_key.ByteSize() or not value.HasField("double_value"):
                continue
            v = value.double_value.value
            v = None if math.isnan(v) else v
            baseline = key.model_name == BASELINE
            if key.name == ACCURACY:
                out["baseline_accuracy" if baseline else "accuracy"] = v
            elif key.name == "example_count" and not baseline:
                out["example_count"] = int(v)
    matrices = _confusion_matrices(eval_uri, len(label_names))
    out["confusion_matrix"] = matrices.get(CANDIDATE)
    # Per-class rates come from the confusion matrices (each example counted once,
    # at its argmax): TFMA's binarized top-k Recall/Precision gave a class that was
    # never predicted recall 1.0 and precision 0.014 (issue 17, item 9).
    out["per_class"] = {n: {} for n in label_names}
    for model, prefix in ((CANDIDATE, ""), (BASELINE, "baseline_")):
        if matrices.get(model) is None:
            continue
        for name, (precision, recall) in zip(label_names, per_class_rates(matrices[model])):
            out["per_class"][name][prefix + "precision"] = precision
            out["per_class"][name][prefix + "recall"] = recall
    validation = tfma.load_validation_result(eval_uri)
    out["validation_ok"] = bool(validation.validation_ok)
    out["failures"] = _failures(validation, label_names)
    return out


def per_class_rates(matrix: Sequence[Sequence[int]]) -> List[Tuple[Optional[float], Optional[float]]]:
    """(precision, recall) per class of a confusion matrix (rows actual, columns
    predicted). None where undefined: precision of a class never predicted,
    recall of a class with no examples."""
    rates = []
    for c in range(len(matrix)):
        predicted = sum(row[c] for row in matrix)
        actual = sum(matrix[c])
        rates.append((matrix[c][c] / predicted if predicted else None,
                      matrix[c][c] / actual if actual else None))
    return rates


def _confusion_matrices(eval_uri: str, n: int) -> Dict[str, List[List[int]]]:
    """{model name: matrix} of the overall slice's MultiClassConfusionMatrixPlot."""
    found: Dict[str, List[List[int]]] = {}
    for slice_plots in tfma.load_plots(eval_uri):
        if slice_plots.slice_key.single_slice_keys:
            continue
        for kv in slice_plots.plot_keys_and_values:
            # One matrix at threshold 0: each example counted at its argmax.
            for cm in kv.value.multi_class_confusion_matrix_at_thresholds.matrices[:1]:
                matrix = [[0] * n for _ in range(n)]
                for e in cm.entries:
                    if 0 <= e.actual_class_id < n and 0 <= e.predicted_class_id < n:
                        matrix[e.actual_class_id][e.predicted_class_id] = int(round(e.num_weighted_examples))
                found[kv.key.model_name or CANDIDATE] = matrix
    return found


def _failures(validation, label_names: Sequence[str] = ()) -> List[str]:
    reasons = []
    for failure in validation.metric_validations_per_slice:
        for f in failure.failures:
            if f.metric_key.name == CLASS_RECALL and f.metric_key.is_diff:
                reasons.append(class_recall_failure(f, label_names))
                continue
            reasons.append(f"{f.metric_key.name}"
                           f"{' (change vs baseline)' if f.metric_key.is_diff else ''}: {f.message}"
                           f" value={f.metric_value.double_value.value:.4f}")
    if validation.missing_thresholds:
        reasons.append("a configured threshold had no metric to check")
    return reasons


def class_recall_failure(failure, label_names: Sequence[str]) -> str:
    """"recall of class 'pug' dropped 0.12 > 0.05 against the baseline" from a TFMA
    failure of the per-class gate (its value is candidate - baseline)."""
    class_id = failure.metric_key.sub_key.class_id.value
    name = label_names[class_id] if 0 <= class_id < len(label_names) else f"#{class_id}"
    allowed = -failure.metric_threshold.change_threshold.absolute.value - CHANGE_EPSILON
    change = failure.metric_value.double_value.value
    if math.isnan(change):
        return f"{contracts.CLASS_RECALL_FAILURE_PREFIX}{name!r} is undefined (no eval examples?)"
    digits = 2 if round(-change, 2) != round(allowed, 2) else 4
    return (f"{contracts.CLASS_RECALL_FAILURE_PREFIX}{name!r} dropped {-change:.{digits}f} > "
            f"{allowed:.{digits}f} against the baseline")


def keep_class_recall_classes(eval_config: tfma.EvalConfig, present: Sequence[int]) -> bool:
    """Restricts the per-class gate to the classes in `present` (those with eval
    examples: another class's recall is NaN, which fails any threshold); the gate's
    spec is dropped when none is left. True when the config has the gate."""
    for i, spec in enumerate(eval_config.metrics_specs):
        if any(is_class_recall(m) for m in spec.metrics):
            kept = [c for c in spec.binarize.class_ids.values if c in set(present)]
            if kept:
                del spec.binarize.class_ids.values[:]
                spec.binarize.class_ids.values.extend(kept)
            else:
                del eval_config.metrics_specs[i]
            return True
    return False
