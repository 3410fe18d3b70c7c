"""pipeline.local_runner: what a first run shows on the console."""

import logging

from components.contracts import BLESSED_MODEL_RESOLVER, FEATURE_CACHE_RESOLVER
from pipeline import local_runner


def _record(level, node, detail):
    return logging.LogRecord("absl", level, __file__, 1, "[%s] Input resolution error: %s",
                             (node, detail), None)


def test_first_run_cache_miss_traceback_is_dropped_other_errors_kept():
    keep = local_runner._FirstRunCacheFilter().filter
    none = f"Error while resolving inputs for {FEATURE_CACHE_RESOLVER}: <LatestArtifactStrategy> returned None."
    assert not keep(_record(logging.ERROR, FEATURE_CACHE_RESOLVER, none))
    # Any other resolution failure, and anything that is not an error, still shows.
    assert keep(_record(logging.ERROR, BLESSED_MODEL_RESOLVER,
                        f"Error while resolving inputs for {BLESSED_MODEL_RESOLVER}: returned None."))
    assert keep(_record(logging.ERROR, FEATURE_CACHE_RESOLVER, "store unavailable"))
    assert keep(_record(logging.INFO, FEATURE_CACHE_RESOLVER, none))
    assert keep(logging.LogRecord("absl", logging.ERROR, __file__, 1, "Trainer failed", (), None))


def test_a_gated_local_run_binds_changechecks_force_parameter(tmp_path, monkeypatch):
    """A local run on an object store has ChangeCheck (kubeflow/change_gate.py):
    TFX's IR compiler drops its default 0 (compiler_utils.set_runtime_parameter_pb
    keeps no falsy default), so dag_runner binds it: 0, or 1 for `retrain run --force`."""
    from tfx.dsl.compiler import compiler
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from conftest import png_bytes
    from pipeline import dag_runner, preflight
    from pipeline.config import PipelineConfig
    from pipeline.pipeline import create_pipeline
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(10):
            (tmp_path / "images" / label / f"{i}.png").write_bytes(png_bytes(i + 100 * len(label)))
    config = preflight.scan(PipelineConfig(images=str(tmp_path / "images"), workdir=str(tmp_path),
                                           lookup="registry"))
    seen = []  # TFX's own run_with_ir, after dag_runner's substitution: record, don't run
    monkeypatch.setattr(LocalDagRunner, "run_with_ir",
                        lambda self, ir, run_options=None: seen.append(ir))

    def force_of(ir):
        (node,) = [n.pipeline_node for n in ir.nodes if n.pipeline_node.node_info.id == "change-check"]
        return node.parameters.parameters["force"]

    ir = compiler.Compiler().compile(create_pipeline(config))
    assert force_of(ir).WhichOneof("value") == "runtime_parameter"
    assert not force_of(ir).runtime_parameter.HasField("default_value")
    for force in (False, True):
        dag_runner._Runner("run-1", force).run_with_ir(ir.__deepcopy__())
        assert force_of(seen[-1]).field_value.int_value == int(force)
