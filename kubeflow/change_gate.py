"""The early exit of a scheduled run on open-source Kubeflow: the pipeline's steps
after ImageExampleGen run only when ChangeCheck finds something new.

A local `retrain run` checks before it starts (pipeline/unchanged.py). A
Kubeflow run is one compiled spec, so the check is a step,
components/change_check.py, and every later step sits in
``tfx.dsl.Cond(changed == 1)``. TFX's Kubeflow V2 compiler turns that into a
``triggerPolicy.condition`` on each of them (CEL over ChangeCheck's output,
added as an implicit input). The open-source driver evaluates it
(driver/driver.go Container, expression/expression.go Condition): false
records the task as not triggered and Argo skips its executor; the tasks
after it, depending on ``<task>.Succeeded``, are omitted
(compiler/argocompiler/dag.go depends). The run then succeeds having run
ImageExampleGen and ChangeCheck only, and pushes nothing.

Only specs with registry lookups (``--target kfp``) get the gate: the record it
compares with lives in the registry. The local runner and Vertex get no node
(docs/kubeflow.md says why and what Vertex runs get instead).

The pipeline parameter ``force`` (a TFX RuntimeParameter read by ChangeCheck)
lets a one-off run of the compiled, scheduled spec run in full: `retrain submit
--force`. TFX 1.16's V2 compiler declares it on the root without its default
(compiler_utils.build_parameter_type_spec); kubeflow/runner.py writes the
default 0 back, which the backend fills in for runs that pass none (argocompiler
argo.go, "fill root component default parameters"), a schedule's included.

  with change_gate.gate(config, example_gen) as gate:
      rest = gate.add(<nodes after ImageExampleGen>)
  return [example_gen, *gate.nodes, *rest]
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, List

from tfx.dsl.experimental.conditionals.conditional import Cond
from tfx.orchestration import data_types

from components import contracts, previous_artifacts
from components.change_check import CHANGED, ChangeCheckStep, RecordRunFingerprint
from pipeline import unchanged
from pipeline.config import PipelineConfig


@dataclasses.dataclass
class Gate:
    nodes: list  # what runs before the gate (ChangeCheck)
    check: object = None
    registry: str = ""
    serving_dir: str = ""

    def add(self, gated: List) -> List:
        """`gated` plus, after all of it, the step recording this run's inputs."""
        if self.check is None:
            return list(gated)
        recorder = RecordRunFingerprint(
            change_check=self.check.outputs["result"], registry=self.registry,
            serving_dir=self.serving_dir).with_id(contracts.RECORD_RUN_FINGERPRINT)
        # After the leaves, i.e. after every gated step (channels are wired to
        # their consumers only when the pipeline is built: read the inputs).
        feeding = {up.id for node in gated for up in node.upstream_nodes}
        feeding |= {getattr(ch, "producer_component_id", None) for node in gated
                    for ch in node.inputs.values()}
        for node in gated:
            if node.id not in feeding:
                recorder.add_upstream_node(node)
        return [*gated, recorder]


def force_parameter() -> data_types.RuntimeParameter:
    """``force``, 0 unless a run passes 1 (the local runner takes the default)."""
    return data_types.RuntimeParameter(name=contracts.FORCE_PARAMETER, ptype=int, default=0)


@contextlib.contextmanager
def gate(config: PipelineConfig, example_gen) -> Iterator[Gate]:
    """Nodes created inside run only when ChangeCheck says ``changed`` (kfp target)."""
    if config.lookup != "registry":
        yield Gate(nodes=[])
        return
    registry = previous_artifacts.registry_uri(config.pipeline_root, config.pipeline_name)
    check = ChangeCheckStep(
        examples=example_gen.outputs["examples"], registry=registry,
        serving_dir=config.serving_dir, settings=unchanged.settings_digest(config),
        force=force_parameter(),
    ).with_id(contracts.CHANGE_CHECK)
    with Cond(check.outputs["result"].future()[0].custom_property(CHANGED) == 1):
        yield Gate([check], check, registry, config.serving_dir)
