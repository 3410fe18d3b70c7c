"""All settings of a pipeline run, in one dataclass."""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

from components import contracts, image_io

LOOKUPS = ("resolver", "registry")


# Unless a dependency flag is set, every TFX Beam executor packages TFX as an sdist
# for remote workers: a copy of the TFX tree in a fresh /tmp directory and a
# `setup.py sdist` subprocess, about 1.2 s and 42 MB (never deleted) per Beam
# component per run. DirectRunner workers run in this environment (in process or
# as subprocesses of this interpreter) and never read the flag.
DIRECT_RUNNER_NO_STAGING = "--sdk_container_image=unused:direct-runner-workers-share-this-environment"


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
    # <images>/<label>/<file> folder, or a `uri,label` CSV manifest; local, gs:// or s3://.
    images: str
    workdir: str                     # pipeline root, MLMD database and serving/ live here
    pipeline_name: str = "image-retrain"
    # Backbone (see components/backbones/registry.py) and where its weights come from:
    # "imagenet" (offline cache), "keras" (Keras download), "random", or a file.
    backbone: str = contracts.DEFAULT_BACKBONE
    weights: str = "imagenet"
    # Label vocabulary: sorted class folder names, filled in by preflight.scan().
    label_names: Tuple[str, ...] = ()
    # Ingestion.
    eval_percent: int = 20
    min_images_per_class: int = 10
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS
    extensions: Tuple[str, ...] = image_io.DEFAULT_EXTENSIONS
    exclude_label_conflicts: bool = True
    # Label-space guard against the blessed baseline (see components/label_guard.py).
    allow_label_change: bool = False
    max_class_share_change: float = 0.2
    # Backbone features (components/bottleneck_gen.py): images per forward pass,
    # and augmented views per training image (0 = none), cached like the rest.
    feature_batch_size: int = 64
    augment_views: int = 0
    # Head training.
    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int = 5
    seed: int = 42
    # Fault injection for testing the gate: train on shuffled labels.
    corrupt_train_labels: bool = False
    # Gate.
    min_accuracy: float = 0.5
    max_accuracy_drop: float = 0.01
    # TFLite (components/tflite/): variants converted and, when they meet
    # their parity bound, pushed ("float32", "fp16", "dynamic", "int8"); bounds are
    # the minimum top-1 agreement with the SavedModel on the eval split, per variant
    # (defaults: 0.99 float32/fp16, 0.97 dynamic/int8); int8 calibration images.
    tflite_variants: Tuple[str, ...] = ("float32", "int8")
    parity_bounds: Dict[str, float] = dataclasses.field(default_factory=dict)
    calibration_images: int = 100
    # Beam: e.g. ["--direct_running_mode=multi_processing", "--direct_num_workers=2"].
    beam_args: List[str] = dataclasses.field(default_factory=lambda: direct_beam_args(1))
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

    def transform_config(self) -> dict:
        return {"backbone": self.backbone, "weights": self.weights}

    def trainer_config(self) -> dict:
        return {
            "backbone": self.backbone, "weights": self.weights,
            "label_names": list(self.label_names),
            "epochs": self.epochs, "batch_size": self.batch_size,
            "learning_rate": self.learning_rate, "patience": self.patience,
            "seed": self.seed, "corrupt_train_labels": self.corrupt_train_labels,
        }

    def validate(self) -> Optional[str]:
        """One-line description of the first invalid setting, or None."""
        if not 0 < self.eval_percent < 100:
            return f"eval_percent must be between 1 and 99, got {self.eval_percent}"
        if not 0.0 <= self.min_accuracy <= 1.0:
            return f"min_accuracy must be between 0 and 1, got {self.min_accuracy}"
        if self.max_accuracy_drop < 0:
            return f"max_accuracy_drop must be >= 0, got {self.max_accuracy_drop}"
        if self.epochs < 1 or self.batch_size < 1:
            return "epochs and batch_size must be >= 1"
        if not 0.0 < self.max_class_share_change <= 1.0:
            return f"max_class_share_change must be in (0, 1], got {self.max_class_share_change}"
        if self.feature_batch_size < 1 or self.augment_views < 0:
            return "feature_batch_size must be >= 1 and augment_views >= 0"
        if self.lookup not in LOOKUPS:
            return f"lookup must be one of {', '.join(LOOKUPS)}, got {self.lookup!r}"
        if self.min_images_per_class < 1:
            return f"min_images_per_class must be >= 1, got {self.min_images_per_class}"
        from components.tflite import variants
        problem = variants.validate_settings(
            self.tflite_variants, self.parity_bounds, self.calibration_images)
        if problem:
            return problem
        return None
