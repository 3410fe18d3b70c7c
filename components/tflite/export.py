"""Converting, writing and measuring the configured variants of one trained model.

Builds on the pixel model (backbone + the Trainer's head): each variant is converted
(:mod:`convert`), gets its metadata (:mod:`metadata`), is loaded in the interpreter
(:mod:`runtime`) and measured against the reference probabilities on the eval
split of the raw Examples (:mod:`parity`; where they come from: :mod:`reference`).
A variant that fails is reported; the others go on.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from components import contracts
from components.tflite import convert, metadata, parity
from components.tflite.runtime import Classifier
from components.tflite.variants import FILE_NAMES, INT8_INPUT_QUANTIZATION

EvalBatch = Tuple[np.ndarray, np.ndarray, np.ndarray]  # pixels [B, H, W, 3], reference [B, C], labels [B]
# The int8 conversion reads the calibration images up to three times (bias correction,
# the ranges' batched pass, the calibrator on the images that widen a range): they are
# decoded once and kept, up to this many bytes of float32 pixels (100 images at 224 px:
# 60 MB); more are decoded again on each read. With 1920 x 1280 JPEGs, decoding took
# about 3 s of each read.
CALIBRATION_CACHE_BYTES = 512 * 2 ** 20


def calibration_source(calibration_bytes: Sequence[bytes], size: int,
                       limit: int = CALIBRATION_CACHE_BYTES) -> Callable[[], Iterator[np.ndarray]]:
    """What convert.convert takes as ``calibration``: a callable giving each calibration
    image's [size, size, 3] float32 pixels, decoded on the first call and kept when
    they fit in ``limit`` bytes (the same arrays every call), else decoded every call."""
    from components.image_decode import decode_batch

    def decoded() -> Iterator[np.ndarray]:
        for batch in convert.batches(calibration_bytes, 32):
            yield from decode_batch(batch, size).numpy()

    if len(calibration_bytes) * size * size * 3 * 4 > limit:
        return decoded
    kept: List[np.ndarray] = []

    def cached() -> Iterator[np.ndarray]:
        if not kept:
            for pixels in decoded():
                pixels.setflags(write=False)  # shared by every read: no reader may change it
                kept.append(pixels)
        return iter(kept)
    return cached


class PartSeconds:
    """Wall seconds per part of one export, summed over the part's calls (logged and
    recorded on the TFLiteModels artifact: what benchmarks/tflite_export_parts.py reads)."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def rounded(self) -> Dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


def export_variants(pixel_model, variants: Sequence[str], bounds: Mapping[str, float],
                    label_names: Sequence[str], backbone: str, out_dir: str,
                    calibration_bytes: Sequence[bytes], eval_batches: Iterable[EvalBatch],
                    version: str = "", num_threads: int = 2,
                    plan_cache: Optional[convert.PlanCache] = None,
                    reference_name: str = parity.REFERENCE,
                    timer: Optional[PartSeconds] = None) -> parity.ParityReport:
    """Converts, writes and measures the variants; returns the parity report.

    ``eval_batches`` yields (pixels [B, H, W, 3] 0..255, reference probabilities
    [B, C], labels [B]).  Writes ``FILE_NAMES[v]``, ``labels.txt`` and ``parity.json``
    into ``out_dir`` (any tf.io.gfile path).  ``plan_cache``: where the int8
    variant's backbone quantization plan is cached (:func:`convert.convert`).
    ``reference_name``: parity.json's ``reference``, where the reference probabilities came from;
    ``timer``: gets each variant's ``parity[v]`` seconds (its conversion's are in the report).
    """
    import tensorflow as tf
    size = int(pixel_model.input_shape[1])
    timer = timer or PartSeconds()
    calibration = calibration_source(calibration_bytes, size)

    tf.io.gfile.makedirs(out_dir)
    entries: Dict[str, parity.VariantParity] = {}
    classifiers: Dict[str, Tuple[Classifier, parity.Conversion]] = {}
    for variant in variants:
        bound = float(bounds[variant])
        start = time.time()
        try:
            if variant == "int8" and not calibration_bytes:
                raise ValueError("no training images to calibrate on")
            data = convert.convert(pixel_model, variant, calibration if variant == "int8" else None,
                                   plan_cache=plan_cache)
            data = metadata.add_metadata(data, label_names, name=f"{backbone} retrained ({variant})",
                                         description=metadata.describe(backbone, variant, label_names),
                                         version=version)
            classifier = Classifier(data, num_threads=num_threads)
        except Exception as e:  # a failed variant is reported, the others go on
            entries[variant] = parity.VariantParity(
                variant, FILE_NAMES[variant], bound, False,
                f"conversion failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        conversion = parity.Conversion(
            bytes=len(data), convert_seconds=round(time.time() - start, 2),
            input_type=classifier.input_dtype.name, output_type=classifier.output_dtype.name,
            input_quantization=tuple(classifier.input_quantization))
        if variant == "int8" and tuple(classifier.input_quantization) != INT8_INPUT_QUANTIZATION:
            entries[variant] = parity.VariantParity(
                variant, FILE_NAMES[variant], bound, False,
                f"uint8 input quantization {classifier.input_quantization} is not raw pixels "
                f"{INT8_INPUT_QUANTIZATION}", conversion)
            continue
        with tf.io.gfile.GFile(os.path.join(out_dir, FILE_NAMES[variant]), "wb") as f:
            f.write(data)
        classifiers[variant] = classifier, conversion

    counters = {v: parity.ParityCounter() for v in classifiers}
    reference_counter = parity.ParityCounter()
    for pixels, reference, labels in eval_batches:
        reference_counter.update(reference, reference, labels)
        for variant, (classifier, _) in classifiers.items():
            with timer.part(f"parity[{variant}]"):
                probs = classifier.predict(pixels)
            counters[variant].update(probs, reference, labels)
    for variant, (_, conversion) in classifiers.items():
        entries[variant] = parity.VariantParity.judged(
            variant, float(bounds[variant]), conversion, counters[variant].result())
    measured = tuple(entries[v] for v in variants)
    report = parity.ParityReport(
        variants=measured, passed=tuple(v.variant for v in measured if v.passed), backbone=backbone,
        label_names=tuple(label_names), calibration_examples=len(calibration_bytes),
        eval_examples=reference_counter.n, reference_accuracy=reference_counter.result().accuracy,
        reference=reference_name)
    with tf.io.gfile.GFile(os.path.join(out_dir, contracts.LABELS_FILE), "w") as f:
        f.write(metadata.labels_text(label_names))
    report.write(out_dir)
    return report

