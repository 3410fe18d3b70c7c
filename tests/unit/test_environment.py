"""The stack this project depends on: Keras 2 (tf_keras) bound as tf.keras."""

import os
import pathlib
import subprocess
import sys

import tensorflow as tf
import tf_keras

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_keras_2_in_use():
    """In a process started without TF_USE_LEGACY_KERAS (conftest sets it in this
    one, so checking here alone could not fail): importing the project sets it,
    and tf.keras is Keras 2."""
    code = ("import os, components, tensorflow as tf, tf_keras\n"
            "assert os.environ.get('TF_USE_LEGACY_KERAS') == '1'\n"
            "assert tf_keras.__version__.startswith('2.'), tf_keras.__version__\n"
            "assert tf.keras.Model is tf_keras.Model, tf.keras  # Keras 2, not Keras 3\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_keras_2_in_the_test_process():
    assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    assert tf.keras.Model is tf_keras.Model


def test_pinned_stack():
    import tensorflow_model_analysis as tfma
    import tensorflow_transform as tft
    import tfx
    assert tfx.__version__ == "1.16.0"
    assert tf.__version__ == "2.16.2"
    assert tft.__version__ == "1.16.0"
    assert tfma.__version__ == "0.47.1"
