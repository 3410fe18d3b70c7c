"""The stack this project depends on: Keras 2 (tf_keras) bound as tf.keras."""

import os

import tensorflow as tf
import tf_keras

import components  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras binds)


def test_keras_2_in_use():
    assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    assert tf_keras.__version__.startswith("2.")
    assert tf.keras.Model is tf_keras.Model  # tf.keras is Keras 2, not Keras 3


def test_pinned_stack():
    import tensorflow_model_analysis as tfma
    import tensorflow_transform as tft
    import tfx
    assert tfx.__version__ == "1.16.0"
    assert tf.__version__ == "2.16.2"
    assert tft.__version__ == "1.16.0"
    assert tfma.__version__ == "0.47.1"
