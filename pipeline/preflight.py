"""Checks before any TFX component starts: cheap, and each failure is one line."""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil

import tensorflow as tf

from components import image_io
from pipeline.config import PipelineConfig


class PreflightError(ValueError):
    """Bad input the user must fix; the message names the thing to fix."""


def scan(config: PipelineConfig) -> PipelineConfig:
    """Validates the config and images; returns the config with label_names set.

    `config.images` is a folder of <label>/<file> or a `uri,label` CSV manifest.
    Counts files by name only (decoding happens in ExampleGen, in parallel), so a
    class can still lose corrupt files later; those are reported, not fatal.
    """
    problem = config.validate()
    if problem:
        raise PreflightError(problem)
    manifest = config.images.lower().endswith(".csv")
    if manifest and not tf.io.gfile.exists(config.images):
        raise PreflightError(f"manifest not found: {config.images}")
    if not manifest and not tf.io.gfile.isdir(config.images):
        raise PreflightError(f"images folder not found: {config.images}")

    found = list(image_io.find_images(config.images, config.extensions,
                                      config.follow_external_symlinks))
    counts = collections.Counter(c.label for c in found if isinstance(c, image_io.Candidate))
    folders = sorted(counts) if manifest else image_io.list_label_folders(config.images)
    # An empty class folder is skipped and reported (ImageExampleGen's report,
    # the CLI's warning): a scheduled run must not die because one was created.
    empty = tuple(label for label in folders if counts[label] == 0)
    labels = [label for label in folders if counts[label] > 0]
    for label in labels:
        problem = image_io.label_problem(label)
        if problem:
            raise PreflightError(f"{problem}: rename the folder" if not manifest else problem)
    if len(labels) < 2:
        raise PreflightError(
            f"found {len(labels)} class(es) with images in {config.images} "
            f"({', '.join(labels) or 'none'}"
            + (f"; empty: {', '.join(empty)}" if empty else "") + "); "
            "need at least 2: put images in <images>/<label>/<file>")
    small = [label for label in labels if counts[label] < config.min_images_per_class]
    if len(small) == 1:
        raise PreflightError(f"class '{small[0]}' has {counts[small[0]]} images, the minimum is "
                             f"{config.min_images_per_class}")
    if small:  # all of them at once: a user should not rerun once per class to find the next
        named = ", ".join(f"'{label}' ({counts[label]})" for label in small[:SMALL_CLASSES_NAMED])
        more = f" and {len(small) - SMALL_CLASSES_NAMED} more" if len(small) > SMALL_CLASSES_NAMED else ""
        raise PreflightError(
            f"{len(small)} classes have fewer than {config.min_images_per_class} images (the minimum): "
            f"{named}{more}; add images, remove those folders or lower --min-images-per-class")
    config = dataclasses.replace(config, label_names=tuple(labels), empty_classes=empty)
    check_free_space(config, _local_bytes(found, config.max_file_bytes))
    return config


# Classes named in the too-few-images error; the rest are counted.
SMALL_CLASSES_NAMED = 20

# What a run writes besides its images' copies: models (the backbone is in the
# Transform graph, the SavedModel and each TFLite variant), features, statistics.
# 300 MB holds a MobileNet run with every variant, with room to spare.
RUN_OVERHEAD_BYTES = 300_000_000


def _local_bytes(found, max_file_bytes: int) -> int:
    """Total size of the local files that will be read (larger ones are skipped)."""
    total = 0
    for item in found:
        if isinstance(item, image_io.Candidate) and "://" not in item.path:
            try:
                size = os.path.getsize(item.path)
            except OSError:  # vanished or a broken link: ImageExampleGen reports it
                continue
            total += size if size <= max_file_bytes else 0
    return total


def check_free_space(config: PipelineConfig, image_bytes: int) -> None:
    """PreflightError unless the pipeline root's disk has room for a run: its
    examples copy every image (a re-encoded one may grow), so 2 x the images'
    size + RUN_OVERHEAD_BYTES. A rough bound, checked before anything is written."""
    if "://" in config.pipeline_root:
        return
    where = os.path.abspath(config.pipeline_root)
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    free = shutil.disk_usage(where).free
    need = 2 * image_bytes + RUN_OVERHEAD_BYTES
    if free < need:
        raise PreflightError(
            f"not enough free space at {where}: {free // 1_000_000} MB free, a run needs about "
            f"{need // 1_000_000} MB (2 x the images' {image_bytes // 1_000_000} MB + "
            f"{RUN_OVERHEAD_BYTES // 1_000_000} MB); free some or use another --workdir")
