"""Runs a compiled pipeline.yaml on this machine the way a KFP v2 backend would.

No cluster and no containers: the spec's DAG is walked in dependency order
(independent tasks in parallel) and every task is executed from what the spec
says, nothing else. ``backend`` chooses whose rules apply (kubeflow/kfp_backend.py
names the kubeflow/pipelines source file behind each):

* ``kfp`` (default; ``kfp-2.0``, ``kfp-2.5``, ``kfp-2.15`` ... pick a release,
  plain ``kfp`` is 2.14): the open-source backend. Input artifacts arrive
  untyped (``instanceSchema: ""``), named by their MLMD id, with metadata as
  read back from MLMD (lists and structs wrapped, bools as numbers,
  ``display_name`` and ``store_session_info`` added); outputs live under
  ``<root>/<pipeline>/<run>/<task>/<uuid>/<key>`` (no uuid before 2.4); from
  2.5 every task gets an ``executor-logs`` output holding its stdout and
  stderr; the ExecutorOutput file lives in the pod, not under the root; no
  lifecycle hook runs; the cache key is the backend's (inputs by MLMD id);
  resolver executors and task names Argo would refuse are refused.
* ``vertex``: Vertex AI Pipelines: typed inputs with the producer's metadata, a
  ``lifecycle.preCacheCheck`` hook (FileBasedExampleGen's driver) runs first
  and its parameters feed the executor and the cache key, and resolver tasks
  run their artifact queries against earlier runs (see local_metadata).

For both: container tasks run the container's command and args as a
subprocess (``python`` is this interpreter, standing in for the image's) with
``{{$}}`` replaced by the ExecutorInput JSON; importer tasks register (or,
without reimport, reuse) the artifact at the URI; a task whose cache is on
(``cachingOptions`` or a run-level override, as kfp's client rewrites it)
reuses the outputs of an earlier execution with the same cache key.

A ``triggerPolicy.condition`` (``tfx.dsl.Cond``) is evaluated as the open-source
driver does (kubeflow/kfp_conditions.py): false skips the task, and the tasks
after it are omitted; the run still succeeds. What is not emulated raises
NotEmulated naming it: loops, nested DAGs, exit handlers, conditions on Vertex,
task-final-status inputs, unknown placeholders. Also not
emulated: the download of every input artifact into the pod's emptyDir (local
roots are read in place), and retries.

  python -m kubeflow.local_launcher pipeline.yaml --pipeline-root DIR [--backend kfp|vertex]
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Union


from kubeflow import kfp_backend, kfp_conditions, pipeline_spec
from kubeflow.kfp_backend import Backend, BackendError
from kubeflow.local_metadata import LocalMetadata, NotEmulated, schema_title

# What the component image sets (kubeflow/Dockerfile): TFX 1.16 needs Keras 2.
IMAGE_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
# Linux refuses a single argv string over 128 KiB (MAX_ARG_STRLEN); so does a pod.
_MAX_ARG = 128 * 1024 - 1

Artifacts = Dict[str, List[Dict[str, Any]]]


class TaskFailed(RuntimeError):
    """A task's command failed; the message names the task and its log."""


@dataclasses.dataclass
class TaskResult:
    name: str
    state: str  # SUCCEEDED, CACHED, RESOLVED, IMPORTED, SKIPPED or OMITTED
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

    def __init__(self, spec_path: str, pipeline_root: str, *, backend: Union[str, Backend] = "kfp",
                 python: str = sys.executable, max_parallel: int = 2,
                 enable_caching: Optional[bool] = None, task_timeout_s: float = 1800,
                 env: Optional[Dict[str, str]] = None,
                 secrets: Optional[Dict[str, Dict[str, str]]] = None,
                 log: Optional[Callable[[str], None]] = None):
        from kubeflow import pod_env
        self.spec, self.platform = pod_env.read(spec_path)
        self.backend = backend if isinstance(backend, Backend) else Backend.parse(backend)
        pipeline_spec.check_spec(self.spec, self.backend)
        self.pipeline = self.spec["pipelineInfo"]["name"]
        self.root = os.path.abspath(pipeline_root)
        self.python = python
        self.max_parallel = max(1, max_parallel)
        self.enable_caching = enable_caching  # None: each task's compiled setting
        self.task_timeout_s = task_timeout_s
        self.env = {**os.environ, **IMAGE_ENV, **(env or {})}
        # The cluster's Kubernetes secrets, for the platform spec's secretAsEnv.
        self.secrets = dict(secrets or {})
        self.log = log or (lambda msg: print(f"[local-launcher] {msg}", file=sys.stderr, flush=True))
        self.metadata = LocalMetadata(self.root)

    # ------------------------------------------------------------------ DAG

    def run(self, run_id: Optional[str] = None,
            parameters: Optional[Dict[str, Any]] = None) -> RunResult:
        run_id = run_id or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        params = pipeline_spec.pipeline_parameters(self.spec, parameters or {})
        tasks = self.spec["root"]["dag"]["tasks"]
        deps = {name: pipeline_spec.upstream(task) for name, task in tasks.items()}
        for name, ups in deps.items():
            if ups - set(tasks):
                raise NotEmulated(f"task {name} depends on unknown tasks {sorted(ups - set(tasks))}")
        result = RunResult(run_id, self.pipeline, os.path.join(self.root, self.pipeline, run_id), {})
        self.log(f"run {run_id} ({self.backend}): {len(tasks)} tasks, pipeline root {self.root}")
        pending, running, failure = set(tasks), {}, None
        with futures.ThreadPoolExecutor(self.max_parallel) as pool:
            while (pending and failure is None) or running:
                for name in kfp_conditions.omitted(pending, deps, {n: t.state for n, t in result.tasks.items()}):
                    pending.discard(name)  # after a skipped task: Argo never starts it
                    result.tasks[name] = TaskResult(name, kfp_conditions.OMITTED, 0.0, {}, {})
                    self.log(f"{name}: {kfp_conditions.OMITTED} (an upstream task did not run)")
                for name in sorted(pending):
                    if failure is None and deps[name] <= set(result.tasks) \
                            and len(running) < self.max_parallel:
                        pending.discard(name)
                        running[pool.submit(self._run_task, run_id, name, tasks[name],
                                            dict(result.tasks), params)] = name
                if not running and (pending and failure is None):
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

    # ----------------------------------------------------------------- tasks

    def _run_task(self, run_id: str, name: str, task: Dict[str, Any],
                  upstream: Dict[str, TaskResult], pipeline_params: Dict[str, Any]) -> TaskResult:
        start = time.time()
        component = self.spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            raise NotEmulated(f"task {name}: nested DAG components are not emulated")
        for key in ("artifactIterator", "parameterIterator", "iteratorPolicy"):
            if task.get(key):
                raise NotEmulated(f"task {name}: {key} is not emulated")
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        inputs = self._input_artifacts(name, task, upstream)
        params = pipeline_spec.input_parameters(name, task, upstream, pipeline_params)
        if self.backend.oss:
            params = kfp_backend.typed_parameters(
                params, component.get("inputDefinitions", {}).get("parameters", {}))
        try:  # the driver: resolved inputs, then the condition (kfp_conditions)
            if not kfp_conditions.triggered(name, task, inputs, params, self.backend.oss):
                self.log(f"{name}: {kfp_conditions.SKIPPED} (triggerPolicy.condition is false)")
                return TaskResult(name, kfp_conditions.SKIPPED, round(time.time() - start, 1), {}, {})
        except kfp_conditions.ConditionError as e:
            raise TaskFailed(f"task {name}: driver failed on triggerPolicy.condition: {e}") from None

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
                run_id, name, task, component, executor["container"], inputs, params)
        else:
            raise NotEmulated(f"task {name}: executor kind {sorted(executor)} is not emulated")
        seconds = round(time.time() - start, 1)
        found = {k: len(v) for k, v in outputs.items()}
        self.log(f"{name}: {state} in {seconds} s; outputs {found}")
        return TaskResult(name, state, seconds, outputs, produced)

    def _input_artifacts(self, name: str, task: Dict[str, Any],
                         upstream: Dict[str, TaskResult]) -> Artifacts:
        out = {}
        for key, spec in task.get("inputs", {}).get("artifacts", {}).items():
            if "taskOutputArtifact" not in spec:
                raise NotEmulated(f"task {name}: input artifact {key} from {sorted(spec)}")
            src = spec["taskOutputArtifact"]
            produced = upstream[src["producerTask"]].outputs
            if src["outputArtifactKey"] not in produced:
                # KFP 2.0 says so; 2.5+ drops the error and passes nothing (a bug).
                raise TaskFailed(f"task {name}: cannot find output artifact key "
                                 f"{src['outputArtifactKey']!r} in producer task {src['producerTask']!r}")
            listed = produced[src["outputArtifactKey"]]
            if self.backend.oss:
                # Read back from MLMD by id: untyped, metadata as stored (driver.go).
                out[key] = [self.metadata.as_input(a["id"]) for a in listed]
            else:
                # A resolver that found nothing passes an empty list on, as on Vertex.
                out[key] = [{k: v for k, v in a.items() if k != "id"} for a in copy.deepcopy(listed)]
        return out

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
            artifact = {"name": kfp_backend.vertex_artifact_name(run_id, name, key), "type": importer["typeSchema"],
                        "uri": uri, "metadata": dict(importer.get("metadata") or {})}
            stored = kfp_backend.to_mlmd(artifact["metadata"], key, self.backend) \
                if self.backend.oss else None
            if stored is not None:  # importer_launcher.go: no display_name
                stored.pop("display_name", None)
            artifact = self.metadata.record_artifact(self.pipeline, artifact, stored)
        return {key: [artifact]}

    def _run_container(self, run_id, name, task, component, container, inputs, params):
        outputs_def = component.get("outputDefinitions", {})
        task_root = os.path.join(self.root, self.pipeline, run_id, name)
        if self.backend.execution_dirs:
            task_root = os.path.join(task_root, str(uuid.uuid4()))
        outputs = {key: [kfp_backend.provision_output(spec["artifactType"], task_root, key, spec, self.backend)]
                   for key, spec in outputs_def.get("artifacts", {}).items()}
        if self.backend.publish_logs:
            outputs[kfp_backend.EXECUTOR_LOGS] = [kfp_backend.provision_output(
                kfp_backend.EXECUTOR_LOGS_TYPE, task_root, kfp_backend.EXECUTOR_LOGS, {}, self.backend)]
        # Object stores have no folders: code may write <uri>/<file> straight away
        # on gs:// or s3://, so a local root needs each output folder up front.
        os.makedirs(task_root, exist_ok=True)
        for key, artifacts in outputs.items():
            if key != kfp_backend.EXECUTOR_LOGS:
                os.makedirs(artifacts[0]["uri"], exist_ok=True)
        pod = tempfile.mkdtemp(prefix=f"pod-{name}-")  # the pod's own disk, gone afterwards
        try:
            return self._in_pod(pod, run_id, name, task, component, container, inputs, params,
                                outputs, task_root)
        finally:
            shutil.rmtree(pod, ignore_errors=True)

    def _in_pod(self, pod, run_id, name, task, component, container, inputs, params, outputs,
                task_root):
        outputs_def = component.get("outputDefinitions", {})
        out_param_defs = outputs_def.get("parameters", {})
        if self.backend.oss:
            out_params = {k: os.path.join(pod, kfp_backend.POD_PARAMETER_DIR, k) for k in out_param_defs}
            output_file = os.path.join(pod, "task-root", "output_metadata.json") \
                if self.backend.outputs_named else os.path.join(pod, kfp_backend.POD_OUTPUT_FILE)
        else:  # Vertex: under the pipeline root (TFX's comment in kubeflow_v2_run_executor)
            out_params = {k: os.path.join(task_root, "parameters", k) for k in out_param_defs}
            output_file = os.path.join(task_root, "executor_output.json")
        for path in [output_file, *out_params.values()]:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        definitions = component.get("inputDefinitions", {}).get("parameters", {})

        def executor_input():
            shown = kfp_backend.with_defaults(params, definitions) if self.backend.oss else params
            return kfp_backend.executor_input(inputs, shown, outputs, out_params, output_file)

        hook = container.get("lifecycle", {}).get("preCacheCheck")
        if hook and not self.backend.oss:
            # Vertex runs the driver before its cache lookup: the input fingerprint
            # it computes is part of the cache key, so new files bust the cache.
            self._exec(name, "driver", list(hook["command"]) + list(hook.get("args", [])),
                       executor_input(), container, task_root, pod, component["executorLabel"])
            driver_out = _read_executor_output(output_file, name)
            params = {**params, **driver_out.get("parameterValues", {})}
            kfp_backend.merge_outputs(outputs, driver_out, self.root, self.backend)

        use_cache = self.enable_caching if self.enable_caching is not None else \
            bool(task.get("cachingOptions", {}).get("enableCache"))
        argv = list(container["command"]) + list(container.get("args", []))
        if self.backend.oss:
            key = kfp_backend.cache_key(
                {k: [a["name"] for a in v] for k, v in inputs.items()}, params, outputs,
                out_param_defs, container.get("image", ""), argv)
        else:
            key = kfp_backend.vertex_cache_key(component, container, params, inputs)
        if use_cache:
            hit = self.metadata.cached_execution(self.pipeline, key)
            if hit:
                missing = sorted(set(outputs) - set(hit["outputs"]))
                if missing:  # driver.go, reusing a cached execution
                    raise TaskFailed(f"task {name}: unable to find artifact with name {missing[0]} "
                                     "in mlmd output artifacts")
                return hit["outputs"], hit["parameters"], "CACHED"

        logs = outputs.get(kfp_backend.EXECUTOR_LOGS)
        self._exec(name, "executor", argv, executor_input(), container, task_root, pod,
                   component["executorLabel"], tee=logs[0]["uri"] if logs else None)
        result = _read_executor_output(output_file, name)
        try:
            kfp_backend.merge_outputs(outputs, result, self.root, self.backend)
            produced = {k: kfp_backend.output_parameter(k, result, out_params[k], d.get("parameterType"))
                        for k, d in out_param_defs.items()}
            recorded = {key: [self.metadata.record_artifact(
                            self.pipeline, a,
                            kfp_backend.to_mlmd(a.get("metadata") or {}, key, self.backend)
                            if self.backend.oss else None) for a in listed]
                        for key, listed in outputs.items()}
        except BackendError as e:
            raise TaskFailed(f"task {name}: {e}") from None
        if use_cache:  # launcher_v2.go stores a fingerprint only when it computed one
            self.metadata.record_execution(self.pipeline, key, run_id, name, recorded, produced)
        return recorded, produced, "SUCCEEDED"

    def _exec(self, name: str, step: str, argv: List[str], executor_input: Dict[str, Any],
              container: Dict[str, Any], task_root: str, pod: str, label: str,
              tee: Optional[str] = None) -> None:
        argv = [kfp_backend.substitute(a, executor_input, name) for a in argv]
        too_long = [a[:60] for a in argv if len(a.encode()) > _MAX_ARG]
        if too_long:
            raise TaskFailed(f"task {name}: an argument exceeds 128 KiB, which no pod accepts: {too_long}")
        if argv and argv[0] in ("python", "python3"):
            argv[0] = self.python
        env = dict(self.env)
        env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
        try:  # the driver puts the platform spec's secretAsEnv into the pod
            from kubeflow import pod_env
            env.update(pod_env.secret_env(self.platform, label, self.secrets))
        except KeyError as e:
            raise TaskFailed(f"task {name}: CreateContainerConfigError: {e.args[0]}") from None
        log_path = os.path.join(task_root, f"{step}.log")
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.run(argv, cwd=pod, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=self.task_timeout_s)
            except subprocess.TimeoutExpired:
                raise TaskFailed(f"task {name} ({step}) ran over {self.task_timeout_s} s; "
                                 f"log: {log_path}") from None
        if tee:  # launcher_v2.go tees the command's stdout and stderr into this file
            shutil.copyfile(log_path, tee)
        if proc.returncode != 0:
            with open(log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-25:])
            raise TaskFailed(f"task {name} ({step}) exited with {proc.returncode}; "
                             f"log: {log_path}\n{tail}")


# ---------------------------------------------------------------------- helpers

def _read_executor_output(path: str, task: str) -> Dict[str, Any]:
    try:
        return kfp_backend.read_executor_output(path, task)
    except BackendError as e:
        raise TaskFailed(str(e)) from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubeflow.local_launcher", description=__doc__.split("\n")[0])
    p.add_argument("spec", help="compiled pipeline.yaml")
    p.add_argument("--pipeline-root", required=True, help="local folder for artifacts")
    p.add_argument("--run-id", default=None)
    p.add_argument("--max-parallel", type=int, default=2)
    p.add_argument("--enable-caching", choices=["on", "off", "compiled"], default="compiled")
    p.add_argument("--backend", default="kfp",
                   help="kfp (open-source KFP v2, 2.14), kfp-<major>.<minor>, or vertex")
    args = p.parse_args(argv)
    caching = {"on": True, "off": False, "compiled": None}[args.enable_caching]
    try:
        result = LocalLauncher(args.spec, args.pipeline_root, backend=args.backend,
                               max_parallel=args.max_parallel,
                               enable_caching=caching).run(args.run_id)
    except (TaskFailed, NotEmulated, BackendError, ValueError, OSError) as e:
        print(f"local-launcher: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({n: t.state for n, t in result.tasks.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
