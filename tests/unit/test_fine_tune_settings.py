"""`--trainable-blocks N` / `--activation-dtype` in the run's settings (issue 19): N = 0
writes exactly the settings written before the option existed (cache keys, digests and
compiled specs unchanged); N > 0 is recorded and read back; bad values are refused."""

import argparse

import pytest

from components.settings import SettingsError, TrainerSettings, TransformSettings
from pipeline import config_flags, unchanged
from pipeline.config import PipelineConfig


def _config(**changes):
    return PipelineConfig(images="/i", workdir="/w", label_names=("a", "b"), **changes)


def test_head_only_settings_have_no_fine_tuning_keys():
    for settings in (_config().transform_settings(), _config().trainer_settings(),
                     _config(activation_dtype="float32").trainer_settings()):
        config = settings.to_config()
        assert "trainable_blocks" not in config and "activation_dtype" not in config
        assert type(settings).from_config(config).to_config() == config
    assert _config().transform_settings().to_config() == {"backbone": "mobilenet_v1", "weights": "imagenet"}


def test_fine_tuning_settings_round_trip_and_change_the_settings_digest():
    for settings in (_config(trainable_blocks=2).transform_settings(),
                     _config(trainable_blocks=2, activation_dtype="float32").trainer_settings()):
        config = settings.to_config()
        assert config["trainable_blocks"] == 2
        assert type(settings).from_config(config) == settings
    digests = {unchanged.settings_digest(_config(trainable_blocks=n)) for n in (0, 1, 2)}
    assert len(digests) == 3  # a change of N is a change of settings (reruns, ChangeCheck)


def test_bad_values_are_refused_in_one_line():
    with pytest.raises(SettingsError, match="trainable_blocks must be >= 0"):
        TrainerSettings.from_config({**_config().trainer_settings().to_config(), "trainable_blocks": -1})
    with pytest.raises(SettingsError, match="activation_dtype must be one of float16, float32"):
        TransformSettings(backbone="mobilenet_v1", weights="imagenet", trainable_blocks=1,
                          activation_dtype="int8")
    assert _config(trainable_blocks=-1).validate() == "trainable_blocks must be >= 0, got -1"
    assert "activation_dtype" in _config(activation_dtype="bf16").validate()


def test_flags_set_the_fields():
    parser = argparse.ArgumentParser()
    config_flags.add_flags(parser, ["trainable_blocks", "activation_dtype"])
    args = parser.parse_args(["--trainable-blocks", "2", "--activation-dtype", "float32"])
    assert config_flags.values(args, ["trainable_blocks", "activation_dtype"]) == {
        "trainable_blocks": 2, "activation_dtype": "float32"}
