"""The Pusher's safety net: a blessed candidate identical to the served version
(same training data, settings and code) is not pushed again (issue 15).

Real files throughout: the Model artifact's head/head.json as the Trainer writes
it, versions published by publish_version, a real parity.json. A candidate that
differs gets past the check and stops at the next one (no TFLite variant met its
parity bound), which shows the check let it through without running TFMA.
"""

import dataclasses
import json

import numpy as np
import pytest
from tfx.types import standard_artifacts

from components import contracts, trainer
from components.settings import GateSettings, PushSettings
from components.tflite.parity import Agreement, ParityReport, VariantParity
from components.tflite_pusher import (IDENTITY_KEY, Executor, candidate_identity, publish_version,
                                      served_identity)
from conftest import tfx_artifact as _artifact

LABELS = ("a", "b")
NO_VARIANT = "no TFLite variant met its parity bound"


def _model(path, data="d1", settings='{"epochs": 10}'):
    (path / contracts.HEAD_DIR).mkdir(parents=True, exist_ok=True)
    info = {"backbone": "mobilenet_v1", "label_names": list(LABELS),
            "training": {"data": data, "settings": settings}}
    (path / contracts.HEAD_DIR / contracts.HEAD_INFO_FILE).write_text(json.dumps(info))
    return path


def _settings(serving, config="settings:code"):
    return PushSettings(serving_dir=str(serving), label_names=LABELS,
                        gate=GateSettings(min_accuracy=0.5, max_accuracy_drop=0.01),
                        candidate_config=config)


def _serve(tmp_path, identity):
    """Publishes a version whose manifest records `identity`; returns its number."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "labels.txt").write_text("a\nb\n")
    return publish_version(str(tmp_path / "serving"), {"labels.txt": str(src / "labels.txt")},
                           {IDENTITY_KEY: identity})


def _push(tmp_path, model, settings):
    """Runs the Pusher's executor on a blessed `model`; returns its PushedModel artifact."""
    tflite = tmp_path / "tflite"
    tflite.mkdir(exist_ok=True)
    ParityReport(variants=(VariantParity.judged("float32", 0.99, None, Agreement(10, 0.5, 0.5, 5, 0.4, 0.2)),),
                 passed=(), backbone="mobilenet_v1", label_names=LABELS, calibration_examples=0,
                 eval_examples=10, reference_accuracy=0.5).write(str(tflite))
    pushed = _artifact(standard_artifacts.PushedModel, tmp_path / "pushed")
    Executor().Do({"model": [_artifact(standard_artifacts.Model, model)],
                   "model_blessing": [_artifact(standard_artifacts.ModelBlessing, tmp_path / "b", blessed=1)],
                   "evaluation": [_artifact(standard_artifacts.ModelEvaluation, tmp_path / "e")],
                   "tflite_models": [_artifact(standard_artifacts.Model, tflite)]},
                  {"pushed_model": [pushed]}, settings.to_exec_properties())
    return pushed


def _reason(pushed):
    return pushed.get_string_custom_property("not_pushed_reason")


def test_identical_candidate_is_not_pushed_and_says_which_version(tmp_path):
    model = _model(tmp_path / "model")
    settings = _settings(tmp_path / "serving")
    assert _serve(tmp_path, candidate_identity(str(model), settings)) == 1
    pushed = _push(tmp_path, model, settings)
    assert pushed.get_int_custom_property("pushed") == 0
    assert _reason(pushed) == "candidate identical to the served model (version 1)"
    assert pushed.get_int_custom_property("identical_to_version") == 1
    assert contracts.list_versions(str(tmp_path / "serving")) == [1]


@pytest.mark.parametrize("change", [
    {"data": "d2"},                               # an image changed, added or removed
    {"settings": '{"epochs": 11}'},               # a Trainer setting
    {"config": "other-settings:code"},            # any run setting
    {"config": "settings:other-code"},            # the code or a library version
])
def test_a_changed_candidate_gets_past_the_check(tmp_path, change):
    served = _model(tmp_path / "served")
    _serve(tmp_path, candidate_identity(str(served), _settings(tmp_path / "serving")))
    model = _model(tmp_path / "model", data=change.get("data", "d1"),
                   settings=change.get("settings", '{"epochs": 10}'))
    pushed = _push(tmp_path, model, _settings(tmp_path / "serving", change.get("config", "settings:code")))
    assert _reason(pushed).startswith(NO_VARIANT)


def test_labels_are_part_of_the_identity(tmp_path):
    model = _model(tmp_path / "model")
    settings = _settings(tmp_path / "serving")
    renamed = dataclasses.replace(settings, label_names=("a", "c"))
    assert candidate_identity(str(model), settings) != candidate_identity(str(model), renamed)


def test_unknown_identities_never_match(tmp_path):
    """An older spec (no candidate_config), an older model (no training record) or
    an older version (no identity in its manifest) always pushes as before."""
    model = _model(tmp_path / "model")
    assert candidate_identity(str(model), _settings(tmp_path / "serving", config="")) is None
    (tmp_path / "old" / contracts.HEAD_DIR).mkdir(parents=True)
    (tmp_path / "old" / contracts.HEAD_DIR / contracts.HEAD_INFO_FILE).write_text('{"backbone": "x"}')
    assert candidate_identity(str(tmp_path / "old"), _settings(tmp_path / "serving")) is None
    assert candidate_identity(str(tmp_path / "missing"), _settings(tmp_path / "serving")) is None
    assert served_identity(str(tmp_path / "serving")) is None
    _serve(tmp_path, None)
    assert served_identity(str(tmp_path / "serving")) == (1, None)
    assert _reason(_push(tmp_path, model, _settings(tmp_path / "serving"))).startswith(NO_VARIANT)


def test_only_the_latest_version_counts(tmp_path):
    model = _model(tmp_path / "model")
    settings = _settings(tmp_path / "serving")
    _serve(tmp_path, candidate_identity(str(model), settings))
    _serve(tmp_path, "another model")  # version 2, served now
    assert served_identity(str(tmp_path / "serving")) == (2, "another model")
    assert _reason(_push(tmp_path, model, settings)).startswith(NO_VARIANT)


def test_training_data_fingerprint_is_the_rows_in_any_order():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)).astype(np.float32), np.array([0, 1, 0, 1, 1, 0])
    ex, ey = rng.normal(size=(2, 4)).astype(np.float32), np.array([0, 1])

    def fp(x, y, ex=ex, ey=ey):
        return trainer.training_data_fingerprint({"train": (x, y), "eval": (ex, ey)})

    base = fp(x, y)
    order = rng.permutation(6)
    assert fp(x[order], y[order]) == base  # Beam's output order varies
    changed = x.copy()
    changed[3, 2] += 1e-3
    assert fp(changed, y) != base  # an image's content (its features)
    assert fp(x, np.array([0, 1, 0, 1, 1, 1])) != base  # a label
    assert fp(np.vstack([x, ex[:1]]), np.append(y, 0)) != base  # a new image
    assert fp(x[:5], y[:5]) != base  # a removed image
    assert fp(np.vstack([x, ex]), np.append(y, ey), ex[:0], ey[:0]) != base  # moved between splits


def test_the_pipeline_passes_settings_and_code(tmp_path):
    from pipeline import unchanged
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_components

    def config_of(**changes):
        config = PipelineConfig(images=str(tmp_path), workdir=str(tmp_path / "w"),
                                label_names=LABELS, **changes)
        (pusher,) = [n for n in create_components(config) if n.id == contracts.PUSHER_NODE]
        return config, pusher.exec_properties["candidate_config"]

    config, value = config_of()
    assert value == unchanged.settings_digest(config) + ":" + unchanged.code_digest()
    assert config_of(epochs=7)[1] != value and config_of(tflite_variants=("float32",))[1] != value
