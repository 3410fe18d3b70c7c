"""Compiles create_pipeline(config) into a KFP v2 pipeline spec (pipeline.yaml).

The very same pipeline definition as the local runner: only the runner differs,
and how a run finds the previous run's blessed model and FeatureCache
(``--target``, see TARGETS): open-source KFP v2 backends reject TFX Resolver
tasks, so for them each Resolver is replaced by a registry lookup step
(components/previous_artifacts.py); Vertex AI Pipelines runs the resolvers.
The spec is written as YAML (kfp 2's client refuses .json) with pipeline spec
schema 2.1. YAML carries no runtime config, so the pipeline root is also
recorded as the spec's ``defaultPipelineRoot`` and passed again at submit time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Optional, Sequence

import yaml

from pipeline.config import PipelineConfig

# Entry point the V2 runner writes into every container task; the compiled spec
# runs it through SHIM_ENTRYPOINT (kubeflow/executor_entrypoint.py), which repairs
# what the open-source backend hands it. The image must have all three.
EXECUTOR_ENTRYPOINT = ("python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor")
DRIVER_ENTRYPOINT = ("python", "-m", "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver")
SHIM_ENTRYPOINT = ("python", "-m", "kubeflow.executor_entrypoint")
OUTPUT_SUFFIXES = (".yaml", ".yml")
# --target -> PipelineConfig.lookup. "kfp": open-source KFP v2, whose backend
# compiles container and importer executors only; "vertex": Vertex AI Pipelines,
# which executes the resolver tasks TFX compiles its Resolver nodes into.
TARGETS = {"kfp": "registry", "vertex": "resolver"}
# The registry lookups' executor: their answer is in the registry, not in their
# inputs, so their tasks are compiled with caching off.
LOOKUP_EXECUTOR = "components.previous_artifacts.LookupExecutor"
# The V2 compiler's own check for custom artifact schema titles (compiler_utils).
_KFP_SCHEMA_TITLE = re.compile(r"^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$")
# Argo's rule for DAG task and template names (argo-workflows workflow/validate/
# validate.go, workflowFieldNameFmt, max 128), checked when a run is created. The
# open-source backend uses task keys verbatim (argocompiler/dag.go) and adds a
# "<key>-driver" task; a leading digit is refused because it uses `depends`.
ARGO_NAME = re.compile(r"^[a-zA-Z][-a-zA-Z0-9]*$")
ARGO_MAX_NAME = 128 - len("-driver")


class KubeflowError(ValueError):
    """Bad Kubeflow input or environment; the message names the thing to fix."""


def runner_classes():
    """(KubeflowV2DagRunner, KubeflowV2DagRunnerConfig), or a loud error.

    tfx.v1.orchestration.experimental hides these behind a bare
    ``except ImportError: pass``: a broken kfp install would just make them
    vanish. Importing the module directly surfaces the real cause.
    """
    try:
        from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2
    except ImportError as e:
        raise KubeflowError(
            f"the Kubeflow V2 runner cannot be imported ({e}); it needs kfp==2.5.0 and "
            "kfp-pipeline-spec==0.2.2 from requirements.lock (pip install 'tfx[kfp]==1.16.0')") from e
    return v2.KubeflowV2DagRunner, v2.KubeflowV2DagRunnerConfig


def kubeflow_config(config: PipelineConfig, pipeline_root: str,
                    serving_dir: Optional[str] = None,
                    beam_args: Optional[Sequence[str]] = None,
                    target: str = "kfp") -> PipelineConfig:
    """The config with Kubeflow locations (no local workdir exists in a pod) and
    the lookup mode of `target` (TARGETS)."""
    if target not in TARGETS:
        raise KubeflowError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    return dataclasses.replace(
        config, workdir=pipeline_root, pipeline_root_uri=pipeline_root,
        serving_uri=serving_dir or join_uri(pipeline_root, "serving"),
        beam_args=list(config.beam_args if beam_args is None else beam_args),
        lookup=TARGETS[target])


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def check_output_path(output: str) -> None:
    if not output.endswith(OUTPUT_SUFFIXES):
        raise KubeflowError(f"--output must end with .yaml or .yml (kfp's client accepts no "
                            f"other single-file form), got {output}")


def compile_pipeline(config: PipelineConfig, output: str, image: str, s3_access=None) -> str:
    """Writes the spec for `config` (label_names already set) to `output`; returns its path.
    `s3_access` (kubeflow.pod_env.S3Access): pods take S3 credentials from a secret."""
    check_output_path(output)
    if not image or any(c.isspace() for c in image):
        raise KubeflowError(f"--image must be a container image reference, got {image!r}")
    runner_cls, runner_config_cls = runner_classes()
    from pipeline.pipeline import create_pipeline

    out_dir, filename = os.path.split(os.path.abspath(output))
    runner = runner_cls(
        config=runner_config_cls(default_image=image, use_pipeline_spec_2_1=True),
        output_dir=out_dir, output_filename=filename)
    tfx_pipeline = create_pipeline(config)
    check_artifact_types(tfx_pipeline)
    check_resolvers(tfx_pipeline)
    runner.run(tfx_pipeline)
    _finish_spec(output, config.pipeline_root, config.lookup)
    check_executors(output, config.lookup)
    if s3_access is not None:
        from kubeflow import pod_env
        pod_env.add_s3_access(output, s3_access)
    return output


def check_artifact_types(tfx_pipeline) -> None:
    """Custom artifact types must survive the trip through a KFP spec.

    The V2 compiler writes a custom type's TYPE_NAME as the schema title and
    refuses titles not matching KFP's pattern; inside the container TFX then
    imports the title *as a class path*. So TYPE_NAME must be '<module>.<Class>'
    and import back to the same class, or the pipeline compiles only to fail
    in a pod.
    """
    from tfx.utils import import_utils, name_utils
    problems = {}
    for node in tfx_pipeline.components:
        for channel in list(node.inputs.values()) + list(node.outputs.values()):
            cls = channel.type
            if _is_standard(cls):
                continue  # the runtime knows its class path
            try:
                ok = import_utils.import_class_by_path(cls.TYPE_NAME) is cls
            except (ImportError, AttributeError, ValueError):
                ok = False
            if not (ok and _KFP_SCHEMA_TITLE.fullmatch(cls.TYPE_NAME)):
                problems.setdefault(name_utils.get_full_name(cls), (node.id, cls.TYPE_NAME))
    if problems:
        raise KubeflowError("; ".join(
            f"{path} (first used by {node_id}) has TYPE_NAME {type_name!r}: on Kubeflow it "
            f"must be '<module>.<Class>' (pattern {_KFP_SCHEMA_TITLE.pattern}) that imports "
            f"back to this class in the image, e.g. 'components.{path.rsplit('.', 1)[1]}' "
            "with the components package exposing it"
            for path, (node_id, type_name) in sorted(problems.items())))


def check_resolvers(tfx_pipeline) -> None:
    """Resolver queries must select the artifacts the local runner would.

    TFX's V2 compiler turns a resolver over a custom artifact type into the
    query ``schema_title="tfx.Artifact"``, while the artifacts carry their
    TYPE_NAME as title: on Kubeflow it resolves the wrong thing or nothing,
    silently, where the local runner finds the latest artifact of that type.
    """
    from tfx.dsl.components.common.resolver import Resolver
    from tfx.utils import name_utils
    for node in tfx_pipeline.components:
        if not isinstance(node, Resolver):
            continue
        for key, channel in node.inputs.items():
            if not _is_standard(channel.type):
                raise KubeflowError(
                    f"resolver {node.id} selects {name_utils.get_full_name(channel.type)} ({key}), "
                    "a custom artifact type: TFX's Kubeflow V2 compiler queries it as "
                    "schema_title=\"tfx.Artifact\", which does not select these artifacts "
                    "(the local runner does); give what a "
                    "resolver selects a standard type (e.g. "
                    "tfx.types.experimental.simple_artifacts.Dataset)")


def _is_standard(cls) -> bool:
    """A type the V2 compiler and runtime know by name (tfx.Model, tfx.Examples, ...)."""
    from tfx.orchestration.kubeflow.v2 import compiler_utils
    from tfx.utils import name_utils
    return compiler_utils.TITLE_TO_CLASS_PATH.get(f"tfx.{cls.__qualname__}") == \
        name_utils.get_full_name(cls)


def check_executors(path: str, lookup: str) -> None:
    """A registry-lookup spec must have no resolver task: OSS KFP refuses the whole run."""
    if lookup != "registry":
        return
    with open(path) as f:
        executors = yaml.safe_load(f)["deploymentSpec"]["executors"]
    kinds = {label: sorted(set(e) - {"container", "importer"}) for label, e in executors.items()}
    bad = sorted(label for label, extra in kinds.items() if extra)
    if bad:
        raise KubeflowError(f"the spec for open-source KFP has executors other than container "
                            f"and importer ({', '.join(bad)}), which its backend rejects")


def check_task_names(doc: dict) -> None:
    """Every task name of a spec for open-source KFP must pass Argo's validation,
    or `submit` fails and a recurring run fails at every trigger."""
    names = list(doc["root"]["dag"]["tasks"])
    for component in doc.get("components", {}).values():
        names += list(component.get("dag", {}).get("tasks", {}))
    bad = sorted(n for n in set(names) if not ARGO_NAME.fullmatch(n) or len(n) > ARGO_MAX_NAME)
    if bad:
        raise KubeflowError(
            f"task names {bad} would be refused by Argo on open-source KFP: a name must start "
            f"with a letter, hold only letters, digits and '-', and be at most {ARGO_MAX_NAME} "
            "characters (give the node another id with .with_id())")


def _finish_spec(path: str, pipeline_root: str, lookup: str) -> None:
    """Records the root in the spec itself (KFP uses it when a run names none);
    runs every executor through SHIM_ENTRYPOINT; for open-source KFP (registry
    lookups) checks task names and turns caching off where it would be wrong:

    * the registry lookups: their answer is in the registry, not in their inputs;
    * a task with a pre-cache hook (ImageExampleGen): the open-source backend
      never runs the hook, so its cache key would hold only constants and a
      cache hit would hide new images. The shim runs the hook's driver instead.
    """
    with open(path) as f:
        text = f.read()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    spec = yaml.safe_load(text)
    spec["defaultPipelineRoot"] = pipeline_root
    _restore_parameter_defaults(spec)
    for task in spec["root"]["dag"]["tasks"].values():
        component = spec["components"][task["componentRef"]["name"]]
        container = spec["deploymentSpec"]["executors"][component["executorLabel"]].get("container")
        if not container:
            continue
        hook = container.get("lifecycle", {}).get("preCacheCheck")
        if lookup == "registry" and (LOOKUP_EXECUTOR in container.get("args", []) or hook):
            task.pop("cachingOptions", None)
        if tuple(container["command"]) == EXECUTOR_ENTRYPOINT:
            container["command"] = list(SHIM_ENTRYPOINT)
            extra = ["--json_serialized_outputs_spec_args",
                     json.dumps(component.get("outputDefinitions", {}), sort_keys=True)]
            if hook:
                extra += ["--pre_cache_check_module", hook["command"][-1]]
            args = container.get("args", [])
            at = args.index("--json_serialized_inputs_spec_args") + 2 \
                if "--json_serialized_inputs_spec_args" in args else 4
            container["args"] = args[:at] + extra + args[at:]
    if lookup == "registry":
        check_task_names(spec)
    with open(path, "w") as f:
        f.write(header)
        yaml.safe_dump(spec, f, sort_keys=True)


def _restore_parameter_defaults(spec: dict) -> None:
    """Writes back the defaults TFX 1.16 drops from the root's parameters (today
    only ChangeCheck's ``force``, default 0): without one, a run or a schedule
    that passes no value fails in the driver; with it, the backend fills
    it in (argocompiler/argo.go, "fill root component default parameters")."""
    from kubeflow import change_gate
    defaults = {p.name: p.default for p in (change_gate.force_parameter(),)}
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(declared) - set(defaults))
    if unknown:  # a new RuntimeParameter: it needs its default here too
        raise KubeflowError(f"pipeline parameters {unknown} have no default in the spec "
                            "(TFX 1.16 drops them): add them to _restore_parameter_defaults")
    for name, param in declared.items():
        param.update(defaultValue=defaults[name], isOptional=True)


def load_spec(path: str):
    """pipeline.yaml -> kfp PipelineSpec proto (raises KubeflowError if it is not one)."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from kubeflow import pod_env
    try:
        doc, _ = pod_env.read(path)  # a platform spec may follow the pipeline spec
        return json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())
    except FileNotFoundError:
        raise KubeflowError(f"pipeline spec not found: {path}") from None
    except (yaml.YAMLError, json_format.ParseError, TypeError, AttributeError) as e:
        raise KubeflowError(f"{path} is not a KFP v2 pipeline spec: {str(e).splitlines()[0]}") from None
