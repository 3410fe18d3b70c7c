"""Keras 2 wherever the project is imported from, without TF_USE_LEGACY_KERAS set.

tf.keras binds to Keras 3 or tf_keras on its first use, reading the variable
then; each package's __init__ sets it, and no module repeats it. These tests
remove the variable (conftest sets it for this process) and import project
modules in fresh processes: every module of components/, pipeline/, kubeflow/
and benchmarks/ (each in its own fork of a process that has loaded TensorFlow
without binding tf.keras: "tensorflow first, then the module"), and a few
whole processes in other orders.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("components", "pipeline", "kubeflow", "benchmarks")
_CHECK = "import tensorflow as tf, tf_keras; assert tf.keras.Model is tf_keras.Model, tf.keras"

# One process: load TensorFlow (and libraries that leave tf.keras unbound, so the
# forks start faster), then fork per module; a fork imports it and reports what
# tf.keras is. The first entry, no project module, must come out as Keras 3.
_FORKS = r"""
import importlib, json, os, sys
assert "TF_USE_LEGACY_KERAS" not in os.environ
import tensorflow as tf
import apache_beam, ml_metadata, tensorflow_data_validation, tfx.types  # noqa: F401
assert not tf.keras._tfll_initialized, "a preloaded library bound tf.keras"
results = {}
for name in [None] + json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            if name:
                importlib.import_module(name)
            import tf_keras
            found = "tf_keras" if tf.keras.Model is tf_keras.Model else repr(tf.keras)
        except BaseException as e:
            found = f"import failed: {type(e).__name__}: {e}"
        os.write(write, found.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        results[name or "(none)"] = f.read()
    os.waitpid(pid, 0)
print("RESULTS " + json.dumps(results))
"""


def _env():
    return {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}


def project_modules():
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_binds_keras_2():
    modules = project_modules()
    assert len(modules) > 60 and "components.trainer" in modules and "kubeflow.runner" in modules
    proc = subprocess.run([sys.executable, "-c", _FORKS, json.dumps(modules)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS "):])
    # The control: without a project module, tf.keras is Keras 3 here.
    assert results.pop("(none)") != "tf_keras"
    assert sorted(results) == sorted(modules)
    wrong = {name: found for name, found in results.items() if found != "tf_keras"}
    assert not wrong, wrong


@pytest.mark.parametrize("first", [
    ["pipeline.cli"],                                    # `retrain`, nothing loaded before
    ["tensorflow", "kubeflow.executor_entrypoint"],      # a Kubeflow pod's entry
    ["tf_keras", "components.trainer"],                  # Keras 2 itself first
    ["numpy", "components.contracts", "tensorflow", "tfx.v1"],  # a TF-free module, then TFX
])
def test_import_orders(first):
    code = "".join(f"import {name}\n" for name in first) + _CHECK
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
