"""The Evaluator gate's configuration."""

import tensorflow_model_analysis as tfma

from components import evaluation


def _threshold(cfg):
    for spec in cfg.metrics_specs:
        for m in spec.metrics:
            if m.class_name == "SparseCategoricalAccuracy":
                return m.threshold
    raise AssertionError("no accuracy metric")


def test_gate_has_value_and_change_thresholds():
    cfg = evaluation.make_eval_config(["a", "b", "c"], min_accuracy=0.8, max_accuracy_drop=0.02)
    t = _threshold(cfg)
    assert t.value_threshold.lower_bound.value == 0.8
    assert t.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    assert abs(t.change_threshold.absolute.value + 0.02) < 1e-6
    assert [s.is_baseline for s in cfg.model_specs] == [False, True]


def test_no_metric_is_binarized_by_class_without_the_per_class_gate():
    # A binarized metric costs TFMA a pass per class over every example (36 s
    # instead of 4.1 s at 120 classes: benchmarks/evaluator_classes.py); the
    # per-class rates come from the confusion matrix plot instead.
    cfg = evaluation.make_eval_config([f"c{i}" for i in range(120)], 0.5, 0.02)
    assert not [s for s in cfg.metrics_specs if s.binarize.ByteSize()]
    names = [m.class_name for s in cfg.metrics_specs for m in s.metrics]
    assert "MultiClassConfusionMatrixPlot" in names
    gated = evaluation.make_eval_config(["a", "b", "c"], 0.5, 0.02, max_class_recall_drop=0.1)
    assert [list(s.binarize.class_ids.values) for s in gated.metrics_specs
            if s.binarize.ByteSize()] == [[0, 1, 2]]


def test_without_baseline_only_value_threshold_remains():
    # What TFX's Evaluator does on a first run (rubber stamp): drop the baseline
    # spec and the change threshold, keep the value threshold.
    cfg = evaluation.make_eval_config(["a", "b"], min_accuracy=0.7, max_accuracy_drop=0.0)
    updated = tfma.utils.update_eval_config_with_defaults(cfg, has_baseline=False, rubber_stamp=True)
    assert len(updated.model_specs) == 1 and not updated.model_specs[0].is_baseline
    t = _threshold(updated)
    assert t.value_threshold.lower_bound.value == 0.7


def test_per_class_rates_come_from_the_confusion_matrix():
    # rows actual, columns predicted; class 2 is never predicted (its one example
    # went to class 0), class 3 has no examples but is predicted once.
    matrix = [[3, 1, 0, 0],
              [0, 4, 0, 1],
              [1, 0, 0, 0],
              [0, 0, 0, 0]]
    rates = evaluation.per_class_rates(matrix)
    assert rates[0] == (3 / 4, 3 / 4)
    assert rates[1] == (4 / 5, 4 / 5)
    assert rates[2] == (None, 0.0)        # never predicted: precision undefined, recall 0
    assert rates[3] == (0.0, None)        # no examples: recall undefined


def _class_recall_specs(cfg):
    return [s for s in cfg.metrics_specs if any(evaluation.is_class_recall(m) for m in s.metrics)]


def test_per_class_gate_is_off_by_default_and_leaves_the_config_as_it_was():
    off = evaluation.make_eval_config(["a", "b", "c"], 0.6, 0.02)
    assert off == evaluation.make_eval_config(["a", "b", "c"], 0.6, 0.02, max_class_recall_drop=None)
    assert len(off.metrics_specs) == 1 and not _class_recall_specs(off)
    assert evaluation.gate_thresholds(off) == {"min_accuracy": 0.6, "max_accuracy_drop": 0.02}


def test_per_class_gate_is_a_change_threshold_on_binarized_recall():
    on = evaluation.make_eval_config(["a", "b", "c"], 0.6, 0.02, max_class_recall_drop=0.05)
    (spec,) = _class_recall_specs(on)
    assert list(spec.binarize.class_ids.values) == [0, 1, 2]
    t = spec.metrics[0].threshold
    assert not t.HasField("value_threshold") and t.change_threshold.absolute.value < -0.05
    assert evaluation.gate_thresholds(on) == {"min_accuracy": 0.6, "max_accuracy_drop": 0.02,
                                              "max_class_recall_drop": 0.05}
    # First run (no baseline): TFX drops change thresholds, the per-class gate with them.
    first = tfma.utils.update_eval_config_with_defaults(on, has_baseline=False, rubber_stamp=True)
    assert "max_class_recall_drop" not in evaluation.gate_thresholds(first)


def test_per_class_gate_keeps_only_classes_with_eval_examples():
    on = evaluation.make_eval_config(["a", "b", "c"], 0.6, 0.02, max_class_recall_drop=0.05)
    assert evaluation.keep_class_recall_classes(on, [0, 2])
    assert list(_class_recall_specs(on)[0].binarize.class_ids.values) == [0, 2]
    assert evaluation.keep_class_recall_classes(on, [])
    assert not _class_recall_specs(on) and len(on.metrics_specs) == 1
    assert not evaluation.keep_class_recall_classes(on, [0])  # no gate (left)
