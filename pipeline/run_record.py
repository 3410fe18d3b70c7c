"""RunRecord: what one pipeline run did, read once from MLMD.

``RunRecord.from_store(store, run_ctx, config)`` walks the run's executions and
their output artifacts once, then reads the few files those artifacts point at
that every consumer needs (the ingestion report, the Evaluator's metrics and its
gate.json). Everything else derives from the record: the ``retrain run --json``
summary (pipeline/run_summary.py), the ``retrain runs`` rows
(pipeline/history.py) and the HTML report (pipeline/report/). Records can be
built by hand (tests); every field has a neutral default.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

from components import contracts
from pipeline import mlmd_store, workdir_lock
from pipeline.gate_record import Gate, read_gate  # Gate: a RunRecord field
from pipeline.config import PipelineConfig


@dataclasses.dataclass(frozen=True)
class Step:
    node: str
    state: str  # MLMD execution state name; "EMPTY" for a resolver that found nothing
    seconds: float


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    path: str
    label: Optional[str]
    reason: str


@dataclasses.dataclass(frozen=True)
class ClassMetrics:
    precision: Optional[float] = None
    recall: Optional[float] = None
    baseline_precision: Optional[float] = None
    baseline_recall: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The Evaluator's overall-slice results (components.evaluation.summarize)."""
    accuracy: Optional[float] = None
    baseline_accuracy: Optional[float] = None
    example_count: Optional[int] = None
    per_class: Dict[str, ClassMetrics] = dataclasses.field(default_factory=dict)
    confusion_matrix: Optional[List[List[int]]] = None  # rows actual, columns predicted
    validation_ok: bool = False
    failures: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The model the Evaluator compared with (from its ModelBlessing)."""
    model_id: Optional[int]
    uri: Optional[str]
    blessed_from_version: Optional[int] = None  # made the baseline by `retrain bless`
    manual_operation: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Push:
    """The TFLitePusher's PushedModel."""
    pushed: bool = False
    version: Optional[int] = None
    destination: Optional[str] = None
    variants: Tuple[str, ...] = ()
    not_pushed: Dict[str, str] = dataclasses.field(default_factory=dict)  # variant -> why
    reason: Optional[str] = None  # why nothing was pushed
    # False: MLMD lacks the push (the run died after the version was renamed into
    # place); read from the version's manifest (its metrics.json names the run).
    recorded: bool = True


@dataclasses.dataclass(frozen=True)
class ArtifactUris:
    """Where the run's outputs are (None: not produced)."""
    examples: Optional[str] = None
    statistics: Optional[str] = None
    label_check: Optional[str] = None
    model: Optional[str] = None  # the Trainer's Model
    model_run: Optional[str] = None
    evaluation: Optional[str] = None
    blessing: Optional[str] = None
    tflite_models: Optional[str] = None
    bottlenecks: Optional[str] = None  # BottleneckGen's vectors
    data_audit: Optional[str] = None  # DataAudit's audit.json (components/data_audit.py)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: str
    created_ms: Optional[int] = None
    pipeline_name: str = ""
    steps: Tuple[Step, ...] = ()  # in start order
    label_names: Tuple[str, ...] = ()
    examples: Dict[str, int] = dataclasses.field(default_factory=dict)  # split -> images
    skipped_files: Optional[int] = None  # None: no ingestion recorded
    ingestion_report: Optional[str] = None
    skipped: Tuple[SkippedFile, ...] = ()  # every skipped file
    statistics_splits: Tuple[str, ...] = ()
    evaluation: Optional[Evaluation] = None
    blessed: bool = False
    gate: Optional[Gate] = None
    baseline: Optional[Baseline] = None  # None: nothing to compare with
    push: Optional[Push] = None  # None: the Pusher did not run
    uris: ArtifactUris = ArtifactUris()
    model_id: Optional[int] = None
    blessing_id: Optional[int] = None
    blessing_revoked: bool = False  # blessed, then revoked by `retrain bless --reset`
    trainer_settings: Dict[str, Any] = dataclasses.field(default_factory=dict)  # its custom_config
    outcome: Optional[str] = None  # recorded by the local runner when the run ended
    live: bool = False  # a live process holds the workdir for this run
    ended_early: Optional[str] = None  # ChangeCheck's reason, when its gate skipped the rest

    @property
    def states(self) -> Dict[str, str]:
        return {s.node: s.state for s in self.steps}

    @property
    def seconds(self) -> Dict[str, float]:
        return {s.node: s.seconds for s in self.steps}

    @property
    def status(self) -> str:
        """complete, failed, running, or interrupted: ended without an outcome and
        with steps left unfinished or never started (see pipeline/run_outcome.py)."""
        if self.outcome:
            return self.outcome
        states = set(self.states.values())
        if "FAILED" in states:
            return contracts.RUN_FAILED
        if self.live:
            return contracts.RUN_RUNNING
        if states & {"NEW", "RUNNING"} or (self.steps and contracts.PUSHER_NODE not in self.states):
            return contracts.RUN_INTERRUPTED
        return contracts.RUN_COMPLETE

    @property
    def accuracy(self) -> Optional[float]:
        return self.evaluation.accuracy if self.evaluation else None

    @property
    def baseline_accuracy(self) -> Optional[float]:
        return self.evaluation.baseline_accuracy if self.evaluation else None

    @property
    def pushed_version(self) -> Optional[int]:
        return self.push.version if self.push and self.push.pushed else None

    @classmethod
    def from_store(cls, store, run_ctx, config: PipelineConfig,
                   read_files: bool = True) -> "RunRecord":
        """The record of run `run_ctx` (a ``pipeline_run`` context of `store`).

        `config` gives the pipeline name, and the fallbacks for what older runs
        did not record: the label names (when the Examples lack them) and the
        thresholds (when neither gate.json nor the Pusher's ``gate`` has them).
        Raises when a file the record needs (ingestion report, evaluation, eval
        config) is unreadable; ``read_files=False`` reads MLMD alone (no skipped
        files, evaluation or gate).
        """
        return _Reader(store, run_ctx, config).record(read_files)


def latest(config: PipelineConfig) -> Optional[RunRecord]:
    """The record of this workdir's newest run, or None without runs (tools, tests;
    a running process reports its own run: by_id)."""
    store = mlmd_store.open_store(config)
    runs = mlmd_store.run_contexts(store, config.pipeline_name)
    return RunRecord.from_store(store, runs[0], config) if runs else None


def by_id(config: PipelineConfig, run_id: str) -> RunRecord:
    """The record of run `run_id` (a process reports its own run, not the newest)."""
    store = mlmd_store.open_store(config)
    ctx = store.get_context_by_type_and_name(mlmd_store.RUN_CONTEXT_TYPE, run_id)
    if ctx is None:
        raise LookupError(f"no run {run_id!r} in {config.metadata_path}")
    return RunRecord.from_store(store, ctx, config)


# ------------------------------------------------------------------ the reader

class _Reader:
    """One pass over a run's executions: node -> output key -> artifacts."""

    def __init__(self, store, run_ctx, config: PipelineConfig):
        self.store, self.run_ctx, self.config = store, run_ctx, config
        self.steps: List[Step] = []
        self.outputs: List[Tuple[str, Dict[str, list]]] = []  # (node, outputs), start order
        self.executions: Dict[str, Any] = {}
        for ex in mlmd_store.run_executions(store, run_ctx):
            node = mlmd_store.node_id(store, ex, config.pipeline_name)
            self.steps.append(Step(node, *mlmd_store.state_and_seconds(node, ex)))
            self.executions[node] = ex
            self.outputs.append((node, mlmd_store.output_artifacts(store, ex.id)))

    def artifact(self, key: str, node: Optional[str] = None, last: bool = False):
        found = [a for n, outs in self.outputs if node in (None, n) for a in outs.get(key, [])]
        return (found[-1] if last else found[0]) if found else None

    def exec_property(self, node: str, name: str) -> Optional[Any]:
        ex = self.executions.get(node)
        return mlmd_store.custom_property(ex, name) if ex is not None else None

    def record(self, read_files: bool) -> RunRecord:
        prop = mlmd_store.custom_property
        examples = next((a for _, outs in self.outputs for a in outs.get("examples", [])
                         if prop(a, "skipped_files") is not None), None)
        label_names = self._label_names(examples)
        blessing = self.artifact("blessing", last=True)
        # The Trainer's model (registry lookups output a "model" too: the baseline's copy).
        model = self.artifact("model", "Trainer") or self.artifact("model", last=True)
        evaluation, stats = self.artifact("evaluation"), self.artifact("statistics")
        check = self.artifact("result", contracts.CHANGE_CHECK)  # the registry path's gate
        uris = ArtifactUris(**{
            field: (a.uri if a is not None else None) for field, a in (
                ("examples", examples), ("statistics", stats),
                ("label_check", self.artifact("label_check")), ("model", model),
                ("model_run", self.artifact("model_run")), ("evaluation", evaluation),
                ("blessing", blessing), ("tflite_models", self.artifact("tflite_models")),
                ("bottlenecks", self.artifact("bottlenecks")), ("data_audit", self.artifact("data_audit")))})
        return RunRecord(
            run_id=self.run_ctx.name, created_ms=self.run_ctx.create_time_since_epoch,
            pipeline_name=self.config.pipeline_name, steps=tuple(self.steps),
            label_names=tuple(label_names), **self._ingestion(examples, read_files),
            statistics_splits=tuple(mlmd_store.json_property(mlmd_store.property_value(stats, "split_names"), list,
                                          ["train", "eval"])) if stats is not None else (),
            evaluation=(_evaluation(evaluation.uri, label_names)
                        if evaluation is not None and read_files else None),
            blessed=bool(prop(blessing, "blessed", 0)) if blessing is not None else False,
            gate=(read_gate(uris.evaluation, self.exec_property("TFLitePusher", "gate"), self.config)
                  if read_files else None),
            baseline=self._baseline(blessing), push=self._push(read_files),
            uris=uris, model_id=model.id if model is not None else None,
            blessing_id=blessing.id if blessing is not None else None,
            blessing_revoked=(blessing is not None and bool(prop(blessing, "blessed"))
                              and blessing.state != blessing.LIVE),
            trainer_settings=mlmd_store.json_property(self.exec_property("Trainer", "custom_config"), dict, {}),
            outcome=prop(self.run_ctx, contracts.RUN_OUTCOME_PROPERTY),
            ended_early=prop(check, "reason") if check is not None and prop(check, "changed", 1) == 0 else None,
            live=workdir_lock.live_run_id(self.config.workdir) == self.run_ctx.name)

    def _push(self, read_files: bool) -> Optional[Push]:
        """The recorded push; else, when the Pusher never finished, a version whose
        manifest names this run (pushed, then killed before MLMD recorded it)."""
        push = _push(self.artifact("pushed_model", last=True))
        pusher = next((s.state for s in self.steps if s.node == contracts.PUSHER_NODE), None)
        if not read_files or pusher in (None, "COMPLETE", "CACHED"):
            return push
        from components.tflite_pusher import serving_manifests
        serving_dir = self.exec_property(contracts.PUSHER_NODE, "serving_dir") or self.config.serving_dir
        versions = serving_manifests(serving_dir).get(self.run_ctx.name)
        if not versions:
            return push
        return Push(pushed=True, version=versions[-1], recorded=False,
                    destination=contracts.join(serving_dir, str(versions[-1])))

    def _label_names(self, examples) -> List[str]:
        names = mlmd_store.json_property(mlmd_store.custom_property(examples, "label_names")
                      if examples is not None else None, list, [])
        return [str(n) for n in names] or list(self.config.label_names)

    @staticmethod
    def _ingestion(examples, read_files: bool) -> Dict[str, Any]:
        if examples is None:
            return {}
        from components.image_example_gen import read_report
        prop = mlmd_store.custom_property
        counts = {split: int(prop(examples, f"{contracts.SPLIT_COUNT_PREFIX}_{split}"))
                  for split in ("train", "eval")
                  if prop(examples, f"{contracts.SPLIT_COUNT_PREFIX}_{split}") is not None}
        skipped = tuple(SkippedFile(str(r.get("path")), r.get("label"), str(r.get("reason") or ""))
                        for r in read_report(examples.uri) if r.get("status") == "skipped"
                        ) if read_files else ()
        return {"examples": counts, "skipped_files": int(prop(examples, "skipped_files")),
                "ingestion_report": os.path.join(examples.uri, contracts.INGESTION_REPORT_FILE),
                "skipped": skipped}

    def _baseline(self, blessing) -> Optional[Baseline]:
        if blessing is None:
            return None
        prop = mlmd_store.custom_property
        model_id, uri = prop(blessing, "baseline_model_id"), prop(blessing, "baseline_model")
        if model_id is None and not uri:
            return None
        found = self.store.get_artifacts_by_id([int(model_id)]) if model_id is not None else []
        version = prop(found[0], "blessed_from_version") if found else None
        return Baseline(model_id=model_id, uri=uri or None, blessed_from_version=version,
                        manual_operation=prop(found[0], "manual_operation") if version is not None else None)


def _evaluation(uri: str, label_names: List[str]) -> Optional[Evaluation]:
    import tensorflow as tf  # local, gs:// or s3://
    if not label_names or not tf.io.gfile.isdir(uri):
        return None
    from components import evaluation
    r = evaluation.summarize(uri, label_names)
    return Evaluation(
        accuracy=r["accuracy"], baseline_accuracy=r["baseline_accuracy"],
        example_count=r["example_count"],
        per_class={name: ClassMetrics(**m) for name, m in r["per_class"].items()},
        confusion_matrix=r["confusion_matrix"], validation_ok=r["validation_ok"],
        failures=tuple(r["failures"]))


def _push(pushed) -> Optional[Push]:
    if pushed is None:
        return None
    prop = mlmd_store.custom_property
    done = bool(prop(pushed, "pushed", 0))
    return Push(pushed=done, version=int(prop(pushed, "pushed_version")) if done else None,
                destination=prop(pushed, "pushed_destination") if done else None,
                variants=tuple(str(v) for v in mlmd_store.json_property(prop(pushed, "pushed_variants"), list, [])),
                not_pushed={str(k): str(v) for k, v in
                            mlmd_store.json_property(prop(pushed, "not_pushed_variants"), dict, {}).items()},
                reason=prop(pushed, "not_pushed_reason"))
