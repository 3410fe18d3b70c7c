"""Reading a compiled KFP v2 pipeline spec: structure checks, task dependencies,
parameters. Used by the local launcher (kubeflow/local_launcher.py)."""

from __future__ import annotations

from typing import Any, Dict

from kubeflow import kfp_backend
from kubeflow.kfp_backend import Backend, BackendError
from kubeflow.local_metadata import NotEmulated


def check_spec(spec: Any, backend: Backend) -> None:
    if not isinstance(spec, dict) or not {"root", "components", "deploymentSpec",
                                          "pipelineInfo"} <= set(spec):
        raise ValueError("not a KFP v2 pipeline spec: root, components, deploymentSpec "
                         "and pipelineInfo are required")
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # structure check
    if not str(spec.get("schemaVersion", "")).startswith("2.1"):
        # 2.0 passes parameters in another ExecutorInput field; TFX writes 2.1
        # with use_pipeline_spec_2_1=True, as kubeflow.runner does.
        raise NotEmulated(f"pipeline spec schema {spec.get('schemaVersion')!r}: only 2.1 is emulated")
    if backend.oss:
        for label, executor in spec["deploymentSpec"]["executors"].items():
            if not {"container", "importer"} & set(executor):
                raise BackendError(f"executor(label={label!r}): {kfp_backend.RESOLVER_REFUSED}")
        for name, task in spec["root"]["dag"]["tasks"].items():
            executor = spec["deploymentSpec"]["executors"].get(
                spec["components"][task["componentRef"]["name"]].get("executorLabel"), {})
            if "importer" in executor and (task.get("triggerPolicy") or {}).get("condition"):
                # argocompiler/dag.go: driver and importer are one pod, no `when` possible
                raise BackendError(f"task {name}: triggerPolicy.condition on importer task is not supported")
        from kubeflow.runner import KubeflowError, check_task_names  # Argo's rule
        try:
            check_task_names(spec)
        except KubeflowError as e:
            raise BackendError(str(e)) from None


def upstream(task: Dict[str, Any]) -> set:
    ups = set(task.get("dependentTasks", []))
    inputs = task.get("inputs", {})
    for spec in inputs.get("artifacts", {}).values():
        if "taskOutputArtifact" in spec:
            ups.add(spec["taskOutputArtifact"]["producerTask"])
    for spec in inputs.get("parameters", {}).values():
        if "taskOutputParameter" in spec:
            ups.add(spec["taskOutputParameter"]["producerTask"])
    return ups


def input_parameters(name, task, upstream, pipeline_params) -> Dict[str, Any]:
    out = {}
    for key, spec in task.get("inputs", {}).get("parameters", {}).items():
        if "runtimeValue" in spec:
            value = spec["runtimeValue"]
            if "constant" in value:
                out[key] = value["constant"]
            else:
                raise NotEmulated(f"task {name}: parameter {key} runtime value {sorted(value)}")
        elif "componentInputParameter" in spec:
            out[key] = pipeline_params[spec["componentInputParameter"]]
        elif "taskOutputParameter" in spec:
            src = spec["taskOutputParameter"]
            out[key] = upstream[src["producerTask"]].parameters[src["outputParameterKey"]]
        else:
            raise NotEmulated(f"task {name}: parameter {key} from {sorted(spec)}")
    return out


def pipeline_parameters(spec: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
    """The root DAG's parameters: `given` over the defaults; every required one set."""
    defined = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = set(given) - set(defined)
    if unknown:
        raise ValueError(f"unknown pipeline parameters: {sorted(unknown)}")
    params = {k: v["defaultValue"] for k, v in defined.items() if "defaultValue" in v}
    params.update(given)
    missing = [k for k, v in defined.items() if k not in params and not v.get("isOptional")]
    if missing:
        raise ValueError(f"pipeline parameters without a value: {missing}")
    return params
