"""Every executor's command in the compiled spec: TFX's Kubeflow V2 entry point,
behind a shim for what the open-source KFP v2 backend hands it.

  python -m kubeflow.executor_entrypoint --executor_class_path C
      --json_serialized_invocation_args '{{$}}' --json_serialized_inputs_spec_args J
      --json_serialized_outputs_spec_args K [--pre_cache_check_module M] [beam args...]

TFX's ``kubeflow_v2_run_executor`` was written for Vertex AI Pipelines. The
open-source backend (kubeflow/pipelines ``backend/src/v2``) differs in ways it
does not survive; this module repairs the ExecutorInput, then calls TFX's
``main`` unchanged:

* Input artifacts arrive untyped: the driver reads them back from MLMD with an
  empty schema (``metadata/client.go``, ``Schema: ""``), so every input has
  ``type: {instanceSchema: ""}`` and TFX cannot import its class. The type is
  restored from the component's inputs spec, already in every executor's args.
* Metadata read back from MLMD is wrapped: the launcher stores a list as
  ``{"list": [...]}`` and a struct as ``{"struct": {...}}``
  (``metadata/converter.go``, StructValueToMLMDValue) and adds ``display_name``
  and ``store_session_info``. Wrapped values are unwrapped and the two added
  keys dropped, so an executor sees what its producer wrote.
* Since KFP 2.5 the driver adds an ``executor-logs`` output (type
  ``system.Artifact``) to every container task; TFX imports a class for every
  output and fails. Outputs the component does not declare (compile-time
  ``--json_serialized_outputs_spec_args``) are dropped: the launcher tees the
  process's output into that file itself and keeps declared keys only.
* ``lifecycle.preCacheCheck`` (FileBasedExampleGen's driver, which computes the
  input span and fingerprint) is never run by the open-source backend. When
  the task has one (``--pre_cache_check_module``) and no driver has written the
  ExecutorOutput file yet, it runs here first, as Vertex would have, and the
  metadata it gives the outputs (span, input fingerprint) is merged under the
  executor's in the final ExecutorOutput, as Vertex records both.

Every repair is a no-op on Vertex's ExecutorInput (typed inputs, no extra
output, the driver already ran), so one spec form serves both.

Before any of it, the s3:// locations the arguments name are set up and
checked (components/object_store.py: a wrong secret is one line in the pod's
log), and the process ends through ``object_store.exit_process`` with the real
exit code (tensorflow-io's S3 plugin aborts a normal exit, tensorflow/io#2039).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Dict, List, Optional, Tuple

from components import object_store

TFX_ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
# Keys the open-source launcher adds to every artifact it records in MLMD.
LAUNCHER_METADATA_KEYS = ("display_name", "store_session_info")
# How the launcher wraps non-scalar metadata values in MLMD struct values.
_WRAPPERS = ("list", "struct")


class EntrypointError(ValueError):
    """The ExecutorInput cannot be repaired; the message says what is missing."""


def parse_args(argv: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    """Our flags and TFX's; anything else is a Beam argument, as for TFX."""
    p = argparse.ArgumentParser(prog="python -m kubeflow.executor_entrypoint", allow_abbrev=False)
    p.add_argument("--executor_class_path", required=True)
    p.add_argument("--json_serialized_invocation_args", required=True)
    p.add_argument("--json_serialized_inputs_spec_args", default=None)
    p.add_argument("--json_serialized_outputs_spec_args", default=None)
    p.add_argument("--pre_cache_check_module", default=None)
    return p.parse_known_args(argv)


def repair(executor_input: Dict[str, Any], inputs_spec: Optional[Dict[str, Any]],
           outputs_spec: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The ExecutorInput TFX expects, from the one a KFP driver built (a new dict)."""
    doc = json.loads(json.dumps(executor_input))
    declared_inputs = (inputs_spec or {}).get("artifacts", {})
    for key, listed in doc.get("inputs", {}).get("artifacts", {}).items():
        for artifact in listed.get("artifacts", []):
            if not _has_type(artifact.get("type")):
                spec = declared_inputs.get(key)
                if not spec or not _has_type(spec.get("artifactType")):
                    raise EntrypointError(
                        f"input artifact {key!r} arrived without a type and the component's "
                        f"inputs spec does not declare it (declared: {sorted(declared_inputs)})")
                artifact["type"] = spec["artifactType"]
            artifact["metadata"] = unwrap_metadata(artifact.get("metadata") or {})
    if outputs_spec is not None:
        declared = set(outputs_spec.get("artifacts", {}))
        outputs = doc.get("outputs", {}).get("artifacts", {})
        for key in sorted(set(outputs) - declared):
            del outputs[key]
    return doc


def _has_type(type_schema: Optional[Dict[str, Any]]) -> bool:
    if not type_schema:
        return False
    return bool(type_schema.get("schemaTitle") or (type_schema.get("instanceSchema") or "").strip())


def unwrap_metadata(metadata: Dict[str, Any]) -> Dict[str, Any]:
    """Undoes the launcher's MLMD round trip: ``{"list": x}``/``{"struct": x}`` -> x,
    launcher-added keys dropped. Every non-scalar value the launcher stores is
    wrapped, so a one-key dict with a wrapper name is always a wrapper."""
    out = {}
    for key, value in metadata.items():
        if key in LAUNCHER_METADATA_KEYS:
            continue
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _WRAPPERS:
            value = next(iter(value.values()))
        out[key] = value
    return out


def _run_pre_cache_check(module: str, args: argparse.Namespace,
                         output_file: str) -> Optional[Dict[str, Any]]:
    """Runs the driver a Vertex pre-cache hook would have run, unless it already
    did; returns the ExecutorOutput it wrote (None if it did not run here)."""
    import tensorflow as tf
    if not output_file or tf.io.gfile.exists(output_file):
        return None  # no place to write, or Vertex ran the hook
    driver = importlib.import_module(module)
    driver.main(argparse.Namespace(
        json_serialized_invocation_args=args.json_serialized_invocation_args,
        json_serialized_inputs_spec_args=args.json_serialized_inputs_spec_args))
    with tf.io.gfile.GFile(output_file) as f:
        return json.load(f)


def merge_driver_metadata(executor_output: Dict[str, Any], driver_output: Dict[str, Any]) -> Dict[str, Any]:
    """The executor's ExecutorOutput with the driver's output metadata under it."""
    merged = json.loads(json.dumps(executor_output))
    for key, listed in driver_output.get("artifacts", {}).items():
        theirs = listed.get("artifacts", [])
        mine = merged.get("artifacts", {}).get(key, {}).get("artifacts", [])
        for artifact, driver_artifact in zip(mine, theirs):
            artifact["metadata"] = {**driver_artifact.get("metadata", {}), **artifact.get("metadata", {})}
    return merged


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        object_store.prepare(object_store.buckets_in(" ".join(argv)))
    except object_store.ObjectStoreError as e:
        print(f"executor_entrypoint: error: {e}", file=sys.stderr)
        return 2
    args, beam_args = parse_args(argv)
    try:
        executor_input = json.loads(args.json_serialized_invocation_args)
        inputs_spec = json.loads(args.json_serialized_inputs_spec_args) \
            if args.json_serialized_inputs_spec_args else None
        outputs_spec = json.loads(args.json_serialized_outputs_spec_args) \
            if args.json_serialized_outputs_spec_args else None
    except ValueError as e:
        print(f"executor_entrypoint: error: an argument is not JSON: {e}", file=sys.stderr)
        return 2
    try:
        fixed = repair(executor_input, inputs_spec, outputs_spec)
    except EntrypointError as e:
        print(f"executor_entrypoint: error: {e}", file=sys.stderr)
        return 2
    args.json_serialized_invocation_args = json.dumps(fixed)
    output_file = fixed.get("outputs", {}).get("outputFile", "")
    driver_output = _run_pre_cache_check(args.pre_cache_check_module, args, output_file) \
        if args.pre_cache_check_module else None
    tfx_entry = importlib.import_module(TFX_ENTRYPOINT)
    tfx_args = argparse.Namespace(
        executor_class_path=args.executor_class_path,
        json_serialized_invocation_args=args.json_serialized_invocation_args,
        json_serialized_inputs_spec_args=args.json_serialized_inputs_spec_args)
    tfx_entry.main((tfx_args, beam_args))
    if driver_output:
        import tensorflow as tf
        with tf.io.gfile.GFile(output_file) as f:
            final = json.load(f)
        with tf.io.gfile.GFile(output_file, "w") as f:
            json.dump(merge_driver_metadata(final, driver_output), f)
    return 0


if __name__ == "__main__":
    try:
        code = main()
    except SystemExit as e:  # absl/argparse exits; keep their code
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # what the interpreter would print and return
        import traceback
        traceback.print_exc()
        code = 1
    object_store.exit_process(code)
