"""PipelineConfig fields as command-line flags, for `retrain run` and `retrain compile`.

One row per flag: its name, the PipelineConfig field it sets and a help text.
Types and defaults come from the dataclass, so a default changes in one place
(pipeline/config.py) and every flag's help says what it is. TF-free.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Dict, Iterable, Mapping, NamedTuple, Optional

from components.tflite import variants as tflite_variants
from pipeline.config import DEFAULT_BEAM_WORKERS, PipelineConfig, direct_beam_args


class Flag(NamedTuple):
    flag: str
    field: str  # a PipelineConfig field, or BEAM_WORKERS
    help: str


BEAM_WORKERS = "beam_workers"  # not a field: becomes beam_args (config.direct_beam_args)

FLAGS: Dict[str, Flag] = {f.field: f for f in (
    Flag("--pipeline-name", "pipeline_name",
         "pipeline name in MLMD and Kubeflow; runs find their baseline and feature cache by it"),
    Flag("--backbone", "backbone", "frozen ImageNet backbone (components/backbones/registry.py)"),
    Flag("--weights", "weights",
         "imagenet (offline cache), keras (download), random, or a weights file"),
    Flag("--min-accuracy", "min_accuracy", "lowest eval accuracy the Evaluator blesses"),
    Flag("--max-accuracy-drop", "max_accuracy_drop",
         "allowed drop in eval accuracy against the last blessed model"),
    Flag("--eval-percent", "eval_percent", "percent of the images (by content) in the eval split"),
    Flag("--min-images-per-class", "min_images_per_class", "fewest images a class may have"),
    Flag("--epochs", "epochs", "most epochs of head training (early stopping may end it sooner)"),
    Flag("--seed", "seed", "random seed of head training"),
    Flag("--max-class-recall-drop", "max_class_recall_drop",
         "refuse a candidate whose recall on any class drops by more than this against the baseline"),
    Flag("--class-weights", "class_weights",
         "none, or balanced: weigh each class's loss by images / (classes x the class's images)"),
    Flag("--trainable-blocks", "trainable_blocks",
         "fine-tune the backbone's top N blocks with the head, on cached activations (0: head only)"),
    Flag("--activation-dtype", "activation_dtype",
         "float16 or float32: how the activations below the trainable blocks are cached"),
    Flag("--cold-start", "cold_start",
         "with --trainable-blocks: fine-tune from the ImageNet weights, not from the served model"),
    Flag("--allow-label-change", "allow_label_change",
         "accept classes that differ from the blessed model's (deliberate change)"),
    Flag("--max-class-share-change", "max_class_share_change",
         "stop when a class's share of the images moves by more than this"),
    Flag("--feature-batch-size", "feature_batch_size",
         "images per backbone forward pass when computing features"),
    Flag("--augment-views", "augment_views",
         "cached augmented views (flip, crop, colour) per training image"),
    Flag("--beam-workers", BEAM_WORKERS,
         "Beam DirectRunner worker processes (each loads its own backbone)"),
    Flag("--tflite-variants", "tflite_variants",
         "comma-separated TFLite variants to convert and push: " + ", ".join(tflite_variants.VARIANTS)),
    Flag("--parity-bound", "parity_bounds",
         "minimum top-1 agreement with the SavedModel for a variant to be pushed, on all eval "
         "images or on the confident ones (top-1 >= 0.5) at most 1 point of accuracy lost; repeatable"),
    Flag("--calibration-images", "calibration_images",
         "training images used to calibrate the int8 variant"),
    Flag("--max-file-bytes", "max_file_bytes",
         "image files larger than this are skipped unread (reported in the ingestion report)"),
    Flag("--min-image-side", "min_image_side",
         "images smaller than this many pixels on their short side are skipped"),
    Flag("--follow-external-symlinks", "follow_external_symlinks",
         "follow file symlinks in class folders to targets outside the images root"),
    Flag("--enable-cache", "enable_cache",
         "reuse outputs of unchanged steps from earlier runs in this workdir"),
)}

_FIELDS = {f.name: f for f in dataclasses.fields(PipelineConfig)}
_TYPES = typing.get_type_hints(PipelineConfig)


def default(field: str) -> Any:
    if field == BEAM_WORKERS:
        return DEFAULT_BEAM_WORKERS
    f = _FIELDS[field]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _kind(field: str) -> Any:
    """The flag's type: Optional[X] (a setting that is off when None) parses as X."""
    if field == BEAM_WORKERS:
        return int
    kind = _TYPES[field]
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def _shown(field: str) -> str:
    value, kind = default(field), _kind(field)
    if value is None:
        return "off"
    if kind is bool:
        return "on" if value else "off"
    if field == "parity_bounds":  # overrides of the per-variant defaults
        bounds = tflite_variants.parity_bounds(value)
        return ", ".join(f"{k}={v}" for k, v in bounds.items())
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def add_flags(parser: argparse.ArgumentParser, fields: Iterable[str],
              help_texts: Optional[Mapping[str, str]] = None) -> None:
    """Adds the flags of `fields` (FLAGS keys), defaults from PipelineConfig;
    `help_texts` replaces a flag's help where a command means something more."""
    for field in fields:
        row = FLAGS[field]
        text = (help_texts or {}).get(field, row.help)
        text = f"{text} (default: {_shown(field)})".replace("%", "%%")
        kind, value = _kind(field), default(field)
        if kind is bool:
            if value:
                raise ValueError(f"{row.flag}: a switch must default to off")
            parser.add_argument(row.flag, dest=field, action="store_true", help=text)
        elif field == "parity_bounds":
            parser.add_argument(row.flag, dest=field, action="append", default=[],
                                metavar="VARIANT=MIN", help=text)
        elif isinstance(value, tuple):
            parser.add_argument(row.flag, dest=field, default=",".join(value), help=text)
        else:
            parser.add_argument(row.flag, dest=field, type=kind, default=value, help=text)


def finite(flag: str, value: float) -> float:
    """`value`, or ValueError naming `flag`: NaN and inf compare false with any
    bound, so they would pass a range check and switch a gate off."""
    if not math.isfinite(value):
        raise ValueError(f"{flag} must be a finite number, got {value}")
    return value


def values(args: argparse.Namespace, fields: Iterable[str]) -> Dict[str, Any]:
    """PipelineConfig keyword arguments from parsed flags (beam_workers -> beam_args);
    ValueError with a one-line message for a malformed value."""
    out: Dict[str, Any] = {}
    for field in fields:
        value = getattr(args, field)
        if field == BEAM_WORKERS:
            out["beam_args"] = direct_beam_args(value)
        elif field == "parity_bounds":
            out[field] = parse_parity_bounds(value)
        elif isinstance(default(field), tuple):
            out[field] = tuple(v.strip() for v in value.split(",") if v.strip())
        elif _kind(field) is float and value is not None:
            out[field] = finite(FLAGS[field].flag, value)
        else:
            out[field] = value
    return out


def parse_parity_bounds(items: Iterable[str]) -> Dict[str, float]:
    """["int8=0.95", ...] -> {"int8": 0.95}; names and ranges are checked by validate()."""
    bounds = {}
    for item in items:
        variant, sep, value = item.partition("=")
        try:
            bounds[variant.strip()] = finite("--parity-bound", float(value))
        except ValueError:
            raise ValueError(f"--parity-bound must look like int8=0.95, got {item!r}") from None
        if not sep:
            raise ValueError(f"--parity-bound must look like int8=0.95, got {item!r}")
    return bounds
