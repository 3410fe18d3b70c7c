"""Which examples the Evaluator reads (components/evaluator.py): the cached eval
features only when every model has the head-only signature and was trained on
features of the same namespace; the images otherwise. Real (tiny) SavedModels;
the equality of the two paths' numbers is tests/e2e/test_end_to_end.py's."""

import json

import pytest
import tensorflow as tf
from google.protobuf import json_format
from tfx.types import standard_artifacts

from components import contracts, evaluation, evaluator
from conftest import tfx_artifact

NAMESPACE = "mobilenet_v1|abc|p1|c2"


class _Tiny(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(self, examples):
        return {contracts.PROBABILITIES_KEY: tf.ones([tf.shape(examples)[0], 2]) / 2}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Model artifact folders: two with both signatures, one with serving_default alone."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    both = (contracts.SERVING_SIGNATURE, contracts.FEATURES_SIGNATURE)
    for name, signatures in (("both", both), ("both2", both), ("old", (contracts.SERVING_SIGNATURE,))):
        module = _Tiny()
        tf.saved_model.save(module, str(root / name / contracts.SERVING_MODEL_DIR),
                            signatures={s: module.serve for s in signatures})
        out[name] = root / name
    return out


def _model(folder, namespace=NAMESPACE):
    (folder / contracts.HEAD_DIR).mkdir(exist_ok=True)
    (folder / contracts.HEAD_DIR / contracts.HEAD_INFO_FILE).write_text(
        json.dumps({"feature_namespace": namespace}))
    return tfx_artifact(standard_artifacts.Model, folder)


def _features(namespace=NAMESPACE, splits='["train", "eval"]'):
    a = tfx_artifact(standard_artifacts.Examples, "/bottlenecks", namespace=namespace)
    a.split_names = splits
    return [a]


def test_features_when_every_model_can_read_them(saved):
    models = {"candidate": _model(saved["both"]), "baseline": _model(saved["both2"])}
    assert evaluator.choose_input(_features(), models).features
    assert evaluator.choose_input(_features(), {"candidate": models["candidate"]}).features  # first run


@pytest.mark.parametrize("case,reason", [
    ("old baseline", "the baseline model has no serving_features signature"),
    ("other weights", "the baseline model was trained on other features"),
    ("no namespace", "the features have no namespace"),
    ("no eval split", "the features have no eval split"),
    ("no features", "no features input"),
])
def test_images_otherwise(saved, case, reason):
    models = {"candidate": _model(saved["both"]),
              "baseline": _model(saved["old"] if case == "old baseline" else saved["both2"],
                                 "mobilenet_v1|other|p1|c2" if case == "other weights" else NAMESPACE)}
    features = {"no namespace": _features(namespace=""), "no eval split": _features(splits='["train"]'),
                "no features": []}.get(case, _features())
    chosen = evaluator.choose_input(features, models)
    assert not chosen.features and chosen.reason.startswith(reason)


def test_a_model_without_head_info_reads_the_images(saved, tmp_path):
    (tmp_path / contracts.SERVING_MODEL_DIR).symlink_to(saved["both"] / contracts.SERVING_MODEL_DIR)
    model = tfx_artifact(standard_artifacts.Model, tmp_path)  # no head/head.json
    assert not evaluator.choose_input(_features(), {"candidate": model}).features


def test_features_eval_config_changes_the_signatures_alone():
    config = evaluation.make_eval_config(["a", "b"], 0.6, 0.02)
    text = json_format.MessageToJson(config)
    swapped = json_format.Parse(evaluator.features_eval_config(text), type(config)())
    assert [s.signature_name for s in swapped.model_specs] == [contracts.FEATURES_SIGNATURE] * 2
    for spec in swapped.model_specs:
        spec.signature_name = contracts.SERVING_SIGNATURE
    assert swapped == config  # thresholds, metrics, keys: unchanged
