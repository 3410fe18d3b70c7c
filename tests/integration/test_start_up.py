"""What every `retrain run` and every Kubeflow pod pays before its first step."""

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
