"""Runs a compiled pipeline.yaml on this machine the way KFP's launcher would.

No cluster and no containers: the spec's DAG is walked in dependency order
(independent tasks in parallel, like KFP) and every task is executed from what
the spec says, nothing else:

* container tasks: the container's command and args run as a subprocess
  (``python`` is this interpreter, standing in for the image's), with
  ``{{$}}`` replaced by an ExecutorInput JSON whose input artifacts are the
  upstream tasks' outputs and whose output artifacts live under
  ``<pipeline_root>/<pipeline>/<run_id>/<task>/<output key>``; afterwards the
  executor's ExecutorOutput file is read back for the output metadata. A
  ``lifecycle.preCacheCheck`` hook (FileBasedExampleGen's driver) runs first
  and its updated parameters and artifacts feed the executor and the cache
  key, as on Vertex AI Pipelines.
* resolver tasks: their artifact queries run against the artifacts of earlier
  runs under the same pipeline root (see local_metadata).
* importer tasks: register (or, without reimport, reuse) the artifact at the URI.
* caching: a task whose cache is on (task ``cachingOptions`` or a run-level
  override) reuses the outputs of an earlier execution with the same cache key.

What is not emulated raises NotEmulated naming it: conditions, loops, nested
DAGs, exit handlers, task-final-status inputs, unknown placeholders.

  python -m kubeflow.local_launcher pipeline.yaml --pipeline-root DIR
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import copy
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

import yaml

from kubeflow.local_metadata import LocalMetadata, NotEmulated, schema_title

# What the component image sets (kubeflow/Dockerfile): TFX 1.16 needs Keras 2.
IMAGE_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
_PLACEHOLDER = re.compile(r"\{\{\$(.*?)\}\}")
# Linux refuses a single argv string over 128 KiB (MAX_ARG_STRLEN); so does a pod.
_MAX_ARG = 128 * 1024 - 1

Artifacts = Dict[str, List[Dict[str, Any]]]


class TaskFailed(RuntimeError):
    """A task's command failed; the message names the task and its log."""


@dataclasses.dataclass
class TaskResult:
    name: str
    state: str  # SUCCEEDED, CACHED, RESOLVED or IMPORTED
    seconds: float
    outputs: Artifacts
    parameters: Dict[str, Any]


@dataclasses.dataclass
class RunResult:
    run_id: str
    pipeline: str
    run_dir: str
    tasks: Dict[str, TaskResult]

    def artifact(self, task: str, key: str) -> Optional[Dict[str, Any]]:
        found = self.tasks[task].outputs.get(key) or []
        return found[0] if found else None


class LocalLauncher:

    def __init__(self, spec_path: str, pipeline_root: str, *, python: str = sys.executable,
                 max_parallel: int = 2, enable_caching: Optional[bool] = None,
                 task_timeout_s: float = 1800, env: Optional[Dict[str, str]] = None,
                 log: Optional[Callable[[str], None]] = None):
        with open(spec_path) as f:
            self.spec = yaml.safe_load(f)
        _check_spec(self.spec)
        self.pipeline = self.spec["pipelineInfo"]["name"]
        self.root = os.path.abspath(pipeline_root)
        self.python = python
        self.max_parallel = max(1, max_parallel)
        self.enable_caching = enable_caching  # None: each task's compiled setting
        self.task_timeout_s = task_timeout_s
        self.env = {**os.environ, **IMAGE_ENV, **(env or {})}
        self.log = log or (lambda msg: print(f"[local-launcher] {msg}", file=sys.stderr, flush=True))
        self.metadata = LocalMetadata(self.root)

    # ------------------------------------------------------------------ DAG

    def run(self, run_id: Optional[str] = None,
            parameters: Optional[Dict[str, Any]] = None) -> RunResult:
        run_id = run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        params = self._pipeline_parameters(parameters or {})
        tasks = self.spec["root"]["dag"]["tasks"]
        deps = {name: _upstream(task) for name, task in tasks.items()}
        for name, ups in deps.items():
            if ups - set(tasks):
                raise NotEmulated(f"task {name} depends on unknown tasks {sorted(ups - set(tasks))}")
        result = RunResult(run_id, self.pipeline, os.path.join(self.root, self.pipeline, run_id), {})
        self.log(f"run {run_id}: {len(tasks)} tasks, pipeline root {self.root}")
        pending, running, failure = set(tasks), {}, None
        with futures.ThreadPoolExecutor(self.max_parallel) as pool:
            while (pending and failure is None) or running:
                for name in sorted(pending):
                    if failure is None and deps[name] <= set(result.tasks) \
                            and len(running) < self.max_parallel:
                        pending.discard(name)
                        running[pool.submit(self._run_task, run_id, name, tasks[name],
                                            dict(result.tasks), params)] = name
                if not running:
                    raise NotEmulated(f"no runnable task among {sorted(pending)}: dependency cycle")
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    try:
                        result.tasks[name] = fut.result()
                    except Exception as e:  # keep the first; let running tasks finish
                        failure = failure or e
                        self.log(f"{name}: FAILED")
        if failure is not None:
            raise failure
        return result

    def _pipeline_parameters(self, given: Dict[str, Any]) -> Dict[str, Any]:
        defined = self.spec["root"].get("inputDefinitions", {}).get("parameters", {})
        unknown = set(given) - set(defined)
        if unknown:
            raise ValueError(f"unknown pipeline parameters: {sorted(unknown)}")
        params = {k: v["defaultValue"] for k, v in defined.items() if "defaultValue" in v}
        params.update(given)
        missing = [k for k, v in defined.items() if k not in params and not v.get("isOptional")]
        if missing:
            raise ValueError(f"pipeline parameters without a value: {missing}")
        return params

    # ----------------------------------------------------------------- tasks

    def _run_task(self, run_id: str, name: str, task: Dict[str, Any],
                  upstream: Dict[str, TaskResult], pipeline_params: Dict[str, Any]) -> TaskResult:
        start = time.time()
        component = self.spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            raise NotEmulated(f"task {name}: nested DAG components are not emulated")
        for key in ("triggerPolicy", "artifactIterator", "parameterIterator", "iteratorPolicy"):
            if task.get(key):
                raise NotEmulated(f"task {name}: {key} is not emulated")
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        inputs = _input_artifacts(name, task, upstream)
        params = _input_parameters(name, task, upstream, pipeline_params)
        task_dir = os.path.join(self.root, self.pipeline, run_id, name)

        produced: Dict[str, Any] = {}
        if "resolver" in executor:
            queries = executor["resolver"].get("outputArtifactQueries", {})
            outputs = {key: self.metadata.resolve(self.pipeline, q["filter"], inputs)
                       for key, q in queries.items()}
            state = "RESOLVED"
        elif "importer" in executor:
            outputs, state = self._import(name, component, executor["importer"], params, run_id), "IMPORTED"
        elif "container" in executor:
            outputs, produced, state = self._run_container(
                run_id, name, task, component, executor["container"], inputs, params, task_dir)
        else:
            raise NotEmulated(f"task {name}: executor kind {sorted(executor)} is not emulated")
        seconds = round(time.time() - start, 1)
        found = {k: len(v) for k, v in outputs.items()}
        self.log(f"{name}: {state} in {seconds} s; outputs {found}")
        return TaskResult(name, state, seconds, outputs, produced)

    def _import(self, name, component, importer, params, run_id) -> Artifacts:
        source = importer.get("artifactUri", {})
        if "runtimeParameter" in source:
            uri = params.get(source["runtimeParameter"])
        else:
            uri = source.get("constant")
        if not isinstance(uri, str) or not uri:
            raise NotEmulated(f"task {name}: importer without a constant or parameter URI")
        (key, _), = component["outputDefinitions"]["artifacts"].items()
        title = schema_title(importer["typeSchema"])
        artifact = None if importer.get("reimport") else \
            self.metadata.find_imported(self.pipeline, uri, title)
        if artifact is None:
            artifact = {"name": _artifact_name(run_id, name, key), "type": importer["typeSchema"],
                        "uri": uri, "metadata": dict(importer.get("metadata") or {})}
            self.metadata.record_artifact(self.pipeline, artifact)
        return {key: [artifact]}

    def _run_container(self, run_id, name, task, component, container, inputs, params, task_dir):
        outputs = {
            key: [{"name": _artifact_name(run_id, name, key), "type": spec["artifactType"],
                   "uri": os.path.join(task_dir, key), "metadata": dict(spec.get("metadata") or {})}]
            for key, spec in component.get("outputDefinitions", {}).get("artifacts", {}).items()}
        out_params = {key: os.path.join(task_dir, "parameters", key)
                      for key in component.get("outputDefinitions", {}).get("parameters", {})}
        output_file = os.path.join(task_dir, "executor_output.json")
        # Object stores have no folders: code may write <uri>/<file> straight away
        # on gs://, so a local root needs each output folder to exist up front.
        os.makedirs(task_dir, exist_ok=True)
        for artifacts in outputs.values():
            os.makedirs(artifacts[0]["uri"], exist_ok=True)

        def executor_input():
            return _executor_input(inputs, params, outputs, out_params, output_file)

        hook = container.get("lifecycle", {}).get("preCacheCheck")
        if hook:
            # Vertex runs the driver before its cache lookup: the input fingerprint
            # it computes is part of the cache key, so new files bust the cache.
            self._exec(name, "driver", list(hook["command"]) + list(hook.get("args", [])),
                       executor_input(), container, task_dir)
            driver_out = _read_executor_output(output_file, name)
            params = {**params, **driver_out.get("parameterValues", {})}
            _merge_output_metadata(outputs, driver_out)

        use_cache = self.enable_caching if self.enable_caching is not None else \
            bool(task.get("cachingOptions", {}).get("enableCache"))
        key = _cache_key(component, container, params, inputs)
        if use_cache:
            hit = self.metadata.cached_execution(self.pipeline, key)
            if hit:
                return hit["outputs"], hit["parameters"], "CACHED"

        argv = list(container["command"]) + list(container.get("args", []))
        self._exec(name, "executor", argv, executor_input(), container, task_dir)
        result = _read_executor_output(output_file, name)
        _merge_output_metadata(outputs, result)
        produced = dict(result.get("parameterValues", {}))
        for artifacts in outputs.values():
            for artifact in artifacts:
                self.metadata.record_artifact(self.pipeline, artifact)
        self.metadata.record_execution(self.pipeline, key, run_id, name, outputs, produced)
        return outputs, produced, "SUCCEEDED"

    def _exec(self, name: str, step: str, argv: List[str], executor_input: Dict[str, Any],
              container: Dict[str, Any], task_dir: str) -> None:
        argv = [_substitute(a, executor_input, name) for a in argv]
        too_long = [a[:60] for a in argv if len(a.encode()) > _MAX_ARG]
        if too_long:
            raise TaskFailed(f"task {name}: an argument exceeds 128 KiB, which no pod accepts: {too_long}")
        if argv and argv[0] in ("python", "python3"):
            argv[0] = self.python
        env = dict(self.env)
        env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
        log_path = os.path.join(task_dir, f"{step}.log")
        scratch = os.path.join(task_dir, ".scratch")
        os.makedirs(scratch, exist_ok=True)
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.run(argv, cwd=scratch, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=self.task_timeout_s)
            except subprocess.TimeoutExpired:
                raise TaskFailed(f"task {name} ({step}) ran over {self.task_timeout_s} s; "
                                 f"log: {log_path}") from None
        if proc.returncode != 0:
            with open(log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-25:])
            raise TaskFailed(f"task {name} ({step}) exited with {proc.returncode}; "
                             f"log: {log_path}\n{tail}")


# ---------------------------------------------------------------------- helpers

def _check_spec(spec: Any) -> None:
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


def _upstream(task: Dict[str, Any]) -> set:
    ups = set(task.get("dependentTasks", []))
    inputs = task.get("inputs", {})
    for spec in inputs.get("artifacts", {}).values():
        if "taskOutputArtifact" in spec:
            ups.add(spec["taskOutputArtifact"]["producerTask"])
    for spec in inputs.get("parameters", {}).values():
        if "taskOutputParameter" in spec:
            ups.add(spec["taskOutputParameter"]["producerTask"])
    return ups


def _input_artifacts(name: str, task: Dict[str, Any], upstream: Dict[str, TaskResult]) -> Artifacts:
    out = {}
    for key, spec in task.get("inputs", {}).get("artifacts", {}).items():
        if "taskOutputArtifact" not in spec:
            raise NotEmulated(f"task {name}: input artifact {key} from {sorted(spec)}")
        src = spec["taskOutputArtifact"]
        producer = upstream[src["producerTask"]]
        # A resolver that found nothing passes an empty list on, as on Vertex.
        out[key] = copy.deepcopy(producer.outputs.get(src["outputArtifactKey"], []))
    return out


def _input_parameters(name, task, upstream, pipeline_params) -> Dict[str, Any]:
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


def _artifact_name(run_id: str, task: str, key: str) -> str:
    # KFP/Vertex give every artifact a unique resource name; TFX maps it to an id.
    return f"local/artifacts/{run_id}.{task}.{key}"


def _executor_input(inputs: Artifacts, params: Dict[str, Any], outputs: Artifacts,
                    out_params: Dict[str, str], output_file: str) -> Dict[str, Any]:
    doc = {
        "inputs": {"parameterValues": params,
                   "artifacts": {k: {"artifacts": v} for k, v in inputs.items()}},
        "outputs": {"artifacts": {k: {"artifacts": v} for k, v in outputs.items()},
                    "parameters": {k: {"outputFile": p} for k, p in out_params.items()},
                    "outputFile": output_file},
    }
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    json_format.ParseDict(doc, pipeline_spec_pb2.ExecutorInput())  # must be a valid one
    return doc


def _substitute(arg: str, executor_input: Dict[str, Any], task: str) -> str:
    def one(m: re.Match) -> str:
        expr = m.group(1)
        if expr == "":
            return json.dumps(executor_input, sort_keys=True)
        p = re.fullmatch(r"\.inputs\.parameters\['([^']+)'\]", expr)
        if p:
            value = executor_input["inputs"]["parameterValues"][p.group(1)]
            return value if isinstance(value, str) else json.dumps(value)
        a = re.fullmatch(r"\.(inputs|outputs)\.artifacts\['([^']+)'\]\.(uri|path)", expr)
        if a:
            return executor_input[a.group(1)]["artifacts"][a.group(2)]["artifacts"][0]["uri"]
        o = re.fullmatch(r"\.outputs\.parameters\['([^']+)'\]\.output_file", expr)
        if o:
            return executor_input["outputs"]["parameters"][o.group(1)]["outputFile"]
        if expr == ".outputs.output_file":
            return executor_input["outputs"]["outputFile"]
        raise NotEmulated(f"task {task}: placeholder {{{{${expr}}}}} is not emulated")
    return _PLACEHOLDER.sub(one, arg)


def _read_executor_output(path: str, task: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        return {}
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    with open(path) as f:
        text = f.read()
    try:
        proto = json_format.Parse(text, pipeline_spec_pb2.ExecutorOutput())
    except json_format.ParseError as e:
        raise TaskFailed(f"task {task}: {path} is not an ExecutorOutput: {e}") from None
    return json_format.MessageToDict(proto)


def _merge_output_metadata(outputs: Artifacts, executor_output: Dict[str, Any]) -> None:
    """The executor's view of its outputs (metadata, uri) replaces the launcher's."""
    for key, listed in executor_output.get("artifacts", {}).items():
        if key not in outputs:
            continue  # the launcher only keeps declared outputs
        for mine, theirs in zip(outputs[key], listed.get("artifacts", [])):
            mine["metadata"] = theirs.get("metadata", {})
            mine["uri"] = theirs.get("uri") or mine["uri"]


def _cache_key(component, container, params, inputs) -> str:
    doc = {"component": component, "container": container, "parameters": params,
           "inputs": {k: [a["name"] for a in v] for k, v in inputs.items()}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubeflow.local_launcher", description=__doc__.split("\n")[0])
    p.add_argument("spec", help="compiled pipeline.yaml")
    p.add_argument("--pipeline-root", required=True, help="local folder for artifacts")
    p.add_argument("--run-id", default=None)
    p.add_argument("--max-parallel", type=int, default=2)
    p.add_argument("--enable-caching", choices=["on", "off", "compiled"], default="compiled")
    args = p.parse_args(argv)
    caching = {"on": True, "off": False, "compiled": None}[args.enable_caching]
    try:
        result = LocalLauncher(args.spec, args.pipeline_root, max_parallel=args.max_parallel,
                               enable_caching=caching).run(args.run_id)
    except (TaskFailed, NotEmulated, ValueError, OSError) as e:
        print(f"local-launcher: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({n: t.state for n, t in result.tasks.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
