"""TFX components and the model code they run."""

import os

# TFX 1.16, TFT and TFMA need Keras 2 (tf_keras); tf.keras binds on first use.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import warnings  # noqa: E402

# Python 3.10 is TFX 1.16's price; google client libraries say so on every import.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")
