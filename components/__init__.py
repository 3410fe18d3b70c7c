"""TFX components and the model code they run."""

import os
import warnings

# TFX 1.16, TFT and TFMA need Keras 2 (tf_keras); tf.keras binds on first use. Each
# package's __init__ sets this before any of its modules runs (no module repeats it);
# processes also get it at their start (Makefile, kubeflow/Dockerfile, tests/conftest.py,
# kubeflow/local_launcher.py). tests/integration/test_keras_binding.py checks every module.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# Python 3.10 is TFX 1.16's price; google client libraries say so on every import.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")

# Kubeflow V2 records a custom artifact type by its TYPE_NAME, which must read
# '<package>.<Class>', and imports that path inside the pod to rebuild the type.
_ARTIFACT_TYPES = {
    "LabelCheck": "components.label_guard",
    "ChangeCheck": "components.change_check",
    "DataAuditReport": "components.data_audit",
    "TFLiteModels": "components.tflite.component",
}


def __getattr__(name):
    if name in _ARTIFACT_TYPES:
        import importlib
        return getattr(importlib.import_module(_ARTIFACT_TYPES[name]), name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")
