"""A run killed after its push, read back from a hand-built MLMD store (issue 17
items 1 and 6): the version's manifest shows the push MLMD lacks, the run is
interrupted, and the next run settles it and abandons its blessing. The real
thing, killed at each step: tests/e2e/test_faults.py."""

import json

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2 as pb

from pipeline.config import PipelineConfig

PIPELINE = "image-retrain"


@pytest.fixture
def killed_after_push(tmp_path):
    """Run "run-A": blessed, its Pusher RUNNING (killed), serving/1 naming it."""
    config = PipelineConfig(images="", workdir=str(tmp_path))
    cfg = pb.ConnectionConfig()
    cfg.sqlite.filename_uri = config.metadata_path
    cfg.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(cfg)
    ctx_type = {n: store.put_context_type(pb.ContextType(name=n)) for n in ("pipeline", "pipeline_run", "node")}
    ex_type = store.put_execution_type(pb.ExecutionType(name="Step"))
    art_type = {n: store.put_artifact_type(pb.ArtifactType(name=n)) for n in ("Model", "ModelBlessing")}
    pipe, run = (pb.Context(type_id=ctx_type[t], name=n) for t, n in (("pipeline", PIPELINE),
                                                                      ("pipeline_run", "run-A")))
    pipe.id, run.id = store.put_contexts([pipe, run])

    def step(node, state, outputs=()):
        node_ctx = pb.Context(type_id=ctx_type["node"], name=f"{PIPELINE}.{node}")
        ex = pb.Execution(type_id=ex_type, last_known_state=state)
        events = []
        for key, artifact in outputs:
            event = pb.Event(type=pb.Event.OUTPUT)
            event.path.steps.add().key = key
            events.append((artifact, event))
        store.put_execution(ex, events, [pipe, run, node_ctx], reuse_context_if_already_exist=True)

    model = pb.Artifact(type_id=art_type["Model"], uri=str(tmp_path / "model"), state=pb.Artifact.LIVE)
    blessing = pb.Artifact(type_id=art_type["ModelBlessing"], uri=str(tmp_path / "b"), state=pb.Artifact.LIVE)
    blessing.custom_properties["blessed"].int_value = 1
    step("Trainer", pb.Execution.COMPLETE, [("model", model)])
    step("Evaluator", pb.Execution.COMPLETE, [("blessing", blessing)])
    step("TFLitePusher", pb.Execution.RUNNING)
    version = tmp_path / "serving" / "1"
    version.mkdir(parents=True)
    (version / "metrics.json").write_text(json.dumps({"run_id": "run-A", "variants": ["float32"]}))
    (version / "_SUCCESS").write_text("")
    return config


def test_the_push_is_read_from_the_manifest_and_the_run_is_interrupted(killed_after_push):
    from pipeline import history
    [row] = [r for r in history.list_runs(killed_after_push) if r["kind"] == "run"]
    assert row["status"] == "interrupted" and row["blessed"]
    assert row["pushed_version"] == 1 and row["push_recorded"] is False
    assert not row["baseline"]  # an unfinished run's blessing is no baseline, even before settling
    assert "MLMD lacks it" in history.format_runs([row])


def test_the_next_run_records_the_outcome_and_abandons_the_blessing(killed_after_push):
    from pipeline import history, mlmd_store, run_outcome
    assert run_outcome.settle(killed_after_push, live_run_id="run-B") == ["run-A"]
    store = mlmd_store.open_store(killed_after_push)
    ctx = store.get_context_by_type_and_name("pipeline_run", "run-A")
    assert mlmd_store.custom_property(ctx, "retrain_outcome") == "interrupted"
    [blessing] = store.get_artifacts_by_type("ModelBlessing")
    assert blessing.state == pb.Artifact.ABANDONED
    assert mlmd_store.custom_property(blessing, "revoked_by") == run_outcome.UNFINISHED_RUN
    assert history.current_baseline(store, PIPELINE) is None  # what the next run's resolver finds
    [row] = [r for r in history.list_runs(killed_after_push) if r["kind"] == "run"]
    assert row["status"] == "interrupted" and row["revoked"]
    assert run_outcome.settle(killed_after_push, live_run_id="run-B") == []  # once
