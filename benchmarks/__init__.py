"""Benchmarks: `python -m benchmarks.speed`, `python -m benchmarks.tflite_variants`,
`python -m benchmarks.pipeline_throughput` (see README)."""

import os

# TFX 1.16, TFT and TFMA need Keras 2 (tf_keras); tf.keras binds on first use. Each
# package's __init__ sets this before any of its modules runs (no module repeats it);
# processes also get it at their start (Makefile, kubeflow/Dockerfile, tests/conftest.py,
# kubeflow/local_launcher.py). tests/integration/test_keras_binding.py checks every module.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
