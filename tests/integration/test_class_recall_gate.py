"""The opt-in per-class recall gate (--max-class-recall-drop), through the pipeline's
Evaluator (components/evaluator.EvaluatorExecutor: TFX's executor, TFMA on Beam's
DirectRunner) with hand-built SavedModels, on both of its inputs: the cached
features (serving_features) and the images' Examples (serving_default).

The candidate loses class "pug" entirely while keeping the baseline's overall
accuracy (it fixes as many "cat" mistakes as it makes "pug" ones): the accuracy
gate blesses it, the per-class gate refuses it and names the class. Off (the
default), the same candidate is blessed. TFMA's validator is the one deciding:
tensorflow_model_analysis/evaluators/metrics_validator.py (v0.47.1), on the Recall
of metrics/confusion_matrix_metrics.py binarized by class_ids.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import proto_utils

from components import contracts, evaluation, evaluator
from conftest import tfx_artifact

LABELS = ["cat", "dog", "pug", "owl"]  # owl: no eval examples (NaN recall, left out of the gate)
NAMESPACE = "hand-built|0|p1|c3"
# (true class, baseline's prediction, candidate's prediction), one row per eval example.
ROWS = ([(0, 0, 0)] * 8 + [(0, 1, 0)] * 3 + [(1, 1, 1)] * 10 + [(2, 2, 0)] * 3 + [(2, 2, 2)] * 1
        + [(1, 1, 1)])  # cat recall 8/11 -> 11/11, pug 4/4 -> 1/4, accuracy 23/26 both


class _Fixed(tf.Module):
    """Probabilities read from the example: the feature named by `key` holds the
    class this model predicts (both signatures parse the same serialized Examples)."""

    def __init__(self, key):
        super().__init__()
        self.key = key

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        parsed = tf.io.parse_example(examples, {self.key: tf.io.FixedLenFeature([], tf.int64)})
        onehot = tf.one_hot(parsed[self.key], len(LABELS), on_value=0.9, off_value=0.05)
        return {contracts.PROBABILITIES_KEY: onehot}


def _examples(folder, rows):
    path = folder / "Split-eval" / "data.gz"
    path.parent.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for true, base, cand in rows:
            ints = {contracts.LABEL_KEY: true, "baseline_says": base, "candidate_says": cand}
            feature = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
                       for k, v in ints.items()}
            feature[contracts.FEATURES_KEY] = tf.train.Feature(
                float_list=tf.train.FloatList(value=[float(true)]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    models = {}
    for name in ("candidate", "baseline"):
        module = _Fixed(f"{name}_says")
        folder = root / name
        tf.saved_model.save(module, str(folder / contracts.SERVING_MODEL_DIR), signatures={
            contracts.SERVING_SIGNATURE: module.serve, contracts.FEATURES_SIGNATURE: module.serve})
        (folder / contracts.HEAD_DIR).mkdir()
        (folder / contracts.HEAD_DIR / contracts.HEAD_INFO_FILE).write_text(
            json.dumps({"feature_namespace": NAMESPACE}))
        models[name] = tfx_artifact(standard_artifacts.Model, folder)
    _examples(root / "images", ROWS)
    _examples(root / "features", ROWS)
    images = tfx_artifact(standard_artifacts.Examples, root / "images")
    features = tfx_artifact(standard_artifacts.Examples, root / "features", namespace=NAMESPACE)
    for a in (images, features):
        a.split_names = artifact_utils.encode_split_names(["eval"])
    return root, models, images, features


def _evaluate(inputs, name, max_class_recall_drop, use_features):
    root, models, images, features = inputs
    config = evaluation.make_eval_config(LABELS, min_accuracy=0.5, max_accuracy_drop=0.0,
                                         max_class_recall_drop=max_class_recall_drop)
    out = {k: tfx_artifact(cls, root / name / k) for k, cls in (
        ("evaluation", standard_artifacts.ModelEvaluation), ("blessing", standard_artifacts.ModelBlessing))}
    for a in out.values():
        os.makedirs(a.uri)
    input_dict = {"examples": [images], "model": [models["candidate"]],
                  "baseline_model": [models["baseline"]]}
    if use_features:
        input_dict[evaluator.FEATURES] = [features]
    props = {"eval_config": proto_utils.proto_to_json(config), "example_splits": '["eval"]',
             "fairness_indicator_thresholds": "null"}
    evaluator.EvaluatorExecutor().Do(input_dict, {k: [a] for k, a in out.items()}, props)
    evaluation_out = out["evaluation"]
    assert evaluation_out.get_string_custom_property(evaluator.EVAL_INPUT) == (
        "features" if use_features else "images")
    blessed = out["blessing"].get_int_custom_property("blessed") == 1
    gate = json.loads((root / name / "evaluation" / contracts.GATE_FILE).read_text())
    return blessed, evaluation.summarize(evaluation_out.uri, LABELS), gate


@pytest.mark.parametrize("use_features", [True, False], ids=["features", "images"])
def test_the_gate_refuses_a_candidate_that_loses_one_class(inputs, use_features):
    blessed, summary, gate = _evaluate(inputs, f"on-{use_features}", 0.05, use_features)
    assert summary["accuracy"] == pytest.approx(summary["baseline_accuracy"])  # accuracy passes
    assert summary["per_class"]["pug"]["recall"] == pytest.approx(0.25)
    assert summary["per_class"]["pug"]["baseline_recall"] == pytest.approx(1.0)
    assert not blessed and not summary["validation_ok"]
    assert summary["failures"] == [
        "recall of class 'pug' dropped 0.75 > 0.05 against the baseline"]  # cat rose, dog held
    assert gate == {"min_accuracy": 0.5, "max_accuracy_drop": 0.0, "max_class_recall_drop": 0.05,
                    "baseline_compared": True}


def test_off_by_default_the_same_candidate_is_blessed(inputs):
    blessed, summary, gate = _evaluate(inputs, "off", None, True)
    assert blessed and summary["validation_ok"] and summary["failures"] == []
    assert "max_class_recall_drop" not in gate
    assert np.isclose(summary["per_class"]["pug"]["recall"], 0.25)
