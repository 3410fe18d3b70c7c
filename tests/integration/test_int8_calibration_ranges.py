"""The int8 variant's fast calibration (components/tflite/calibration_ranges.py)
against TFLite's own calibrator, on both real backbones.

The fast path calibrates on the range anchor alone, takes every tensor's per-image
range from one batched TensorFlow pass, calibrates again on the anchor and the few
images that widen a range, and quantizes with mlir_quantize as TFLiteConverter does
(tensorflow/lite/python/lite.py ``_quantize``; the same calibrate-only + mlir_quantize
pair as tensorflow/lite/tools/optimize/debugging/python/debugger.py).  The reference
is the converter itself over every image, with ``_experimental_calibrate_only`` or in full.
"""

import logging

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from components import backbones, fine_tune, trainer
from components.image_decode import decode_batch
from components.tflite import bias_correction, calibration_ranges, convert

CLASSES, PER_CLASS = 3, 8  # 24 demo emoji


@pytest.fixture(scope="module")
def images(emoji_root):
    """[24, 224, 224, 3] float32 0..255: 8 emoji of 3 classes, decoded as export does."""
    classes = sorted(p for p in emoji_root.iterdir() if p.is_dir())[:CLASSES]
    files = [f for c in classes for f in sorted(c.iterdir())[:PER_CLASS]]
    return decode_batch([f.read_bytes() for f in files], 224).numpy()


def _pixel_model(backbone: str, blocks: int = 0):
    """backbone (ImageNet) + an untrained 3-class head (seeded); with ``blocks``, the
    fine-tuned layout (frozen lower part + top blocks and head, components/fine_tune.py)."""
    tf_keras.utils.set_random_seed(0)
    head = (fine_tune.build_top(backbone, "imagenet", blocks, CLASSES) if blocks else
            trainer.build_head(backbones.get_spec(backbone).feature_dim, CLASSES, 1e-3))
    return trainer.build_pixel_model(backbone, "imagenet", head, blocks)


def _int8_converter(model, images):
    """The int8 converter as convert.convert configures it (anchor first)."""
    size = int(model.input_shape[1])
    c = tf.lite.TFLiteConverter.from_concrete_functions([convert._inference_function(model)])
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([p[None]] for p in [convert.range_anchor_image(size), *images])
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = c.inference_output_type = tf.uint8
    return c


def _ranges(data: bytes):
    from tensorflow.lite.tools import flatbuffer_utils
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    return {t.name: t.recorded for t in calibration_ranges.stat_tensors(flat)}


# Observed (2026-11-30): largest relative difference between the TensorFlow pass's
# union and the calibrator's records 1.0e-6 (MobileNet v1), 1.3e-6 (EfficientNet-Lite0),
# 2.6e-6 (MobileNet v1, one fine-tuned block): TFLite runs the BatchNorm-folded float
# graph, TensorFlow the unfolded one.
RANGE_TOLERANCE = 1e-5


@pytest.mark.parametrize("backbone,blocks", [("mobilenet_v1", 0), ("efficientnet_lite0", 0), ("mobilenet_v1", 1)])
def test_ranges_equal_the_calibrators_under_bias_correction(images, backbone, blocks):
    model = _pixel_model(backbone, blocks)
    anchor = convert.range_anchor_image(224)
    with bias_correction.bias_corrected(model, images[:8]) as corrected:
        assert corrected.corrections  # the BatchNorm offsets the passes must read are changed
        anchor_only = calibration_ranges._calibrate_on(_int8_converter(model, images), anchor)
        from tensorflow.lite.tools import flatbuffer_utils
        flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(anchor_only))
        union, widening = calibration_ranges.union_ranges(model, anchor_only, flat, anchor, lambda: iter(images))
        fast = calibration_ranges.calibrated_model(model, _int8_converter(model, images), anchor,
                                                   lambda: iter(images))
        reference = _int8_converter(model, images)
        reference._experimental_calibrate_only = True
        full = _ranges(bytes(reference.convert()))
    assert fast is not None, "the fast path fell back"
    # The calibrator's own floats; a min above 0 (a max below 0) is left at the anchor's
    # record, as the quantizer widens every range to include 0 anyway.
    fast_ranges = _ranges(fast)
    assert fast_ranges.keys() == full.keys()
    names = {t.index: t.name for t in calibration_ranges.stat_tensors(flat)}
    softmax = {names[i] for i in _softmax_outputs(flat)}
    assert len(softmax) == 1 and not softmax & {names[i] for i in union}  # its record is the anchor's
    for k, (lo, hi) in full.items():
        assert k in softmax or (lo > 0 or fast_ranges[k][0] == lo) and (hi < 0 or fast_ranges[k][1] == hi), k
    worst = max(max(abs(lo - full[names[i]][0]), abs(hi - full[names[i]][1])) /
                max(1.0, abs(full[names[i]][0]), abs(full[names[i]][1])) for i, (lo, hi) in union.items())
    # The comparison bites where the images widen the anchor's ranges.  The anchor
    # (a 0..255 gradient) already fills most ReLU6 ranges; observed widened: MobileNet v1
    # 4 of 37 tensors (pooled features, head, output), EfficientNet-Lite0 32 of 64.
    anchor_ranges = _ranges(anchor_only)
    widened = sum(full[k] != anchor_ranges[k] for k in full)
    print(backbone, blocks, "tensors", len(full), "widened", widened, "by images", len(widening), "worst", worst)
    assert worst <= RANGE_TOLERANCE, worst
    assert widened >= 3 and 0 < len(widening) < len(images)


def _softmax_outputs(flat):
    graph = flat.subgraphs[0]
    return {o for op in graph.operators if calibration_ranges._op_name(flat, op) == "SOFTMAX" for o in op.outputs}


def test_a_saturated_softmax_widens_nothing_and_the_file_is_the_calibrators(images):
    """A fitted head's softmax is within float noise of 1.0 on most images: each would
    be a possible holder of its maximum.  Its int8 range is fixed (scale 1/256, zero
    point -128), so the fast path recalibrates none of them for it, and the int8 file
    is still the full calibrator's byte for byte."""
    from tensorflow.lite.tools import flatbuffer_utils
    model = _pixel_model("mobilenet_v1")
    anchor = convert.range_anchor_image(224)
    # Head weights that put class 0's logit at 11.6..12.6 on each image (top probability
    # 1 - 7e-6 .. 1 - 2e-5, all distinct) and at 0 on the anchor (1/3): the features
    # (1,024) outnumber the constraints (25), so least squares fits them exactly.
    extractor = model.get_layer(index=1)
    features = extractor(np.concatenate([images, anchor[None]])).numpy().astype(np.float64)
    targets = np.append(np.linspace(11.6, 12.6, len(images)), 0.0)
    w = np.linalg.lstsq(features, targets, rcond=None)[0]
    kernel = np.zeros(model.get_layer("head").get_weights()[0].shape, np.float32)
    kernel[:, 0] = w
    model.get_layer("head").set_weights([kernel, np.zeros(CLASSES, np.float32)])
    gap = 1.0 - model.predict(images, verbose=0).max(axis=1)
    assert ((gap > 0) & (gap < 2e-5)).all() and len(set(gap.tolist())) > len(images) // 2
    anchor_only = calibration_ranges._calibrate_on(_int8_converter(model, images), anchor)
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(anchor_only))
    union, widening = calibration_ranges.union_ranges(model, anchor_only, flat, anchor, lambda: iter(images))
    assert not _softmax_outputs(flat) & set(union)
    assert len(widening) < len(images) // 2, widening
    data = convert.convert(model, "int8", lambda: iter(images), bias_correction=False)
    assert data == convert.convert(model, "int8", lambda: iter(images), bias_correction=False,
                                   fast_calibration=False)


@pytest.mark.parametrize("backbone", ["mobilenet_v1", "efficientnet_lite0"])
def test_int8_file_is_the_full_calibrators(images, backbone):
    """convert.convert's int8 file with the fast path and with TFLite's calibrator over
    every image (bias correction off: the test above covers it): the same bytes."""
    model = _pixel_model(backbone)
    data = convert.convert(model, "int8", lambda: iter(images), bias_correction=False)
    assert data == convert.convert(model, "int8", lambda: iter(images), bias_correction=False,
                                   fast_calibration=False)


def test_anchor_alone_gives_the_converters_file_byte_for_byte(images):
    """No calibration image: the ranges are the calibrator's own, so the plumbing
    (calibrate-only, mlir_quantize, buffer deduplication, metadata) is exactly lite.py's."""
    model = _pixel_model("mobilenet_v1")
    fast = convert.convert(model, "int8", lambda: iter(()))
    assert fast == convert.convert(model, "int8", lambda: iter(()), fast_calibration=False)


def test_unmappable_tensor_falls_back_to_the_calibrator(caplog):
    """A Rescaling folded into the Conv2D after it gives a tensor ('.../Conv2D2') that
    no TensorFlow op computes: the fast path declines and the file is the calibrator's."""
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input([16, 16, 3])
    x = tf_keras.layers.Rescaling(1 / 127.5, -1, name="input_scaling")(inputs)
    x = tf_keras.layers.Conv2D(4, 3, name="conv")(x)
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(tf_keras.layers.Activation("tanh")(x))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, activation="softmax", name="head")(x))
    pixels = np.random.default_rng(0).uniform(0, 255, (6, 16, 16, 3)).astype(np.float32)
    # On the absl logger itself: a CLI test earlier in the same worker may have set it
    # to ERROR (pipeline/cli.py, quiet runs), and the root's level would not undo that.
    with caplog.at_level(logging.WARNING, logger="absl"):
        data = convert.convert(model, "int8", lambda: iter(pixels), bias_correction=False)
    assert "full TFLite calibrator used" in caplog.text and "Conv2D2" in caplog.text
    assert data == convert.convert(model, "int8", lambda: iter(pixels), bias_correction=False,
                                   fast_calibration=False)
