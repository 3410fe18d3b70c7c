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
    binarized = [s for s in cfg.metrics_specs if s.binarize.class_ids.values]
    assert list(binarized[0].binarize.class_ids.values) == [0, 1, 2]


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
