"""What every `retrain run` and every Kubeflow pod pays before its first step."""

import os
import pathlib
import subprocess
import sys

from conftest import png_bytes

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_a_run_imports_no_google_cloud_extension_of_tfx(tmp_path):
    """`from tfx import v1` imports TFX's Google Cloud extensions (Vertex AI and
    BigQuery clients: tfx/v1/__init__.py -> tfx.v1.extensions), about a fifth of a
    run's start-up here and no step uses them; the run path imports TFX's modules
    directly. A fresh interpreter, as `retrain run` and every Kubeflow pod start."""
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(10):
            (tmp_path / "images" / label / f"{i}.png").write_bytes(png_bytes(i + 100 * len(label)))
    code = f"""
import sys
from pipeline import cli, local_runner, preflight
from pipeline.config import PipelineConfig
from pipeline.pipeline import create_pipeline
from kubeflow import change_gate, runner
for lookup in ("resolver", "registry"):
    config = preflight.scan(PipelineConfig(images={str(tmp_path / "images")!r},
                                           workdir={str(tmp_path)!r}, lookup=lookup))
    create_pipeline(config, local_runner.metadata_config(config))
print(sorted(m for m in sys.modules if m.startswith(("tfx.v1", "tfx.extensions", "google.cloud.aiplatform"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=str(REPO))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_heavy_imports_load_compiled_bytecode():
    """`make install` and the Kubeflow image compile the environment's bytecode
    (`--compile-bytecode`): uv writes no .pyc, and where PYTHONDONTWRITEBYTECODE is
    set (CI, the image) Python never writes them, so every process compiled TF,
    TFX and Beam from source again, 10 of a run's 17 s of start-up. Checked in a
    child with that variable set, as CI and every pod run."""
    code = """
import importlib.util, os
names = ("tensorflow", "tensorflow.python.ops.array_ops", "apache_beam.pipeline",
         "tfx.orchestration.portable.launcher", "tensorflow_model_analysis")
for name in names:
    spec = importlib.util.find_spec(name)
    print(name, bool(spec.cached and os.path.exists(spec.cached)))
"""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=str(REPO), env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    missing = [line.split()[0] for line in out.stdout.splitlines() if line.endswith(" False")]
    assert len(out.stdout.splitlines()) == 5 and not missing, \
        f"no compiled bytecode for {missing}: install with `uv pip ... --compile-bytecode` (Makefile)"
    docker = (REPO / "kubeflow" / "Dockerfile").read_text()
    installs = [line for line in docker.splitlines() if "uv pip install" in line]
    assert installs and all("--compile-bytecode" in line for line in installs), installs
