"""Evaluator configuration (the gate) and reading its results back.

The gate on the candidate's eval accuracy:
  * value threshold:  accuracy >= min_accuracy (always applies);
  * change threshold: accuracy >= baseline accuracy - max_accuracy_drop, where
    the baseline is the latest blessed model. On a first run there is no
    baseline; TFX's Evaluator then drops change thresholds (rubber stamp) and
    only the value threshold decides.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import tensorflow_model_analysis as tfma

ACCURACY = "sparse_categorical_accuracy"
CANDIDATE = "candidate"
BASELINE = "baseline"


def make_eval_config(label_names: Sequence[str], min_accuracy: float,
                     max_accuracy_drop: float) -> tfma.EvalConfig:
    def spec(name: str, is_baseline: bool) -> tfma.ModelSpec:
        return tfma.ModelSpec(name=name, is_baseline=is_baseline,
                              signature_name="serving_default", label_key="label",
                              prediction_key="probabilities")

    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": float(min_accuracy)}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            # Change = candidate - baseline; passes when > -max_accuracy_drop.
            # A tiny epsilon so that "equal to the baseline" passes at drop 0.
            absolute={"value": -float(max_accuracy_drop) - 1e-9}))
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


def summarize(eval_uri: str, label_names: Sequence[str]) -> Dict[str, Any]:
    """Overall-slice metrics of an Evaluator output, as plain JSON-able data.

    {"accuracy", "baseline_accuracy" (None without baseline), "example_count",
     "per_class": {name: {"recall", "precision", "baseline_recall", ...}},
     "confusion_matrix": [[count]] (rows actual, columns predicted),
     "validation_ok", "failures": [str]}
    """
    out: Dict[str, Any] = {"accuracy": None, "baseline_accuracy": None, "example_count": None,
                           "per_class": {n: {} for n in label_names}}
    for slice_metrics in tfma.load_metrics(eval_uri):
        if slice_metrics.slice_key.single_slice_keys:
            continue  # overall slice only
        for kv in slice_metrics.metric_keys_and_values:
            key, value = kv.key, kv.value
            if key.is_diff or not value.HasField("double_value"):
                continue
            v = value.double_value.value
            v = None if math.isnan(v) else v  # precision of a never-predicted class
            baseline = key.model_name == BASELINE
            if key.sub_key.HasField("class_id"):
                cid = key.sub_key.class_id.value
                if 0 <= cid < len(label_names) and key.name in ("recall", "precision"):
                    name = ("baseline_" if baseline else "") + key.name
                    out["per_class"][label_names[cid]][name] = v
            elif key.name == ACCURACY:
                out["baseline_accuracy" if baseline else "accuracy"] = v
            elif key.name == "example_count" and not baseline:
                out["example_count"] = int(v)
    out["confusion_matrix"] = _confusion_matrix(eval_uri, len(label_names))
    validation = tfma.load_validation_result(eval_uri)
    out["validation_ok"] = bool(validation.validation_ok)
    out["failures"] = _failures(validation)
    return out


def _confusion_matrix(eval_uri: str, n: int) -> Optional[List[List[int]]]:
    for slice_plots in tfma.load_plots(eval_uri):
        if slice_plots.slice_key.single_slice_keys:
            continue
        for kv in slice_plots.plot_keys_and_values:
            if kv.key.model_name == BASELINE:
                continue
            # One matrix at threshold 0: each example counted at its argmax.
            for cm in kv.value.multi_class_confusion_matrix_at_thresholds.matrices[:1]:
                matrix = [[0] * n for _ in range(n)]
                for e in cm.entries:
                    if 0 <= e.actual_class_id < n and 0 <= e.predicted_class_id < n:
                        matrix[e.actual_class_id][e.predicted_class_id] = int(round(e.num_weighted_examples))
                return matrix
    return None


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
