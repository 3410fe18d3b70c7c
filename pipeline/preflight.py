"""Checks before any TFX component starts: cheap, and each failure is one line."""

from __future__ import annotations

import collections
import dataclasses

import tensorflow as tf

from components import image_io
from pipeline.config import PipelineConfig


class PreflightError(ValueError):
    """Bad input the user must fix; the message names the thing to fix."""


def scan(config: PipelineConfig) -> PipelineConfig:
    """Validates the config and images folder; returns it with label_names set.

    Counts files by name only (decoding happens in ExampleGen, in parallel), so a
    class can still lose corrupt files later; those are reported, not fatal.
    """
    problem = config.validate()
    if problem:
        raise PreflightError(problem)
    if not tf.io.gfile.isdir(config.images):
        raise PreflightError(f"images folder not found: {config.images}")
    labels = image_io.list_label_folders(config.images)
    if len(labels) < 2:
        raise PreflightError(
            f"found {len(labels)} class folder(s) in {config.images} ({', '.join(labels) or 'none'}); "
            "need at least 2: put images in <images>/<label>/<file>")
    counts = collections.Counter(
        c.label for c in image_io.walk_images(config.images, config.extensions)
        if isinstance(c, image_io.Candidate))
    for label in labels:
        if counts[label] < config.min_images_per_class:
            raise PreflightError(
                f"class '{label}' has {counts[label]} images, the minimum is "
                f"{config.min_images_per_class}")
    return dataclasses.replace(config, label_names=tuple(labels))
