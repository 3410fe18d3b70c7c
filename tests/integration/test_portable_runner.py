"""`retrain run --beam-runner portable`: the pipeline's Beam steps on Beam's portable
path (a job service and SDK workers over the Fn API), the one Flink, Spark and
Dataflow use, here with Beam's own parts on free loopback ports:

  python -m apache_beam.runners.portability.local_job_service_main --port P
  python -m apache_beam.runners.worker.worker_pool_main --service_port Q

The worker pool starts its workers as `python` from PATH (the venv's first) and
imports the project from PYTHONPATH: what a cluster's worker image provides.
Two runs through them (pipeline/local_beam_services.py), with the CLI as a user
runs it (--enable-cache): the second must use the first's blessed model as its
baseline and its feature cache, and every Beam step either run executed must
have gone through the job service (its job list is counted).

Kept small (2 classes x 15 images, float32 only, 1 epoch; the second run takes
unchanged steps from TFX's cache) and marked slow; still 9.5 min on 2 cores at
load average 6.5 (shared), as each Beam job starts a fresh SDK worker that
imports TensorFlow: 4 jobs in the first run, 2 in the second.
"""

import json
import subprocess
import sys

import pytest

from conftest import copy_subset
from pipeline import local_beam_services

pytestmark = pytest.mark.slow

CLASSES = ["flags", "food_and_drink"]
REPO = local_beam_services.REPO


@pytest.fixture(scope="module")
def beam_services(tmp_path_factory):
    """Job service and worker pool; stopped, with their workers, afterwards."""
    with local_beam_services.running(str(tmp_path_factory.mktemp("beam-services"))) as services:
        yield services


# TFX runs Transform in place, without a Beam pipeline, when it computes no
# statistics, materializes nothing and its preprocessing_fn has no analyzer: ours.
IN_PLACE = {"Transform"}


def _beam_steps(images, workdir) -> list:
    """Names of the pipeline's Beam components that run a Beam job when they execute."""
    from tfx.dsl.components.base import base_beam_component

    from pipeline import preflight
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_components
    config = preflight.scan(PipelineConfig(images=str(images), workdir=str(workdir)))
    return sorted(c.id for c in create_components(config)
                  if isinstance(c, base_beam_component.BaseBeamComponent) and c.id not in IN_PLACE)


def _bottleneck_counts(workdir) -> list:
    """(cache_hits, computed, reused_cache) of each BottleneckGen run, oldest first."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = str(workdir / "metadata.sqlite")
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(cfg)
    out = []
    for a in sorted(store.get_artifacts(), key=lambda a: a.id):
        props = a.custom_properties
        if "cache_hits" in props and "computed" in props:
            out.append((props["cache_hits"].int_value, props["computed"].int_value,
                        props["reused_cache"].int_value))
    return out


def _run(images, workdir, services):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--images", str(images),
         "--workdir", str(workdir), "--epochs", "1", "--tflite-variants", "float32",
         "--min-accuracy", "0", "--max-accuracy-drop", "1", "--enable-cache",
         "--force",  # the second run has the same inputs: run it anyway (pipeline/unchanged.py)
         *services.run_flags(), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_two_runs_through_a_job_service_and_external_workers(
        tmp_path, emoji_root, imagenet_weights, beam_services):
    images = copy_subset(emoji_root, tmp_path / "images", CLASSES, per_class=15)
    workdir = tmp_path / "work"
    steps = _beam_steps(images, workdir)
    assert {"ImageExampleGen", "StatisticsGen", "BottleneckGen", "Evaluator"} <= set(steps)

    first, first_err = _run(images, workdir, beam_services)
    after_first = beam_services.jobs()
    second, _ = _run(images, workdir, beam_services)
    jobs = beam_services.jobs()

    # Every Beam step a run executed (not taken from TFX's cache) was one job of
    # the job service, and every job finished.
    def executed(summary):
        return sorted(s for s in steps if summary["states"].get(s) == "COMPLETE")
    assert executed(first) == steps, first["states"]
    assert len(after_first) == len(steps), (steps, after_first)
    # The second run's images are unchanged: TFX's cache skips reading them again;
    # BottleneckGen (a new feature cache input) and the Evaluator (a new baseline) run.
    assert second["states"]["ImageExampleGen"] == "CACHED"
    assert {"BottleneckGen", "Evaluator"} <= set(executed(second))
    assert len(jobs) == len(steps) + len(executed(second)), (second["states"], jobs)
    assert {state for _, state in jobs} == {"DONE"}, jobs
    # The first run was blessed and pushed; the second was gated against it
    # (the first's accuracy is the second's baseline).
    assert first["blessed"] and first["pushed_version"] == 1
    assert first["baseline_accuracy"] is None
    assert second["baseline_accuracy"] == pytest.approx(first["accuracy"])
    # The second run computed no feature: all came from the first's cache.
    (hits1, computed1, reused1), (hits2, computed2, reused2) = _bottleneck_counts(workdir)
    assert (hits1, reused1) == (0, 0) and computed1 == sum(first["examples"].values())
    assert (hits2, computed2, reused2) == (computed1, 0, 1)
    # Counts kept by remote workers cannot reach this machine: progress says so.
    assert "counted on the Beam workers" in first_err
