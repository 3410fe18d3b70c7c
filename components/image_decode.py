"""Image bytes -> RGB pixels, the one decoding every path shares.

BottleneckGen, the Transform graph (components/preprocessing.py), the TFLite
export and `retrain predict` all decode and resize through these functions.  TensorFlow only: `retrain predict` imports it without
tf.Transform.
"""

from __future__ import annotations

import functools

import tensorflow as tf


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """One encoded image (JPEG/PNG/GIF/BMP) -> float32 [H, W, 3] RGB in 0..255.

    GIFs give their first frame. Transparency is composited on white, the same
    rule image_io applies to the files it re-encodes. JPEGs and GIFs have no alpha:
    they skip the compositing, whose result on an opaque image is its pixels
    exactly (x * 1 + 255 * 0); on a 2.5-megapixel JPEG it cost 70 of decode_rgb's
    86 ms (the RGBA copy and float passes over it).
    """
    def composited(rgba):
        rgba = tf.cast(rgba, tf.float32)
        alpha = rgba[..., 3:] / 255.0
        return rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)

    def rgb(pixels):
        return tf.cast(pixels, tf.float32)
    return tf.ensure_shape(_by_format(image_bytes, rgb, rgb, composited), [None, None, 3])


def decode_rgba(image_bytes: tf.Tensor) -> tf.Tensor:
    """decode_rgb's decoders: one encoded image -> uint8 [H, W, 4] RGBA (opaque where
    the format has no alpha); decode_rgb is these pixels composited on white."""
    def opaque(rgb):
        return tf.concat([rgb, tf.fill(tf.concat([tf.shape(rgb)[:2], [1]], 0), tf.constant(255, tf.uint8))], -1)
    return tf.ensure_shape(_by_format(image_bytes, opaque, opaque, tf.identity), [None, None, 4])


_JPEG_MAGIC = b"\xff\xd8\xff"


def _by_format(image_bytes, gif, jpeg, other):
    """``gif``, ``jpeg`` or ``other`` applied to what that format's decoder gives:
    GIF's first frame and JPEG as uint8 RGB (their decoders refuse channels=4: "JPEG
    does not support 4 channels"; they have no alpha), any other format as RGBA."""
    magic = tf.strings.substr(image_bytes, 0, 3)
    return tf.cond(
        tf.equal(magic, b"GIF"), lambda: gif(tf.io.decode_gif(image_bytes)[0]),
        lambda: tf.cond(tf.equal(magic, _JPEG_MAGIC), lambda: jpeg(
            tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE")),
            lambda: other(tf.io.decode_image(image_bytes, channels=4, expand_animations=False, dtype=tf.uint8))))


def decode_and_resize(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """[N] encoded images -> float32 [N, size, size, 3] RGB 0..255.

    Bilinear with antialiasing, aspect ratio not preserved (the whole image is
    squeezed to a square, as retrain.py and Model Maker do). A phone app feeding
    the TFLite model should resize the same way.
    """
    def one(b):
        img = tf.image.resize(decode_rgb(b), [size, size], method="bilinear", antialias=True)
        return tf.clip_by_value(img, 0.0, 255.0)
    return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


_DECODERS: dict = {}


def decode_batch(image_bytes, size: int) -> tf.Tensor:
    """decode_and_resize for eager callers: one traced graph per size, reused.

    Called eagerly, tf.map_fn runs Python (and AutoGraph) for every image: 32
    224x224 PNGs took 160 ms that way here, 70 ms through this graph, which is
    also the one BottleneckGen and the Transform graph run.
    """
    if size not in _DECODERS:
        _DECODERS[size] = tf.function(lambda b: decode_and_resize(b, size), autograph=False,
                                      input_signature=[tf.TensorSpec([None], tf.string)])
    return _DECODERS[size](tf.convert_to_tensor(image_bytes, tf.string))


@functools.lru_cache(maxsize=None)
def _decodes_graph():
    # The decoders alone: decode_rgba's opaque copy of a JPEG cost 17 of its 35 ms on a
    # 2.5-megapixel photo, for nothing a check needs.
    return tf.function(lambda b: _by_format(b, tf.shape, tf.shape, tf.shape), autograph=False,
                       input_signature=[tf.TensorSpec([], tf.string)])


def decodes(image_bytes: bytes) -> bool:
    """Whether decode_rgb's decoders read these bytes (ImageExampleGen's check): the
    decoders alone, in one traced graph reused (eagerly its ops cost twice as much)."""
    try:
        _decodes_graph()(tf.constant(image_bytes))
        return True
    except tf.errors.OpError:
        return False
