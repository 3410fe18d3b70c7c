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


def test_models_are_typed_as_tfma_would_find_them(saved, tmp_path):
    """typed_eval_config gives each spec the type TFMA's own probe finds
    (model_util.get_model_type loads each model with tf.keras first), without the probe;
    a Keras SavedModel and an explicit type are left to TFMA."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.utils import model_util
    config = evaluation.make_eval_config(["a", "b"], 0.6, 0.02)
    text = json_format.MessageToJson(config)
    models = {"candidate": _model(saved["both"]), "baseline": _model(saved["both2"])}
    typed = json_format.Parse(evaluator.typed_eval_config(text, models), type(config)())
    for spec in typed.model_specs:
        path = str(saved["both2" if spec.is_baseline else "both"] / contracts.SERVING_MODEL_DIR)
        probed = tfma.ModelSpec(signature_name=spec.signature_name)
        assert spec.model_type == model_util.get_model_type(probed, path) == tfma.TF_GENERIC
        spec.model_type = ""
    assert typed == config  # nothing else changed
    keras_dir = tmp_path / "keras"
    (keras_dir / contracts.SERVING_MODEL_DIR).mkdir(parents=True)
    (keras_dir / contracts.SERVING_MODEL_DIR / evaluator.KERAS_METADATA).write_bytes(b"")
    config.model_specs[1].model_type = "tf_keras"
    mixed = json_format.Parse(evaluator.typed_eval_config(json_format.MessageToJson(config), {
        "candidate": tfx_artifact(standard_artifacts.Model, keras_dir), "baseline": models["baseline"]}),
        type(config)())
    assert [s.model_type for s in mixed.model_specs] == ["", "tf_keras"]
