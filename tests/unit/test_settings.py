"""Component settings on the wire (components/settings.py): typed, strict, and
readable from what the previous code wrote (a spec compiled before an upgrade)."""

import dataclasses
import json

import pytest

from components import image_io
from components.settings import (GateSettings, IngestSettings, PushSettings, SettingsError,
                                 TFLiteExportSettings, TrainerSettings, TransformSettings)
from pipeline.config import PipelineConfig

# What the code before typed settings wrote, key for key (pipeline/config.py's
# trainer_config()/transform_config(), ImageExampleGen's ingest_config,
# TFLiteExport's and TFLitePusher's execution properties).
OLD_TRAINER = {"backbone": "mobilenet_v1", "weights": "imagenet", "label_names": ["a", "b"],
               "epochs": 100, "batch_size": 32, "learning_rate": 0.001, "patience": 5,
               "seed": 42, "corrupt_train_labels": False}
OLD_TRANSFORM = {"backbone": "mobilenet_v1", "weights": "imagenet"}
OLD_INGEST = json.dumps({"source": "/images", "label_names": ["a", "b"], "max_pixels": 50_000_000,
                         "extensions": [".jpg", ".png"], "exclude_label_conflicts": True},
                        sort_keys=True)
OLD_TFLITE = {"variants": json.dumps(["float32", "int8"]),
              "parity_bounds": json.dumps({"float32": 0.99, "int8": 0.97}, sort_keys=True),
              "calibration_images": 100, "num_threads": 2}
OLD_PUSH = {"serving_dir": "/serving", "label_names": json.dumps(["a", "b"]),
            "gate": json.dumps({"min_accuracy": 0.5, "max_accuracy_drop": 0.01})}


def test_previous_formats_load():
    trainer = TrainerSettings.from_config(OLD_TRAINER)
    assert trainer.label_names == ("a", "b") and trainer.epochs == 100
    assert trainer.learning_rate == 0.001 and trainer.corrupt_train_labels is False
    assert TransformSettings.from_config(OLD_TRANSFORM).weights == "imagenet"
    ingest = IngestSettings.from_json(OLD_INGEST)
    assert ingest.extensions == (".jpg", ".png") and ingest.max_pixels == 50_000_000
    # A spec compiled before the file-size and image-size limits runs with them.
    assert (ingest.max_file_bytes, ingest.min_image_side, ingest.follow_external_symlinks) == (
        image_io.DEFAULT_MAX_FILE_BYTES, image_io.DEFAULT_MIN_IMAGE_SIDE, False)
    tflite = TFLiteExportSettings.from_exec_properties(OLD_TFLITE)
    assert tflite.variants == ("float32", "int8") and tflite.parity_bounds["int8"] == 0.97
    push = PushSettings.from_exec_properties(OLD_PUSH)
    assert push.gate == GateSettings(min_accuracy=0.5, max_accuracy_drop=0.01)
    assert push.candidate_config == ""  # a spec compiled before: never "identical to the served model"


def test_written_exactly_as_before():
    """Same keys and text: caches keyed on execution properties still hit."""
    config = PipelineConfig(images="/images", workdir="/w", label_names=("a", "b"))
    assert config.trainer_settings().to_config() == OLD_TRAINER
    assert config.transform_settings().to_config() == OLD_TRANSFORM
    # Settings added since (IngestSettings.ADDED_LATER) are written beside the old keys.
    ingest = json.loads(IngestSettings.from_json(OLD_INGEST).to_json())
    assert {k: ingest.pop(k) for k in IngestSettings.ADDED_LATER} == IngestSettings.ADDED_LATER
    assert json.dumps(ingest, sort_keys=True) == OLD_INGEST
    assert TFLiteExportSettings.from_exec_properties(OLD_TFLITE).to_exec_properties() == OLD_TFLITE
    push = PushSettings.from_exec_properties(OLD_PUSH).to_exec_properties()
    assert {k: push.pop(k) for k in PushSettings.ADDED_LATER} == PushSettings.ADDED_LATER
    assert push == OLD_PUSH


@pytest.mark.parametrize("change,expected", [
    (lambda c: c.pop("epochs"), "TrainerSettings: missing epochs"),
    (lambda c: c.update(epoch=3), "TrainerSettings: unknown epoch"),
    (lambda c: c.update(epochs="100"), "TrainerSettings.epochs must be int, got '100'"),
    (lambda c: c.update(epochs=True), "TrainerSettings.epochs must be int"),
    (lambda c: c.update(label_names="ab"), "TrainerSettings.label_names must be a list"),
    (lambda c: c.update(label_names=["a", 2]), "TrainerSettings.label_names[1] must be str"),
    (lambda c: c.update(corrupt_train_labels=0), "TrainerSettings.corrupt_train_labels must be bool"),
    (lambda c: c.update(epochs=0), "epochs and batch_size must be >= 1"),
])
def test_trainer_settings_refuse_what_they_cannot_read(change, expected):
    config = dict(OLD_TRAINER)
    change(config)
    with pytest.raises(SettingsError) as e:
        TrainerSettings.from_config(config)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_other_settings_refuse_bad_input():
    with pytest.raises(SettingsError, match="TransformSettings: missing weights"):
        TransformSettings.from_config({"backbone": "mobilenet_v1"})
    with pytest.raises(SettingsError, match="not JSON"):
        IngestSettings.from_json("{source: /images}")
    with pytest.raises(SettingsError, match="extensions is empty"):
        IngestSettings.from_json(OLD_INGEST.replace('[".jpg", ".png"]', "[]"))
    with pytest.raises(SettingsError, match="unknown TFLite variant 'int4'"):
        TFLiteExportSettings.from_exec_properties(dict(OLD_TFLITE, variants='["int4"]'))
    with pytest.raises(SettingsError, match="TFLiteExportSettings: missing num_threads"):
        TFLiteExportSettings.from_exec_properties({k: v for k, v in OLD_TFLITE.items()
                                                   if k != "num_threads"})
    with pytest.raises(SettingsError, match="PushSettings.gate: GateSettings: missing "
                                            "min_accuracy; unknown min_acc"):
        PushSettings.from_exec_properties(
            dict(OLD_PUSH, gate='{"min_acc": 0.5, "max_accuracy_drop": 0.01}'))
    with pytest.raises(SettingsError, match="expected a dict"):
        TrainerSettings.from_config(["backbone"])


def test_round_trip_and_frozen():
    settings = PipelineConfig(images="/i", workdir="/w", label_names=("x", "y", "z"),
                              learning_rate=1, corrupt_train_labels=True).trainer_settings()
    again = TrainerSettings.from_config(json.loads(json.dumps(settings.to_config())))
    assert again == settings and isinstance(again.learning_rate, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 3
    ingest = IngestSettings(source="s3://b/images", label_names=("a", "b"),
                            max_pixels=image_io.DEFAULT_MAX_PIXELS,
                            extensions=image_io.DEFAULT_EXTENSIONS, exclude_label_conflicts=False,
                            max_file_bytes=1_000, min_image_side=2, follow_external_symlinks=True)
    assert IngestSettings.from_json(ingest.to_json()) == ingest


def test_class_weights_balanced_is_recorded_and_none_keeps_the_old_keys():
    config = PipelineConfig(images="/images", workdir="/w", label_names=("a", "b"),
                            class_weights="balanced")
    written = config.trainer_settings().to_config()
    assert written == {**OLD_TRAINER, "class_weights": "balanced"}
    assert TrainerSettings.from_config(written).class_weights == "balanced"
    assert TrainerSettings.from_config(OLD_TRAINER).class_weights == "none"
    assert dataclasses.replace(config, class_weights="heavy").validate() == \
        "class_weights must be one of none, balanced, got 'heavy'"
    with pytest.raises(SettingsError, match="class_weights must be one of none, balanced"):
        TrainerSettings.from_config({**OLD_TRAINER, "class_weights": "heavy"})
