"""components.evaluation.summarize on a real TFMA output (Beam DirectRunner).

TFMA evaluates predictions stored in the examples (a model-agnostic ModelSpec),
with the metrics make_eval_config asks for, so the per-class figures are read back
from the same plot and metric keys as after the pipeline's Evaluator. The case is
issue 17's item 9: a class whose only eval example is predicted as another class
must get recall 0 and no precision, not TFMA's binarized recall 1.0.
"""

import tensorflow as tf
import tensorflow_model_analysis as tfma

from components import contracts, evaluation

LABELS = ["ant", "bee", "cat"]
# (actual, predicted): "cat" has one example, predicted "ant"; "cat" is never predicted.
CASES = [(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 0), (2, 0)]


def _probs(predicted: int):
    probs = [0.1] * len(LABELS)
    probs[predicted] = 0.8
    return tf.train.Feature(float_list=tf.train.FloatList(value=probs))


def _example(actual: int, predicted: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        contracts.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[actual])),
        "probabilities": _probs(predicted),
    })).SerializeToString()


def test_summary_per_class_from_a_real_evaluation(tmp_path):
    data = tmp_path / "eval.tfrecord"
    with tf.io.TFRecordWriter(str(data)) as w:
        for case in CASES:
            w.write(_example(*case))
    # TFMA compares with a baseline only through a second model: this is a first
    # run's evaluation (the Evaluator's rubber stamp), predictions read from the examples.
    cfg = tfma.utils.update_eval_config_with_defaults(
        evaluation.make_eval_config(LABELS, min_accuracy=0.1, max_accuracy_drop=0.0),
        has_baseline=False, rubber_stamp=True)
    cfg.model_specs[0].ClearField("signature_name")
    out = tmp_path / "eval_out"
    tfma.run_model_analysis(eval_config=cfg, data_location=str(data), output_path=str(out))

    summary = evaluation.summarize(str(out), LABELS)
    assert summary["example_count"] == len(CASES)
    assert abs(summary["accuracy"] - 4 / 7) < 1e-6
    assert summary["confusion_matrix"] == [[2, 1, 0], [1, 2, 0], [1, 0, 0]]
    cat = summary["per_class"]["cat"]
    assert cat["recall"] == 0.0 and cat["precision"] is None
    assert summary["per_class"]["ant"] == {"precision": 2 / 4, "recall": 2 / 3}
    assert summary["per_class"]["bee"] == {"precision": 2 / 3, "recall": 2 / 3}
    assert summary["baseline_accuracy"] is None
