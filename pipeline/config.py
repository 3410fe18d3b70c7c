"""All settings of a pipeline run, in one dataclass."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, Optional, Tuple

from components import contracts, image_io
from components.settings import ACTIVATION_DTYPES, CLASS_WEIGHTS, TrainerSettings, TransformSettings
from components.tflite import variants as _variants

LOOKUPS = ("resolver", "registry")


# Unless a dependency flag is set, every TFX Beam executor packages TFX as an sdist
# for remote workers: a copy of the TFX tree in a fresh /tmp directory and a
# `setup.py sdist` subprocess, about 1.2 s and 42 MB (never deleted) per Beam
# component per run. DirectRunner workers run in this environment (in process or
# as subprocesses of this interpreter) and never read the flag.
DIRECT_RUNNER_NO_STAGING = "--sdk_container_image=unused:direct-runner-workers-share-this-environment"


# Beam DirectRunner worker processes: each loads its own backbone (~30 s of
# start-up on a 2-core machine), so more pay off only with many cores and images.
DEFAULT_BEAM_WORKERS = 1


def direct_beam_args(workers: int) -> List[str]:
    """Beam DirectRunner options for `workers` processes (1: in this process)."""
    if workers < 1:
        raise ValueError(f"--beam-workers must be >= 1, got {workers}")
    if workers == 1:
        return ["--direct_num_workers=1", DIRECT_RUNNER_NO_STAGING]
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}",
            DIRECT_RUNNER_NO_STAGING]


@dataclasses.dataclass
class PipelineConfig:
    """Every setting of a run, each with its one default (the CLIs' flags take
    theirs from here: pipeline/config_flags.py). Defaults that are constants of
    a module (backbone, TFLite variants, image limits) are defined there."""

    # <images>/<label>/<file> folder, or a `uri,label` CSV manifest; local, gs:// or s3://.
    images: str
    workdir: str                     # pipeline root, MLMD database and serving/ live here
    # The pipeline's name in MLMD and Kubeflow; runs find their baseline and
    # feature cache by it, so every run of one model must share it.
    pipeline_name: str = "image-retrain"
    # Backbone (components/backbones/registry.py; the default has offline weights).
    backbone: str = contracts.DEFAULT_BACKBONE
    # Where its weights come from: "imagenet" (the offline cache: never a
    # download, never random), "keras" (Keras' download), "random", or a file.
    weights: str = "imagenet"
    # Label vocabulary: sorted class folder names, filled in by preflight.scan().
    label_names: Tuple[str, ...] = ()
    # Class folders without an image file, skipped: filled in by preflight.scan().
    empty_classes: Tuple[str, ...] = ()
    # Percent of images (by content hash) in the eval split: the usual 80/20.
    eval_percent: int = 20
    # Fewer images than this in a class stops the run: at 20 % eval, 10 images
    # leave 2 to measure the class on, the least that says anything.
    min_images_per_class: int = 10
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS            # larger images are skipped
    # Larger files are skipped unread (checked with a stat before reading).
    max_file_bytes: int = image_io.DEFAULT_MAX_FILE_BYTES
    min_image_side: int = image_io.DEFAULT_MIN_IMAGE_SIDE    # smaller images are skipped
    # File symlinks in a class folder are followed only to targets inside the
    # images root unless this is set (a link to /etc or another dataset is a mistake).
    follow_external_symlinks: bool = False
    extensions: Tuple[str, ...] = image_io.DEFAULT_EXTENSIONS  # files read as images
    # Identical files under two labels are left out: kept, they would teach
    # the head both answers for one image.
    exclude_label_conflicts: bool = True
    # LabelGuard (components/label_guard.py). Off: a model with other classes
    # than the blessed one cannot be gated against it; on for a deliberate change.
    allow_label_change: bool = False
    # Stop when a class's share of the images moves by more than this (absolute,
    # 0.2 = 20 points): enough for new photos, not for a mislabelled folder.
    max_class_share_change: float = 0.2
    # BottleneckGen (components/bottleneck_gen.py): images per backbone forward
    # pass; 64 reaches ~0.87 of raw batched inference speed here (README) in
    # bounded memory.
    feature_batch_size: int = 64
    # Cached augmented views (flip, crop, colour) per training image: each costs a
    # forward pass, and 2 views gained no accuracy on the demo data (README).
    augment_views: int = 0
    # Head training (components/trainer.py). At most this many epochs; early
    # stopping on eval loss (`patience` epochs without improvement) ends it
    # sooner, so the bound only matters for a head still improving.
    epochs: int = 100
    batch_size: int = 32        # Keras' default fit batch size
    learning_rate: float = 1e-3  # Adam's default step size
    patience: int = 5
    seed: int = 42              # fixed: the same data trains the same head
    # "balanced": each class's loss weighted by total / (classes x its images), for
    # imbalanced folders (recorded in the Trainer's settings; "none" leaves them as they were).
    class_weights: str = "none"
    # Fine-tuning (components/fine_tune.py): the backbone's top N blocks train with the
    # head (0: the head alone) on cached activations at the cut below them, cached as
    # activation_dtype: float16 halves the cache (MobileNet v1: 98 KB instead of 196 KB
    # an image at N = 1) for a rounding of 2^-11 relative (docs/performance.md).
    trainable_blocks: int = 0
    activation_dtype: str = ACTIVATION_DTYPES[0]
    # N > 0: a rerun continues the served model's fine-tuning when it was trained with
    # the same settings (components/continuation.py); True starts from ImageNet weights.
    cold_start: bool = False
    # Fault injection for testing the gate: train on shuffled labels.
    corrupt_train_labels: bool = False
    # The Evaluator's gate: bless when eval accuracy >= min_accuracy (better than
    # a coin on two classes) and >= the blessed baseline's minus max_accuracy_drop.
    min_accuracy: float = 0.5
    max_accuracy_drop: float = 0.01
    # Opt-in per-class gate: refuse a candidate whose recall on any class drops by
    # more than this against the baseline (components/evaluation.py); None: off.
    max_class_recall_drop: Optional[float] = None
    # TFLite (components/tflite/variants.py): variants converted and, when they
    # meet their parity bound, pushed; parity_bounds overrides per variant the
    # minimum top-1 agreement with the SavedModel (variants.DEFAULT_PARITY_BOUNDS);
    # training images used to calibrate the int8 variant.
    tflite_variants: Tuple[str, ...] = _variants.DEFAULT_VARIANTS
    parity_bounds: Dict[str, float] = dataclasses.field(default_factory=dict)
    calibration_images: int = _variants.DEFAULT_CALIBRATION_IMAGES
    # Beam: e.g. ["--direct_running_mode=multi_processing", "--direct_num_workers=2"].
    beam_args: List[str] = dataclasses.field(
        default_factory=lambda: direct_beam_args(DEFAULT_BEAM_WORKERS))
    # TFX's step cache. Off: each run reads the images and the latest baseline
    # afresh; BottleneckGen's FeatureCache already skips the expensive part.
    enable_cache: bool = False
    # How a run finds the previous run's blessed model (baseline) and FeatureCache:
    #   "resolver"  TFX Resolver nodes querying MLMD (LatestBlessedModelStrategy,
    #               LatestArtifactStrategy): the local runner and Vertex AI Pipelines;
    #   "registry"  ordinary container steps reading pointer files under
    #               <pipeline_root>/_registry/<pipeline_name>/ (components/previous_artifacts.py):
    #               for open-source KFP v2, whose backend rejects resolver tasks.
    # `retrain compile --target kfp` (default) sets "registry", `--target vertex` "resolver".
    # Read only by pipeline/previous_runs.py.
    lookup: str = "resolver"
    # Explicit locations, e.g. gs:// or s3:// URIs for Kubeflow, where there is no
    # local workdir; None keeps the defaults under workdir.
    pipeline_root_uri: Optional[str] = None
    serving_uri: Optional[str] = None

    @property
    def pipeline_root(self) -> str:
        return self.pipeline_root_uri or os.path.join(self.workdir, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.workdir, "metadata.sqlite")

    @property
    def serving_dir(self) -> str:
        return self.serving_uri or os.path.join(self.workdir, "serving")

    def locations(self) -> Tuple[str, str, str]:
        """Where the pipeline reads images and writes artifacts and versions."""
        return (self.images, self.pipeline_root, self.serving_dir)

    def pipeline_beam_args(self) -> List[str]:
        """beam_args plus what the locations need (s3://: components/object_store.py)."""
        from components import object_store
        extra = [a for a in object_store.beam_args(self.locations()) if a not in self.beam_args]
        return list(self.beam_args) + extra

    def transform_settings(self) -> TransformSettings:
        """Transform's custom_config (components/preprocessing.py)."""
        return TransformSettings(backbone=self.backbone, weights=self.weights,
                                 trainable_blocks=self.trainable_blocks, activation_dtype=self.activation_dtype)

    def trainer_settings(self) -> TrainerSettings:
        """The Trainer's custom_config (components/trainer.py)."""
        return TrainerSettings(
            backbone=self.backbone, weights=self.weights, label_names=tuple(self.label_names),
            epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
            patience=self.patience, seed=self.seed, corrupt_train_labels=self.corrupt_train_labels,
            class_weights=self.class_weights, trainable_blocks=self.trainable_blocks,
            activation_dtype=self.activation_dtype, cold_start=self.cold_start)

    def validate(self) -> Optional[str]:
        """One-line description of the first invalid setting, or None."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                return f"{f.name} must be a finite number, got {value}"
        if not 0 < self.eval_percent < 100:
            return f"eval_percent must be between 1 and 99, got {self.eval_percent}"
        if not 0.0 <= self.min_accuracy <= 1.0:
            return f"min_accuracy must be between 0 and 1, got {self.min_accuracy}"
        if self.max_accuracy_drop < 0:
            return f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}"
        if self.max_class_recall_drop is not None and not 0.0 <= self.max_class_recall_drop <= 1.0:
            return f"max_class_recall_drop must be between 0 and 1, got {self.max_class_recall_drop}"
        if self.epochs < 1 or self.batch_size < 1:
            return "epochs and batch_size must be >= 1"
        if not 0.0 < self.max_class_share_change <= 1.0:
            return f"max_class_share_change must be in (0, 1], got {self.max_class_share_change}"
        if self.feature_batch_size < 1 or self.augment_views < 0:
            return "feature_batch_size must be >= 1 and augment_views >= 0"
        if self.trainable_blocks < 0:
            return f"trainable_blocks must be >= 0, got {self.trainable_blocks}"
        if self.activation_dtype not in ACTIVATION_DTYPES:
            return f"activation_dtype must be one of {', '.join(ACTIVATION_DTYPES)}, got {self.activation_dtype!r}"
        if self.class_weights not in CLASS_WEIGHTS:
            return f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}, got {self.class_weights!r}"
        if self.lookup not in LOOKUPS:
            return f"lookup must be one of {', '.join(LOOKUPS)}, got {self.lookup!r}"
        if self.min_images_per_class < 1:
            return f"min_images_per_class must be >= 1, got {self.min_images_per_class}"
        if self.max_file_bytes < 1 or self.min_image_side < 1:
            return (f"max_file_bytes and min_image_side must be >= 1, got {self.max_file_bytes}, "
                    f"{self.min_image_side}")
        problem = _variants.validate_settings(
            self.tflite_variants, self.parity_bounds, self.calibration_images)
        if problem:
            return problem
        return None
