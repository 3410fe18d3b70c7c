"""`retrain compile | submit | schedule`: the Kubeflow commands.

  retrain compile --output pipeline.yaml --image IMAGE --pipeline-root URI [--images URI]
                  [--target kfp|vertex] [--beam-runner direct|dataflow ...]
  retrain submit --host URL [--force] pipeline.yaml
  retrain schedule --host URL --cron "0 0 3 * * *" pipeline.yaml

pipeline/cli.py wires these in with ``register(subparsers)``. Handlers return
the exit code: 0 done, 2 bad input, unreachable host or refused login (one
``retrain: error: ...`` line on stderr), 1 anything else failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Callable, Dict, List

from pipeline import beam_flags, config_flags

Handler = Callable[[argparse.Namespace], int]
# PipelineConfig fields `retrain compile` takes as flags (pipeline/config_flags.py);
# --beam-workers is added beside --beam-runner.
COMPILE_FLAGS = ("pipeline_name", "backbone", "min_accuracy", "max_accuracy_drop", "eval_percent",
                 "min_images_per_class", "epochs", "seed", "trainable_blocks", "cold_start", "enable_cache",
                 "class_weights", "max_class_recall_drop")


def register(subparsers) -> Dict[str, Handler]:
    c = subparsers.add_parser("compile", help="compile the pipeline to a KFP v2 pipeline.yaml")
    c.add_argument("--output", required=True, help="pipeline spec to write (.yaml)")
    c.add_argument("--image", required=True, help="component image (see kubeflow/Dockerfile)")
    c.add_argument("--pipeline-root", required=True, help="artifact root, e.g. gs://bucket/retrain")
    c.add_argument("--images", default=None,
                   help="<label>/<file> folder or CSV manifest as pods see it "
                        "(default: <pipeline-root>/images)")
    c.add_argument("--labels", default=None,
                   help="comma-separated class names; skips listing --images from this machine")
    c.add_argument("--serving-dir", default=None, help="where versions are pushed "
                   "(default: <pipeline-root>/serving)")
    c.add_argument("--target", choices=["kfp", "vertex"], default="kfp",
                   help="kfp: open-source Kubeflow Pipelines v2, the previous run's blessed model "
                        "and feature cache are found through a registry under the pipeline root "
                        "(its backend rejects TFX Resolver tasks); vertex: Vertex AI Pipelines, "
                        "TFX Resolver nodes over its metadata (default: kfp)")
    config_flags.add_flags(c, COMPILE_FLAGS, help_texts={
        "enable_cache": "compile with KFP caching on (scheduled runs always turn it off)"})
    c.add_argument("--beam-runner", choices=["direct", "dataflow"], default="direct")
    config_flags.add_flags(c, [config_flags.BEAM_WORKERS], help_texts={
        config_flags.BEAM_WORKERS: "direct: worker processes per Beam step (>1: multi_processing)"})
    c.add_argument("--dataflow-project", default=None)
    c.add_argument("--dataflow-region", default=None)
    c.add_argument("--temp-location", default=None,
                   help="dataflow: gs:// temp folder (default: <pipeline-root>/tmp)")
    beam_flags.add_beam_arg(c)
    c.add_argument("--s3-secret", default=None, metavar="NAME",
                   help="Kubernetes secret the pods take AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                        "from (a default KFP install's MinIO: mlpipeline-minio-artifact)")
    c.add_argument("--s3-secret-keys", default="accesskey,secretkey", metavar="ACCESS,SECRET",
                   help="the two keys in that secret (default: accesskey,secretkey)")
    c.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="AWS_ENDPOINT_URL for the pods, e.g. http://minio-service.kubeflow:9000")
    c.add_argument("--s3-region", default=None, help="AWS_REGION for the pods")

    for name, text in (("submit", "run a compiled pipeline.yaml once on Kubeflow Pipelines"),
                       ("schedule", "run a compiled pipeline.yaml on a cron schedule")):
        p = subparsers.add_parser(name, help=text)
        p.add_argument("spec", help="pipeline.yaml from `retrain compile`")
        p.add_argument("--host", required=True, help="KFP API URL, e.g. http://localhost:8888")
        p.add_argument("--pipeline-root", default=None,
                       help="artifact root (default: the one compiled into the spec)")
        p.add_argument("--experiment", default="Default")
        p.add_argument("--namespace", default=None, help="multi-user Kubeflow namespace")
        p.add_argument("--token-env", default=None, metavar="VAR",
                       help="environment variable holding a bearer token (never printed)")
        p.add_argument("--timeout", type=float, default=15.0, help="seconds per HTTP request")
        if name == "submit":
            p.add_argument("--run-name", default=None)
            p.add_argument("--force", action="store_true",
                           help="run in full although nothing changed since the last completed "
                                "run (sets the spec's pipeline parameter force=1; --target kfp)")
        else:
            p.add_argument("--cron", required=True,
                           help="6 fields, seconds first: '0 0 3 * * *' is 03:00 daily")
            p.add_argument("--name", default=None, help="recurring run name")
    return {"compile": cmd_compile, "submit": cmd_submit, "schedule": cmd_schedule}


def _fail(message: str, code: int = 2) -> int:
    print(f"retrain: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def beam_args(args: argparse.Namespace, pipeline_root: str) -> List[str]:
    from kubeflow.runner import KubeflowError, join_uri
    from pipeline.config import direct_beam_args
    if args.beam_runner == "direct":
        try:
            direct = direct_beam_args(args.beam_workers)
            return direct + beam_flags.check_passthrough(args.beam_arg, direct)
        except ValueError as e:
            raise KubeflowError(str(e)) from None
    missing = [flag for flag, value in (("--dataflow-project", args.dataflow_project),
                                        ("--dataflow-region", args.dataflow_region)) if not value]
    if missing:
        raise KubeflowError(f"--beam-runner dataflow needs {' and '.join(missing)}")
    temp = args.temp_location or join_uri(pipeline_root, "tmp")
    if not temp.startswith("gs://"):
        raise KubeflowError(f"Dataflow needs a gs:// temp location, got {temp} "
                            "(set --temp-location or a gs:// --pipeline-root)")
    # Dataflow workers run the Transform code and backbone too: same image.
    dataflow = ["--runner=DataflowRunner", f"--project={args.dataflow_project}",
                f"--region={args.dataflow_region}", f"--temp_location={temp}",
                f"--sdk_container_image={args.image}", "--experiments=use_runner_v2"]
    try:
        return dataflow + beam_flags.check_passthrough(args.beam_arg, dataflow)
    except ValueError as e:
        raise KubeflowError(str(e)) from None


def _label_names(args, config):
    """Labels from --labels, or listed from --images (which must be readable here)."""
    from pipeline import preflight
    from kubeflow.runner import KubeflowError
    if args.labels:
        labels = sorted({x.strip() for x in args.labels.split(",") if x.strip()})
        if len(labels) < 2:
            raise KubeflowError(f"--labels needs at least 2 class names, got {args.labels!r}")
        from components import image_io
        problems = [image_io.label_problem(label) for label in labels]
        if any(problems):  # e.g. a line break: labels.txt would gain a class
            raise KubeflowError(f"--labels: {next(p for p in problems if p)}")
        return dataclasses.replace(config, label_names=tuple(labels))
    from components import object_store
    try:
        object_store.prepare([config.images])  # s3://: login checked, tf.io.gfile knows s3://
    except object_store.ObjectStoreError as e:
        raise KubeflowError(f"cannot list --images from this machine: {e}; or pass --labels a,b,c") from None
    import tensorflow as tf
    try:
        # isdir() in scan() reads an unknown scheme as "missing"; exists() says why.
        tf.io.gfile.exists(config.images)
        return preflight.scan(config)
    except tf.errors.UnimplementedError:
        scheme = config.images.split("://")[0]
        raise KubeflowError(
            f"this environment cannot read {scheme}:// paths ({config.images}); "
            "pass --labels a,b,c") from None
    except tf.errors.OpError as e:
        raise KubeflowError(f"cannot list {config.images} from this machine "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:150]}); give it read "
                            "access or pass --labels a,b,c") from None


def _s3_access(args):
    """kubeflow.pod_env.S3Access from the --s3-* flags, or None."""
    from kubeflow import pod_env
    from kubeflow.runner import KubeflowError
    if not args.s3_secret:
        if args.s3_endpoint or args.s3_region:
            raise KubeflowError("--s3-endpoint and --s3-region need --s3-secret (the pods' credentials)")
        return None
    keys = [k.strip() for k in args.s3_secret_keys.split(",")]
    if len(keys) != 2 or not all(keys):
        raise KubeflowError(f"--s3-secret-keys must be ACCESS,SECRET, got {args.s3_secret_keys!r}")
    if args.s3_endpoint and not args.s3_endpoint.startswith(("http://", "https://")):
        raise KubeflowError(f"--s3-endpoint must be an http:// or https:// URL, got {args.s3_endpoint!r}")
    return pod_env.S3Access(secret=args.s3_secret, access_key=keys[0], secret_key=keys[1],
                            endpoint=args.s3_endpoint, region=args.s3_region)


def cmd_compile(args: argparse.Namespace) -> int:
    from pipeline import preflight
    from pipeline.config import PipelineConfig
    from kubeflow import runner
    root = args.pipeline_root.rstrip("/") if "://" in args.pipeline_root \
        else os.path.abspath(args.pipeline_root)
    images = args.images or runner.join_uri(root, "images")
    if "://" not in images:
        images = os.path.abspath(images)
    try:
        flags = config_flags.values(args, COMPILE_FLAGS)
    except ValueError as e:  # NaN or inf in a float flag
        return _fail(e)
    try:
        runner.check_output_path(args.output)
        base = PipelineConfig(images=images, workdir=root, **flags)
        config = runner.kubeflow_config(base, root, args.serving_dir, beam_args(args, root),
                                        target=args.target)
        problem = config.validate()
        if problem:
            return _fail(problem)
        config = _label_names(args, config)
        path = runner.compile_pipeline(config, args.output, args.image, _s3_access(args))
    except (runner.KubeflowError, preflight.PreflightError) as e:
        return _fail(e)
    except Exception as e:  # a compiler failure: name it, keep it on one line
        return _fail(f"compile failed: {type(e).__name__}: {e}", 1)
    print(path)
    return 0


def _token(args) -> str | None:
    """The bearer token named by --token-env: surrounding whitespace stripped (a
    CRLF token file), refused if it still holds a control character or anything
    an HTTP header cannot carry. Messages name the variable, never the value."""
    if not args.token_env:
        return None
    from kubeflow.runner import KubeflowError
    token = (os.environ.get(args.token_env) or "").strip()
    if not token:
        raise KubeflowError(f"--token-env {args.token_env}: that environment variable is empty or unset")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in token):
        raise KubeflowError(f"--token-env {args.token_env}: the token holds a control character "
                            "(a line break inside it?); an HTTP header cannot carry it")
    if not all(0x21 <= ord(c) <= 0x7e for c in token):
        raise KubeflowError(f"--token-env {args.token_env}: the token holds a space or a non-ASCII "
                            "character; bearer tokens are printable ASCII (RFC 6750)")
    return token


def _timeout(args) -> float:
    """--timeout, refused unless a positive finite number (NaN passes any range check)."""
    from kubeflow.runner import KubeflowError
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise KubeflowError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    return args.timeout


def _run_arguments(args: argparse.Namespace) -> Dict[str, int]:
    from components.contracts import FORCE_PARAMETER
    return {FORCE_PARAMETER: 1} if args.force else {}


def cmd_submit(args: argparse.Namespace) -> int:
    from kubeflow import kfp_client
    from kubeflow.runner import KubeflowError
    try:
        run_id = kfp_client.submit(
            args.spec, args.host, pipeline_root=args.pipeline_root, run_name=args.run_name,
            experiment=args.experiment, namespace=args.namespace, token=_token(args),
            timeout=_timeout(args), arguments=_run_arguments(args))
    except KubeflowError as e:
        return _fail(e)
    print(f"run {run_id}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from kubeflow import kfp_client
    from kubeflow.runner import KubeflowError
    try:
        recurring_id = kfp_client.schedule(
            args.spec, args.host, cron=args.cron, name=args.name,
            pipeline_root=args.pipeline_root, experiment=args.experiment,
            namespace=args.namespace, token=_token(args), timeout=_timeout(args))
    except KubeflowError as e:
        return _fail(e)
    print(f"recurring run {recurring_id}")
    return 0
