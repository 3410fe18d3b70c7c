"""Keras 2 wherever the project is imported from, without TF_USE_LEGACY_KERAS set.

tf.keras binds to Keras 3 or tf_keras on its first use, reading the variable
then; each package's __init__ sets it, and no module repeats it. Python runs a
package's __init__ before any of its modules, so a module can only break this by
touching the variable itself or by importing Keras 3 (checked on the source of
every module), or through its package's __init__, which the forks below check:
one process loads TensorFlow without binding tf.keras ("tensorflow first, then
the project"), then forks once per package; the fork imports every module of the
package (each must import without the variable) and reports what tf.keras is.
A few whole processes check other orders.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("components", "pipeline", "kubeflow", "benchmarks")
_VARIABLE = "TF_USE_LEGACY_KERAS"
_CHECK = "import tensorflow as tf, tf_keras; assert tf.keras.Model is tf_keras.Model, tf.keras"

# One process: load TensorFlow (and libraries that leave tf.keras unbound, so the
# forks start faster), then fork per package; a fork imports the package's
# modules and reports what tf.keras is. The first entry, no project module, must
# come out as Keras 3.
_FORKS = r"""
import importlib, json, os, sys
assert "TF_USE_LEGACY_KERAS" not in os.environ
import tensorflow as tf
import apache_beam, ml_metadata, tensorflow_data_validation, tfx.types  # noqa: F401
assert not tf.keras._tfll_initialized, "a preloaded library bound tf.keras"
results = {}
for package, names in [("(none)", [])] + list(json.loads(sys.argv[1]).items()):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            for name in names:
                failed = name
                importlib.import_module(name)
            import tf_keras
            found = "tf_keras" if tf.keras.Model is tf_keras.Model else repr(tf.keras)
        except BaseException as e:
            found = f"import of {failed} failed: {type(e).__name__}: {e}"
        os.write(write, found.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        results[package] = f.read()
    os.waitpid(pid, 0)
print("RESULTS " + json.dumps(results))
"""


def _env():
    return {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}


def project_modules() -> dict:
    """{package: its modules, the package itself first}."""
    modules = {}
    for package in PACKAGES:
        names = modules.setdefault(package, [])
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        names.sort(key=lambda name: name != package)
    return modules


def _touches_variable(node) -> bool:
    return any(isinstance(n, ast.Constant) and n.value == _VARIABLE for n in ast.walk(node))


def _sets_environ(node) -> bool:
    """os.environ[VAR], os.environ.<method>(VAR, ...), os.putenv/unsetenv(VAR)."""
    if isinstance(node, ast.Subscript):
        return ast.unparse(node.value) == "os.environ" and _touches_variable(node.slice)
    if isinstance(node, ast.Call) and ast.unparse(node.func).startswith(
            ("os.environ", "os.putenv", "os.unsetenv")):
        return any(_touches_variable(arg) for arg in node.args)
    return False


def _import_roots(node) -> list:
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return [node.module.split(".")[0]]
    return []


def test_no_module_imports_keras_3_or_touches_the_variable():
    """Source check of every module: only the package __init__s set the variable,
    first thing (before any non-stdlib import), and nothing imports Keras 3."""
    offenders = []
    for package, names in project_modules().items():
        for name in names:
            path = ROOT / name.replace(".", "/")
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            tree = ast.parse(path.read_text(), str(path))
            offenders += [f"{name}: imports Keras 3 ('keras')" for node in ast.walk(tree)
                          if "keras" in _import_roots(node)]
            sets = [n for n in tree.body if _touches_variable(n)]
            if name != package:
                # A child process's environment (kubeflow.local_launcher's dict) is fine.
                environ = [n for n in ast.walk(tree) if _sets_environ(n)]
                offenders += [f"{name}: touches os.environ[{_VARIABLE}]" for _ in environ]
                continue
            first = next((i for i, n in enumerate(tree.body)
                          if set(_import_roots(n)) - sys.stdlib_module_names), len(tree.body))
            if not sets or tree.body.index(sets[0]) > first or "setdefault" not in ast.unparse(sets[0]):
                offenders.append(f"{name}: must os.environ.setdefault({_VARIABLE!r}, '1') "
                                 "before any non-stdlib import")
    assert not offenders, offenders


def test_every_module_binds_keras_2():
    modules = project_modules()
    assert sum(map(len, modules.values())) > 60
    assert "components.trainer" in modules["components"] and "kubeflow.runner" in modules["kubeflow"]
    proc = subprocess.run([sys.executable, "-c", _FORKS, json.dumps(modules)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS "):])
    # The control: without a project module, tf.keras is Keras 3 here.
    assert results.pop("(none)") != "tf_keras"
    assert sorted(results) == sorted(PACKAGES)
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
