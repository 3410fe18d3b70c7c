"""BottleneckGen's augmented views: deterministic per (image, view), so they can be cached."""

from __future__ import annotations

import tensorflow as tf


def augment(pixels: tf.Tensor, seed) -> tf.Tensor:
    """One random view of [H, W, 3] pixels in 0..255: flip, crop 80-100 %, colour jitter."""
    size = tf.shape(pixels)[0]
    s = [tf.random.experimental.stateless_split(tf.convert_to_tensor(seed, tf.int64), 4)[i]
         for i in range(4)]
    img = tf.image.stateless_random_flip_left_right(pixels, s[0])
    scale = tf.random.stateless_uniform([], s[1], 0.8, 1.0)
    crop = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
    img = tf.image.stateless_random_crop(img, tf.stack([crop, crop, 3]), s[2])
    img = tf.image.resize(img, [size, size], method="bilinear", antialias=True)
    jitter = tf.random.stateless_uniform([2], s[3], [-0.1, 0.9], [0.1, 1.1])
    img = (img - 127.5) * jitter[1] + 127.5 + 255.0 * jitter[0]
    return tf.clip_by_value(img, 0.0, 255.0)
