"""Typed settings the pipeline hands to components, and their wire format.

TFX carries a component's settings as ``custom_config`` (a JSON dict) or as
execution properties; MLMD stores them and a compiled Kubeflow spec embeds
them, so a spec compiled by an earlier version may run on a newer image. Each
dataclass here is that format: ``to_config()`` writes it, ``from_config()``
reads it back and names any missing, unknown or mistyped key (never a silent
default). Key names are the field names: renaming a field breaks those specs.

Defaults live on pipeline.config.PipelineConfig, which builds these; none here.
Imports no TensorFlow: the pipeline definition builds them without it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Dict, Mapping, Tuple, TypeVar

from components import image_io
from components.tflite import variants as tflite_variants

S = TypeVar("S", bound="Settings")


class SettingsError(ValueError):
    """A component's settings are missing a key, have an unknown one, or a wrong type."""


class Settings:
    """to_config()/from_config() for a frozen dataclass of JSON-able fields;
    to_exec_properties()/from_exec_properties() where each field is an execution
    property of its own, those named in JSON_PROPERTIES as JSON text."""

    JSON_PROPERTIES: Tuple[str, ...] = ()  # a class constant: Settings is no dataclass
    # Fields added after the format first shipped -> the value a spec compiled
    # before then runs with (every other missing key is an error).
    ADDED_LATER: Mapping[str, Any] = {}

    def to_config(self) -> Dict[str, Any]:
        return {f.name: _to_json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_config(), sort_keys=True)

    @classmethod
    def from_config(cls: typing.Type[S], config: Mapping[str, Any]) -> S:
        what = cls.__name__
        if not isinstance(config, Mapping):
            raise SettingsError(f"{what}: expected a dict of settings, got {type(config).__name__}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        config = {**{k: v for k, v in cls.ADDED_LATER.items() if k not in config}, **config}
        missing = [n for n in names if n not in config]
        unknown = sorted(set(config) - set(names))
        if missing or unknown:
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + \
                       ([f"unknown {', '.join(unknown)}"] if unknown else [])
            raise SettingsError(f"{what}: {'; '.join(problems)} (expected exactly: {', '.join(names)})")
        return cls(**{n: _typed(f"{what}.{n}", hints[n], config[n]) for n in names})

    @classmethod
    def from_json(cls: typing.Type[S], text: str) -> S:
        return cls.from_config(_json(text, cls.__name__))

    def to_exec_properties(self) -> Dict[str, Any]:
        return {k: json.dumps(v) if k in self.JSON_PROPERTIES else v
                for k, v in self.to_config().items()}

    @classmethod
    def from_exec_properties(cls: typing.Type[S], props: Mapping[str, Any]) -> S:
        """From an executor's exec_properties (it gets only its spec's)."""
        config = {f.name: props[f.name] for f in dataclasses.fields(cls) if f.name in props}
        for key in cls.JSON_PROPERTIES:
            if key in config:
                config[key] = _json(config[key], f"{cls.__name__}.{key}")
        return cls.from_config(config)


def _json(text: Any, what: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"{what}: not JSON ({e})") from None


def _to_json_value(value: Any) -> Any:
    if isinstance(value, Settings):
        return value.to_config()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _typed(name: str, hint: Any, value: Any) -> Any:
    """`value` as `hint` (str, int, float, bool, Tuple[str, ...], Dict[str, float],
    a Settings class); SettingsError naming the field otherwise."""
    if isinstance(hint, type) and issubclass(hint, Settings):
        try:
            return hint.from_config(value)
        except SettingsError as e:
            raise SettingsError(f"{name}: {e}") from None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{name} must be a list, got {value!r}")
        return tuple(_typed(f"{name}[{i}]", args[0], v) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SettingsError(f"{name} must be a dict, got {value!r}")
        return {_typed(f"{name} key", args[0], k): _typed(f"{name}[{k!r}]", args[1], v)
                for k, v in value.items()}
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:  # JSON writes 1.0 as 1.0, but a hand-written 1 is a number too
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{name}: unsupported settings type {hint!r}")
    if not ok:
        raise SettingsError(f"{name} must be {hint.__name__}, got {value!r}")
    return value


# ------------------------------------------------------------- what each step gets

# `--activation-dtype`: how BottleneckGen caches the cut activation when fine-tuning.
ACTIVATION_DTYPES = ("float16", "float32")


class _FineTuneFields:
    """trainable_blocks / activation_dtype: written only when fine-tuning (N > 0; the
    dtype means nothing otherwise), so a head-only run's config, and every cache key and
    digest made from it, stay as before."""
    ADDED_LATER = {"trainable_blocks": 0, "activation_dtype": ACTIVATION_DTYPES[0]}

    def _drop_fine_tune_defaults(self, config: Dict[str, Any]) -> Dict[str, Any]:
        if self.trainable_blocks == 0:
            for key in _FineTuneFields.ADDED_LATER:
                del config[key]
        return config

    def _check_fine_tune(self):
        if self.trainable_blocks < 0:
            raise SettingsError(f"{type(self).__name__}: trainable_blocks must be >= 0, got {self.trainable_blocks}")
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise SettingsError(f"{type(self).__name__}: activation_dtype must be one of "
                                f"{', '.join(ACTIVATION_DTYPES)}, got {self.activation_dtype!r}")


@dataclasses.dataclass(frozen=True)
class TransformSettings(_FineTuneFields, Settings):
    """Transform's custom_config (components/preprocessing.py preprocessing_fn)."""
    backbone: str
    weights: str
    trainable_blocks: int = 0  # > 0: the graph ends at the cut below the top N blocks
    activation_dtype: str = ACTIVATION_DTYPES[0]  # float16: the cut activation rounded as cached

    def to_config(self) -> Dict[str, Any]:
        return self._drop_fine_tune_defaults(super().to_config())

    def __post_init__(self):
        self._check_fine_tune()


CLASS_WEIGHTS = ("none", "balanced")  # TrainerSettings.class_weights, `--class-weights`


@dataclasses.dataclass(frozen=True)
class TrainerSettings(_FineTuneFields, Settings):
    """The Trainer's custom_config (components/trainer.py run_fn)."""
    backbone: str
    weights: str
    label_names: Tuple[str, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    patience: int
    seed: int
    corrupt_train_labels: bool
    class_weights: str = CLASS_WEIGHTS[0]  # "balanced": loss weighted by total / (C x class count)
    trainable_blocks: int = 0  # > 0: the backbone's top N blocks train with the head (fine_tune.py)
    activation_dtype: str = ACTIVATION_DTYPES[0]  # of the cached cut activation (N > 0)
    # N > 0: start from the ImageNet weights even when the served model could be
    # continued (components/continuation.py).
    cold_start: bool = False

    # Written only when not the default: the Trainer's cache key stays as before.
    ADDED_LATER = {"class_weights": CLASS_WEIGHTS[0], "cold_start": False, **_FineTuneFields.ADDED_LATER}

    def to_config(self) -> Dict[str, Any]:
        config = super().to_config()
        for key in ("class_weights", "cold_start"):
            if config[key] == self.ADDED_LATER[key]:
                del config[key]
        return self._drop_fine_tune_defaults(config)

    def __post_init__(self):
        self._check_fine_tune()
        if self.class_weights not in CLASS_WEIGHTS:
            raise SettingsError(f"TrainerSettings: class_weights must be one of "
                                f"{', '.join(CLASS_WEIGHTS)}, got {self.class_weights!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 0:
            raise SettingsError(f"TrainerSettings: epochs and batch_size must be >= 1 and "
                                f"patience >= 0, got {self.epochs}, {self.batch_size}, {self.patience}")


@dataclasses.dataclass(frozen=True)
class IngestSettings(Settings):
    """ImageExampleGen's ``ingest_config`` (JSON; components/image_example_gen.py)."""
    # A spec compiled before these limits existed gets them at their defaults:
    # a newer image never reads unbounded files or follows symlinks out of the root.
    ADDED_LATER = {"max_file_bytes": image_io.DEFAULT_MAX_FILE_BYTES,
                   "min_image_side": image_io.DEFAULT_MIN_IMAGE_SIDE,
                   "follow_external_symlinks": False}
    source: str                   # <label>/<file> folder or uri,label CSV manifest
    label_names: Tuple[str, ...]  # the vocabulary: index = label
    max_pixels: int
    extensions: Tuple[str, ...]   # lower case, with the dot
    exclude_label_conflicts: bool
    max_file_bytes: int           # larger files are skipped unread
    min_image_side: int           # images smaller on their short side are skipped
    follow_external_symlinks: bool  # file symlinks out of the images root

    def __post_init__(self):
        if not self.extensions:
            raise SettingsError("IngestSettings: extensions is empty; no file would be read")
        if self.max_pixels < 1 or self.max_file_bytes < 1 or self.min_image_side < 1:
            raise SettingsError(f"IngestSettings: max_pixels, max_file_bytes and min_image_side "
                                f"must be >= 1, got {self.max_pixels}, {self.max_file_bytes}, "
                                f"{self.min_image_side}")


@dataclasses.dataclass(frozen=True)
class GateSettings(Settings):
    """The Evaluator's thresholds as the Pusher records them (its ``gate``, JSON)."""
    min_accuracy: float
    max_accuracy_drop: float


@dataclasses.dataclass(frozen=True)
class TFLiteExportSettings(Settings):
    """TFLiteExport's execution properties (components/tflite/component.py)."""
    JSON_PROPERTIES = ("variants", "parity_bounds")
    variants: Tuple[str, ...]
    parity_bounds: Dict[str, float]  # variant -> minimum top-1 agreement (TFLiteExport fills defaults)
    calibration_images: int
    num_threads: int

    def __post_init__(self):
        # Sorted by variant: the JSON text stays what it always was.
        object.__setattr__(self, "parity_bounds", dict(sorted(self.parity_bounds.items())))
        try:
            tflite_variants.check_variants(self.variants)
            tflite_variants.parity_bounds(self.parity_bounds)
        except ValueError as e:
            raise SettingsError(f"TFLiteExportSettings: {e}") from None
        if self.num_threads < 1:
            raise SettingsError(f"TFLiteExportSettings: num_threads must be >= 1, got {self.num_threads}")


@dataclasses.dataclass(frozen=True)
class PushSettings(Settings):
    """TFLitePusher's execution properties (components/tflite_pusher.py)."""
    JSON_PROPERTIES = ("label_names", "gate")
    # A spec compiled before the field existed: no candidate is ever "identical".
    ADDED_LATER = {"candidate_config": ""}
    serving_dir: str
    label_names: Tuple[str, ...]
    gate: GateSettings  # JSON in field order, as always written
    # Digest of the run's settings and code (pipeline/pipeline.py); with the
    # Trainer's training fingerprint it tells a candidate identical to the served one.
    candidate_config: str
