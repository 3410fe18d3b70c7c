"""Keras pixel model -> TFLite flatbuffer, one variant at a time; int8 calibration.

Every file takes ``[1, H, W, 3]`` RGB pixels in 0..255 (the backbone's scaling is
inside the model), resized to H x W the way ingestion does it
(:func:`components.image_decode.decode_and_resize`), and outputs ``[1, C]``
probabilities.  Calibration images for the int8 variant are a few hundred training
Examples picked by content (:func:`calibration_images`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import os
import pathlib
import time
import weakref
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from components import contracts, native_stderr
from components.tflite import calibration_ranges
from components.tflite.bias_correction import QuantPlan, bias_corrected
from components.tflite.equalization import channel_scales, equalized
from components.tflite.variants import check_variants

# Calibration images (at most) on which the int8 variant's bias correction is measured.
BIAS_CORRECTION_IMAGES = 64


def range_anchor_image(size: int) -> np.ndarray:
    """A [size, size, 3] gradient spanning exactly 0..255: first calibration sample, so
    the int8 variant's uint8 input range is exactly the pixel range (scale 1, zp 0)."""
    ramp = np.linspace(0.0, 255.0, size, dtype=np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[..., 0] = ramp[None, :]
    img[..., 1] = ramp[:, None]
    img[..., 2] = ramp[::-1][None, :]
    return img


def convert(model, variant: str, calibration: Optional[Callable[[], Iterator[np.ndarray]]] = None,
            bias_correction: bool = True, timings: Optional[Dict[str, float]] = None,
            learned_rounding: bool = False, plan_cache: Optional["PlanCache"] = None,
            equalize: bool = False, fast_calibration: bool = True) -> bytes:
    """TFLite flatbuffer of the Keras ``model`` (input [1, H, W, 3] float32 0..255).

    ``calibration`` (int8 only): a callable returning an iterator of [H, W, 3] float32
    pixel arrays (a few hundred training images); a range anchor is prepended.  Unless
    ``bias_correction`` is False, up to BIAS_CORRECTION_IMAGES of them (picked by content)
    also measure the int8 weights' bias shift, which is corrected before conversion
    (:class:`bias_corrected`; the Keras model is unchanged afterwards).  With
    ``learned_rounding`` the backbone's kernels are also rounded to minimise each
    layer's output error (:mod:`rounding`).  With ``equalize`` the ReLU6 channels'
    ranges are equalized first (:mod:`equalization`; measured: no gain in agreement,
    off by default).  ``plan_cache`` holds that plan (the bias shifts, the integers
    when learned, the scales when equalized) per weights fingerprint and images:
    reused when it fits the model, measured and saved otherwise.
    ``timings``, when given, receives the seconds of each phase (``bias_correction``,
    ``converter``: the TFLite converter, calibration included).  int8 ranges come from
    one batched TensorFlow pass (:mod:`calibration_ranges`) unless ``fast_calibration``
    is False or a tensor cannot be mapped: then TFLite's calibrator runs every image.
    """
    import tensorflow as tf
    check_variants([variant])
    if variant == "int8" and calibration is None:
        raise ValueError("the int8 variant needs calibration images")
    timings = {} if timings is None else timings
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if variant == "int8" and bias_correction:
            _enter_correction(stack, model, calibration, learned_rounding, plan_cache, equalize)
        timings["bias_correction"] = time.perf_counter() - start
        start = time.perf_counter()
        converter = tf.lite.TFLiteConverter.from_concrete_functions([_inference_function(model)])
        if variant == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif variant == "int8":
            size = int(model.input_shape[1])

            def representative_dataset():
                yield [range_anchor_image(size)[None]]
                for pixels in calibration():
                    yield [np.asarray(pixels, np.float32)[None]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.uint8
            converter.inference_output_type = tf.uint8
        with native_stderr.to_log():  # the converter's C++ warnings
            data = None
            if variant == "int8" and fast_calibration:  # same ranges, without 55 ms an image
                data = calibration_ranges.quantized_int8(model, converter, range_anchor_image(size), calibration)
            data = data or bytes(converter.convert())
        timings["converter"] = time.perf_counter() - start
        return data


@dataclasses.dataclass(frozen=True)
class PlanCache:
    """Where the backbone's int8 quantization plan is cached, per weights fingerprint
    and method, with the keys of the images it was measured on; reused for images
    that overlap those enough (components/backbones/quant_cache.py)."""
    backbone: str
    fingerprint: str

    def find(self, method: str, images: Sequence[str]) -> Optional[Tuple[QuantPlan, pathlib.Path]]:
        from components.backbones import quant_cache
        found = quant_cache.find(self.backbone, self.fingerprint, method, images)
        if found is None:
            return None
        logging.info("int8 quantization plan reused: measured on %d images, %.0f%% of them the current %d",
                     len(found.images), 100 * found.overlap, len(images))
        return QuantPlan(found.integers, found.shifts, found.scales), found.path

    def save(self, method: str, images: Sequence[str], plan: QuantPlan) -> None:
        from components.backbones import quant_cache
        quant_cache.save(self.backbone, self.fingerprint, method, images, plan.integers, plan.shifts, plan.scales)


def correction_images(calibration: Iterable[np.ndarray], count: int = BIAS_CORRECTION_IMAGES) -> Dict[str, np.ndarray]:
    """sha256 hex key of the pixels -> [H, W, 3] float32 pixels, for the ``count``
    calibration images with the smallest keys: a content order, so a few new images
    change few picks (the plan cache reuses by overlap).  Holds ``count`` images."""
    keyed = ((hashlib.sha256(p.tobytes()).hexdigest(), p)
             for p in (np.ascontiguousarray(p, np.float32) for p in calibration))
    return dict(heapq.nsmallest(count, keyed, key=lambda kp: kp[0]))


def _enter_correction(stack, model, calibration, learned_rounding: bool, cache: Optional[PlanCache],
                      equalize: bool = False):
    """Enters the int8 correction of ``model`` on ``stack`` (ReLU6 range equalization
    when ``equalize``, then bias correction), measured on up to
    BIAS_CORRECTION_IMAGES calibration images (:func:`correction_images`), or a
    cached plan measured on mostly the same images when it fits the model."""
    picked = correction_images(calibration())
    if not picked:
        return None
    keys = sorted(picked)
    pixels = np.stack([picked.pop(k) for k in keys])
    # The method is part of the key: a bias-only plan is not a learned one.
    method = "bias" + ("+learned" if learned_rounding else "") + ("+equalized" if equalize else "")
    found = cache.find(method, keys) if cache else None
    if found is not None:
        plan, path = found
        try:
            with contextlib.ExitStack() as attempt:  # all or nothing
                attempt.enter_context(equalized(model, plan.scales))
                corrected = attempt.enter_context(bias_corrected(model, None, plan=plan))
                stack.enter_context(attempt.pop_all())
                return corrected
        except ValueError as e:  # does not fit this model: removed, measured again
            logging.warning("int8 quantization cache entry ignored: %s", e)
            from components.backbones import quant_cache
            quant_cache.discard(path)
    scales = channel_scales(model, pixels) if equalize else {}
    stack.enter_context(equalized(model, scales))
    corrected = stack.enter_context(bias_corrected(model, pixels, learned_rounding=learned_rounding))
    corrected.plan.scales = scales
    if cache is not None and corrected.plan.shifts:
        try:
            cache.save(method, keys, corrected.plan)
        except OSError as e:  # a read-only cache costs time, not correctness
            logging.warning("int8 quantization cache not written: %s", e)
    return corrected


# model -> its traced forward pass: the variants of one export share one trace.
_TRACED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _inference_function(model):
    """The model's forward pass as one concrete function, traced without AutoGraph,
    once per model (each variant's converter reuses it; 0.15 s a trace for MobileNet).

    from_keras_model would first save the Keras model as a SavedModel, tracing and
    serialising every layer (about 10 s for MobileNet here); freezing this one
    function gives the same graph.  Variables are read when the converter freezes
    them, not when the function is traced, so :class:`bias_corrected`'s changes (and
    their undoing) are seen by every conversion that follows
    (tests/integration/test_tflite_export.py).
    """
    function = _TRACED.get(model)
    if function is None:
        import tensorflow as tf
        spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32, name="image")
        function = tf.function(lambda image: model(image, training=False), input_signature=[spec],
                               autograph=False).get_concrete_function()
        _TRACED[model] = function
    return function


# ------------------------------------------------------------ reading Examples


def examples_files(split_uri: str) -> List[str]:
    """The gzipped TFRecord files of one split folder of an Examples artifact."""
    import tensorflow as tf
    return sorted(tf.io.gfile.glob(os.path.join(split_uri, "*.gz")))


def records(files: List[str]) -> Iterator[bytes]:
    import tensorflow as tf
    if not files:
        return iter(())
    return (r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def image_and_label(record: bytes) -> Tuple[bytes, int]:
    """(encoded image, label index) of one raw Example."""
    import tensorflow as tf
    f = tf.train.Example.FromString(record).features.feature
    return f[contracts.IMAGE_KEY].bytes_list.value[0], int(f[contracts.LABEL_KEY].int64_list.value[0])


def batches(iterable: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def content_key(record: bytes) -> Tuple[str, bytes]:
    """(content key, encoded image) of one raw Example: its ``content_sha256`` (the
    original file's sha256, written by ImageExampleGen), else the image bytes' sha256."""
    import tensorflow as tf
    f = tf.train.Example.FromString(record).features.feature
    image = f[contracts.IMAGE_KEY].bytes_list.value[0]
    stored = f[contracts.CONTENT_SHA256_KEY].bytes_list.value if contracts.CONTENT_SHA256_KEY in f else []
    return (stored[0].decode("ascii", "replace") if stored else hashlib.sha256(image).hexdigest()), image


def calibration_images(train_files: List[str], count: int) -> List[bytes]:
    """Encoded images of the ``count`` training examples with the smallest content
    keys (:func:`content_key`), in key order.

    The keys are uniform hashes, so the picks are a uniform sample of the split; and
    they are a content order, not positions, so new images displace only the picks
    whose keys they undercut: with 10 % more images about 90 % of the picks stay, and
    the int8 plan measured on them is reused (:class:`PlanCache`).  Streams the
    records, holding ``count`` images (a heap).
    """
    if count <= 0:
        return []
    return [image for _, image in heapq.nsmallest(count, map(content_key, records(train_files)),
                                                  key=lambda ki: ki[0])]
