"""Evaluator configuration (the gate) and reading its results back.

The gate on the candidate's eval accuracy:
  * value threshold:  accuracy >= min_accuracy (always applies);
  * change threshold: accuracy >= baseline accuracy - max_accuracy_drop, where
    the baseline is the latest blessed model. On a first run there is no
    baseline; TFX's Evaluator then drops change thresholds (rubber stamp) and
    only the value threshold decides.

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
CANDIDATE = "candidate"
BASELINE = "baseline"
# Change = candidate - baseline must be > -max_accuracy_drop - CHANGE_EPSILON,
# so that "equal to the baseline" passes at drop 0.
CHANGE_EPSILON = 1e-9


def make_eval_config(label_names: Sequence[str], min_accuracy: float,
                     max_accuracy_drop: float) -> tfma.EvalConfig:
    def spec(name: str, is_baseline: bool) -> tfma.ModelSpec:
        return tfma.ModelSpec(name=name, is_baseline=is_baseline,
                              signature_name="serving_default", label_key=contracts.LABEL_KEY,
                              prediction_key="probabilities")

    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": float(min_accuracy)}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -float(max_accuracy_drop) - CHANGE_EPSILON}))
    class_ids = list(range(len(label_names)))
    return tfma.EvalConfig(
        model_specs=[spec(CANDIDATE, False), spec(BASELINE, True)],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[
            tfma.MetricsSpec(metrics=[
                tfma.MetricConfig(class_name="ExampleCount"),
                tfma.MetricConfig(class_name="SparseCategoricalAccuracy", threshold=threshold),
                tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
            ]),
            tfma.MetricsSpec(
                binarize=tfma.BinarizationOptions(class_ids={"values": class_ids}),
                # top_k 1: class c is predicted when it is the argmax, not when p > 0.5.
                metrics=[tfma.MetricConfig(class_name="Recall", config='"top_k": 1'),
                         tfma.MetricConfig(class_name="Precision", config='"top_k": 1')]),
        ])


def gate_thresholds(eval_config: tfma.EvalConfig) -> Dict[str, float]:
    """``min_accuracy`` / ``max_accuracy_drop`` as make_eval_config wrote them into
    `eval_config` (its inverse). A key is missing when its threshold is: the eval
    config TFMA writes out has no change threshold when there was no baseline."""
    out: Dict[str, float] = {}
    for spec in eval_config.metrics_specs:
        for metric in spec.metrics:
            if not metric.HasField("threshold"):
                continue
            t = metric.threshold
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
    out["failures"] = _failures(validation)
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


def _failures(validation) -> List[str]:
    reasons = []
    for failure in validation.metric_validations_per_slice:
        for f in failure.failures:
            reasons.append(f"{f.metric_key.name}"
                           f"{' (change vs baseline)' if f.metric_key.is_diff else ''}: {f.message}"
                           f" value={f.metric_value.double_value.value:.4f}")
    if validation.missing_thresholds:
        reasons.append("a configured threshold had no metric to check")
    return reasons
