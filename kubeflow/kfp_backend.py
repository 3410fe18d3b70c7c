"""What the open-source KFP v2 backend does around a container task.

The local launcher (kubeflow/local_launcher.py) applies these rules by default
so that a spec that runs here runs on a real cluster. Each rule names the Go
file of kubeflow/pipelines it reproduces (``backend/src/v2/``, read at tags
2.0.0, 2.5.0, 2.14.0 and master):

* ``metadata/converter.go``: StructValueToMLMDValue (how the launcher stores
  an executor's output metadata as MLMD custom properties: numbers as doubles,
  bools as ints, lists and structs wrapped, null refused) and toRuntimeArtifact
  (how the driver reads them back: no unwrapping, ``name`` = the MLMD id).
* ``metadata/client.go``: GetOutputArtifactsByExecutionId reads input
  artifacts back with ``Schema: ""``, so every input's type is an empty
  instance schema; RecordArtifact adds ``display_name`` (and, from 2.5,
  ``store_session_info``).
* ``driver/driver.go``: provisionOutputs (output URIs
  ``<root>/<pipeline>/<run>/<task>/<uuid>/<key>``, the uuid from 2.4; the
  ``executor-logs`` output from 2.5; ``outputFile`` in the pod), getFingerPrint
  and ``cacheutils/cache.go`` GenerateCacheKey (the cache key).
* ``component/launcher_v2.go``: addDefaultParams, uploadOutputArtifacts and
  mergeRuntimeArtifacts (declared keys only, a reported URI replaces the
  provisioned one, metadata merged), getExecutorOutputFile (strict parse),
  collectOutputParameters.
* ``compiler/visitor.go``: only container and importer executors compile.
* ``driver/driver.go`` Container (2.5; ``driver/container.go`` from 2.14) and
  ``expression/expression.go`` Condition: a task's ``triggerPolicy.condition``
  (CEL on the resolved inputs; false: no outputs, executor skipped), and
  ``compiler/argocompiler/dag.go`` depends (``<task>.Succeeded``: the tasks after
  a skipped one are omitted) and importerTask (no condition on an importer):
  kubeflow/kfp_conditions.py.

No lifecycle hook (``preCacheCheck``) is run anywhere in that backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from kubeflow.local_metadata import NotEmulated

Artifacts = Dict[str, List[Dict[str, Any]]]
_PLACEHOLDER = re.compile(r"\{\{\$(.*?)\}\}")

EXECUTOR_LOGS = "executor-logs"
# driver.go provisionOutputs: the type the driver gives the logs output.
EXECUTOR_LOGS_TYPE = {"schemaTitle": "system.Artifact"}
# launcher_v2.go OutputMetadataFilepath (2.0-2.14): a path inside the pod.
POD_OUTPUT_FILE = "tmp/kfp_outputs/output_metadata.json"
POD_PARAMETER_DIR = "tmp/kfp/outputs"
# What RecordArtifact stores as store_session_info for a default MinIO install
# (config/env.go; a Go struct marshalled without json tags).
SESSION_INFO = json.dumps({"Provider": "minio", "Params": {
    "accessKeyKey": "accesskey", "disableSSL": "true", "endpoint": "minio-service.kubeflow:9000",
    "fromEnv": "false", "region": "minio", "secretKeyKey": "secretkey",
    "secretName": "mlpipeline-minio-artifact"}}, separators=(",", ":"))
# visitor.go, for a ResolverSpec executor.
RESOLVER_REFUSED = "non-container and non-importer executor not implemented"


class BackendError(RuntimeError):
    """Something the real backend refuses (the message quotes it)."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """Which backend the local launcher behaves like.

    ``kind`` "kfp": open-source KFP v2 at ``version`` (behaviour changes at 2.4,
    2.5 and 2.15 are applied by version); "vertex": Vertex AI Pipelines (typed
    inputs, metadata as written, the pre-cache hook, resolver tasks).
    """

    kind: str = "kfp"
    version: Tuple[int, int] = (2, 14)

    @classmethod
    def parse(cls, text: str) -> "Backend":
        """'kfp' | 'kfp-2.5' | 'vertex' -> Backend."""
        if text == "vertex":
            return cls("vertex")
        kind, _, version = text.partition("-")
        if kind != "kfp":
            raise ValueError(f"backend must be vertex, kfp or kfp-<major>.<minor>, got {text!r}")
        if not version:
            return cls()
        try:
            major, minor = (int(x) for x in version.split("."))
        except ValueError:
            raise ValueError(f"backend version must be <major>.<minor>, got {version!r}") from None
        return cls("kfp", (major, minor))

    @property
    def oss(self) -> bool:
        return self.kind == "kfp"

    @property
    def execution_dirs(self) -> bool:  # a uuid folder per execution (2.4+)
        return self.oss and self.version >= (2, 4)

    @property
    def publish_logs(self) -> bool:  # the executor-logs output (2.5+, default on)
        return self.oss and self.version >= (2, 5)

    @property
    def session_info(self) -> bool:  # store_session_info in recorded metadata (2.5+)
        return self.oss and self.version >= (2, 5)

    @property
    def outputs_named(self) -> bool:  # output artifacts carry name=<key>; outputFile in the task root (2.15+)
        return self.oss and self.version >= (2, 15)

    def __str__(self) -> str:
        return "vertex" if not self.oss else f"kfp-{self.version[0]}.{self.version[1]}"


# ------------------------------------------------------- MLMD round trip

def to_mlmd(metadata: Dict[str, Any], key: str, backend: Backend) -> Dict[str, Dict[str, Any]]:
    """An output's metadata as the launcher records it (custom properties in MLMD)."""
    stored = {}
    for name, value in metadata.items():
        if value is None:  # converter.go: "TODO: support null"
            raise BackendError(f"output {key!r}: metadata {name!r} is null, which the launcher "
                               "cannot store (unknown/unsupported value type)")
        if isinstance(value, bool):
            stored[name] = {"int_value": int(value)}
        elif isinstance(value, (int, float)):
            stored[name] = {"double_value": float(value)}
        elif isinstance(value, str):
            stored[name] = {"string_value": value}
        elif isinstance(value, list):
            stored[name] = {"struct_value": {"list": value}}
        elif isinstance(value, dict):
            stored[name] = {"struct_value": {"struct": value}}
        else:
            raise BackendError(f"output {key!r}: metadata {name!r} has type {type(value).__name__}")
    stored.setdefault("display_name", {"string_value": key})
    if backend.session_info:
        stored.setdefault("store_session_info", {"string_value": SESSION_INFO})
    return stored


def from_mlmd(custom_properties: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """converter.go toRuntimeArtifact: stored values back as JSON, nothing unwrapped."""
    out = {}
    for name, value in custom_properties.items():
        (kind, raw), = value.items()
        out[name] = float(raw) if kind in ("int_value", "double_value") else raw
    return out


def input_artifact(artifact_id: int, uri: str, custom_properties: Dict[str, Any]) -> Dict[str, Any]:
    """A RuntimeArtifact as the driver puts it into ExecutorInput.inputs."""
    return {"name": str(artifact_id), "type": {"instanceSchema": ""}, "uri": uri,
            "metadata": from_mlmd(custom_properties)}


# ------------------------------------------------------------ parameters

def parameter_text(value: Any) -> str:
    """metadata/converter.go PbValueToText: a non-string value for a STRING input."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _go_float(float(value))
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _go_float(x: float) -> str:
    """strconv.FormatFloat(x, 'f', -1, 64): the shortest digits, never an exponent."""
    import numpy as np
    return np.format_float_positional(x, trim="-")


def typed_parameters(params: Dict[str, Any], definitions: Dict[str, Any]) -> Dict[str, Any]:
    """The driver's deferred type conversion (resolveInputs)."""
    out = dict(params)
    for key, value in params.items():
        declared = definitions.get(key, {}).get("parameterType")
        if declared == "STRING" and not isinstance(value, str):
            out[key] = parameter_text(value)
    return out


def with_defaults(params: Dict[str, Any], definitions: Dict[str, Any]) -> Dict[str, Any]:
    """launcher_v2.go addDefaultParams: defaults reach {{$}} but not the cache key."""
    out = dict(params)
    for key, spec in definitions.items():
        if key not in out and "defaultValue" in spec:
            out[key] = spec["defaultValue"]
    return out


# ------------------------------------------------------------- caching

def vertex_cache_key(component, container, params, inputs) -> str:
    """Vertex: the whole component, the parameters after its pre-cache hook, inputs by name."""
    doc = {"component": component, "container": container, "parameters": params,
           "inputs": {k: [a["name"] for a in v] for k, v in inputs.items()}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def vertex_artifact_name(run_id: str, task: str, key: str) -> str:
    # KFP/Vertex give every artifact a unique resource name; TFX maps it to an id.
    return f"local/artifacts/{run_id}.{task}.{key}"


def cache_key(input_names: Dict[str, list], params: Dict[str, Any], outputs: Artifacts,
              output_parameters: Dict[str, Any],
              image: str, command_and_args: list) -> str:
    """cacheutils/cache.go GenerateCacheKey: input artifacts by MLMD id, parameter
    values, output specs without URIs, output parameter types, image and the raw
    (unsubstituted) command line; sha256 of the JSON."""
    doc = {
        "inputArtifactNames": {k: {"artifactNames": v} for k, v in input_names.items()},
        "inputParameterValues": params,
        "outputArtifactsSpec": {k: {f: a[0][f] for f in ("name", "type", "metadata") if a[0].get(f)}
                                for k, a in outputs.items()},
        "outputParametersSpec": {k: v.get("parameterType", "") for k, v in output_parameters.items()},
        "containerSpec": {"image": image, "cmdArgs": list(command_and_args)},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------- executor output

def merge_outputs(outputs: Dict[str, list], executor_output: Dict[str, Any], root: str,
                  backend: Backend) -> None:
    """launcher_v2.go uploadOutputArtifacts/mergeRuntimeArtifacts, in place.

    Only the keys of ``outputs`` (declared + executor-logs) are looked at; keys
    the executor reports beyond them are ignored, missing ones keep the
    provisioned artifact. A reported URI replaces the provisioned one but must
    stay under the pipeline root (the bucket prefix check).
    """
    reported = executor_output.get("artifacts", {})
    for key, artifacts in outputs.items():
        if key not in reported or (backend.outputs_named and key == EXECUTOR_LOGS):
            continue
        for mine, theirs in zip(artifacts, reported[key].get("artifacts", [])):
            uri = theirs.get("uri")
            if uri:
                if backend.oss and not _under(uri, root):
                    raise BackendError(f"failed to upload output artifact {key!r}: URI {uri} "
                                       f"does not have expected bucket prefix {root}")
                mine["uri"] = uri
            mine["metadata"] = {**(mine.get("metadata") or {}), **(theirs.get("metadata") or {})}


def _under(uri: str, root: str) -> bool:
    root = root.rstrip("/") + "/"
    return uri.startswith(root)


def output_parameter(key: str, executor_output: Dict[str, Any], path: str,
                     declared_type: Optional[str]) -> Any:
    """collectOutputParameters: ExecutorOutput.parameterValues wins, else the file."""
    values = executor_output.get("parameterValues", {})
    if key in values:
        return values[key]
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise BackendError(f"failed to read output parameter name={key} from {path}") from None
    if declared_type in ("NUMBER_INTEGER", "NUMBER_DOUBLE"):
        return float(text)
    if declared_type == "BOOLEAN":
        return text.strip() == "true"
    if declared_type in ("LIST", "STRUCT"):
        return json.loads(text)
    return text


# ------------------------------------------------------------ the launcher

def provision_output(artifact_type: Dict[str, Any], task_root: str, key: str,
                     spec: Dict[str, Any], backend: Backend) -> Dict[str, Any]:
    """An output as driver.go provisionOutputs makes it (Vertex: named like a resource)."""
    artifact = {"type": artifact_type, "uri": os.path.join(task_root, key)}
    if spec.get("metadata"):
        artifact["metadata"] = dict(spec["metadata"])
    if backend.outputs_named:
        artifact["name"] = key
    elif not backend.oss:
        artifact["name"] = "local/artifacts/" + hashlib.sha1(artifact["uri"].encode()).hexdigest()[:16]
    return artifact


def executor_input(inputs: Artifacts, params: Dict[str, Any], outputs: Artifacts,
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


def substitute(arg: str, executor_input: Dict[str, Any], task: str) -> str:
    """launcher_v2.go getPlaceholders; a local root's URI is its own local path."""
    def one(m: re.Match) -> str:
        expr = m.group(1)
        if expr == "":
            return json.dumps(executor_input, sort_keys=True)
        p = re.fullmatch(r"\.inputs\.parameters\['([^']+)'\]", expr)
        if p:
            return parameter_text(executor_input["inputs"]["parameterValues"][p.group(1)])
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


def read_executor_output(path: str, task: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        return {}
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    with open(path) as f:
        text = f.read()
    try:
        proto = json_format.Parse(text, pipeline_spec_pb2.ExecutorOutput())
    except json_format.ParseError as e:
        # launcher_v2.go parses it strictly: an unknown field fails the task.
        raise BackendError(f"task {task}: {path} is not an ExecutorOutput: {e}") from None
    return json_format.MessageToDict(proto)
