"""Which Beam runner a pipeline's Beam steps use: the flags `retrain run` and
`retrain compile` share, and how to read a runner back out of Beam arguments.

  --beam-arg=--x=y          any Beam pipeline option, passed through (repeatable)
  --beam-runner portable --job-endpoint HOST:PORT [--environment-type T] [--environment-config C]
                            a Beam job service: Flink's or Spark's job server, or Beam's own
                            (apache_beam.runners.portability.local_job_service_main)

Bad combinations raise ValueError with one line naming the flag to fix. TF-free,
Beam-free (the CLI checks flags before anything heavy loads).
"""

from __future__ import annotations

import argparse
import re
from typing import Iterable, List, Optional, Sequence

# Beam's SDK harness environments for a portable job (Beam's PortableOptions):
# DOCKER starts the image on each worker machine; EXTERNAL hands work to a
# worker pool already running (worker_pool_main, or a Kubernetes sidecar);
# PROCESS runs a boot command on each worker; LOOPBACK runs them in this process.
ENVIRONMENT_TYPES = ("DOCKER", "EXTERNAL", "PROCESS", "LOOPBACK")
DEFAULT_ENVIRONMENT_TYPE = "DOCKER"  # Beam's default, and what Flink and Spark clusters run

# TFX stages an sdist of itself for remote workers unless a dependency flag is
# set (tfx/utils/dependency_utils.py): about 1.2 s and 42 MB of /tmp per Beam
# step per run. EXTERNAL and PROCESS workers never install it (their environment
# must hold this project already), so the shorthand sets the flag they ignore.
PREPARED_WORKERS_NO_STAGING = "--sdk_container_image=unused:workers-run-in-a-prepared-environment"

# Beam's portable client opens the job's state and message streams with
# --job_server_timeout (default 60 s) as their deadline, so any Beam step longer
# than that fails with DEADLINE_EXCEEDED though the job goes on (apache/beam#35867,
# seen here on an Evaluator under load). Runners other than the DirectRunner get a
# day unless a --beam-arg sets it; requests to a dead job service still fail then.
JOB_SERVER_TIMEOUT = "--job_server_timeout=86400"

_OPTION = re.compile(r"^--([A-Za-z][A-Za-z0-9_]*)(=.*)?$", re.S)
_ENDPOINT = re.compile(r"^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):([0-9]{1,5})$")
# Runners whose workers run in this process or its subprocesses: they see this
# process's environment variables and local folders.
_LOCAL_RUNNERS = {"", "direct", "directrunner", "bundlebaseddirectrunner", "switchingdirectrunner"}


def add_beam_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                        help="extra Beam pipeline option, passed through (repeatable), e.g. "
                             "--beam-arg=--runner=FlinkRunner --beam-arg=--flink_master=host:8081")


def add_portable_flags(parser: argparse.ArgumentParser) -> None:
    """--job-endpoint, --environment-type, --environment-config (with --beam-runner portable)."""
    parser.add_argument("--job-endpoint", default=None, metavar="HOST:PORT",
                        help="portable: the Beam job service (Flink/Spark job server, or "
                             "Beam's local_job_service_main)")
    parser.add_argument("--environment-type", default=None, choices=ENVIRONMENT_TYPES,
                        help="portable: where Beam workers run (default: DOCKER, which needs "
                             "--environment-config IMAGE)")
    parser.add_argument("--environment-config", default=None, metavar="CONFIG",
                        help="portable: DOCKER: an image holding this project (kubeflow/Dockerfile); "
                             "EXTERNAL: the worker pool's HOST:PORT; PROCESS: Beam's JSON boot command")


def option(beam_args: Sequence[str], name: str) -> Optional[str]:
    """The value of Beam option `name` (the last one given, as Beam reads them), or None.
    Takes both --name=value and --name value forms."""
    found = None
    for i, arg in enumerate(beam_args):
        if arg == f"--{name}" and i + 1 < len(beam_args):
            found = beam_args[i + 1]
        elif arg.startswith(f"--{name}="):
            found = arg.split("=", 1)[1]
    return found


def workers_are_local(beam_args: Sequence[str]) -> bool:
    """True when Beam workers run in this process or its subprocesses (the
    DirectRunner, or any runner with LOOPBACK workers): they share its
    environment and local disk. False for a job service's or cluster's workers."""
    runner = (option(beam_args, "runner") or "").lower()
    if runner in _LOCAL_RUNNERS:
        return True
    return (option(beam_args, "environment_type") or "").upper() == "LOOPBACK"


def check_passthrough(items: Iterable[str], set_here: Sequence[str] = ()) -> List[str]:
    """--beam-arg values, checked: each one --name or --name=value, none repeating an
    option that `set_here` (the arguments other flags produce) already sets."""
    items = list(items)
    taken = {_OPTION.match(a).group(1) for a in set_here if _OPTION.match(a)}
    for item in items:
        match = _OPTION.match(item)
        if not match or any(ord(c) < 0x20 for c in item):
            raise ValueError(f"--beam-arg must look like --name=value (one Beam option), got {item!r}")
        if match.group(1) in taken:
            raise ValueError(f"--beam-arg={item} sets --{match.group(1)}, which another flag "
                             "already sets; give it once")
    return items


def _endpoint(flag: str, value: Optional[str]) -> str:
    match = _ENDPOINT.match(value or "")
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError(f"{flag} must be HOST:PORT (port 1-65535), got {value!r}")
    return value


def portable_beam_args(job_endpoint: Optional[str], environment_type: Optional[str],
                       environment_config: Optional[str]) -> List[str]:
    """Beam options for a job service at `job_endpoint` (--beam-runner portable)."""
    if not job_endpoint:
        raise ValueError("--beam-runner portable needs --job-endpoint HOST:PORT (the Beam job service)")
    out = ["--runner=PortableRunner", f"--job_endpoint={_endpoint('--job-endpoint', job_endpoint)}"]
    kind = environment_type or DEFAULT_ENVIRONMENT_TYPE
    out.append(f"--environment_type={kind}")
    if kind == "LOOPBACK":
        if environment_config:
            raise ValueError("--environment-type LOOPBACK takes no --environment-config "
                             "(its workers run in this process)")
        return out + [PREPARED_WORKERS_NO_STAGING]
    if not environment_config:
        needs = {"DOCKER": "an image holding this project (kubeflow/Dockerfile), or "
                           "--environment-type EXTERNAL with a worker pool's HOST:PORT",
                 "EXTERNAL": "the worker pool's HOST:PORT",
                 "PROCESS": 'Beam\'s JSON boot command, e.g. {"command": "/opt/apache/beam/boot"}'}
        raise ValueError(f"--environment-type {kind} needs --environment-config: {needs[kind]}")
    if any(ord(c) < 0x20 for c in environment_config):
        raise ValueError("--environment-config holds a control character (a line break?)")
    if kind == "DOCKER":  # the image also tells TFX its code is there: no sdist staging
        return out + [f"--sdk_container_image={environment_config}"]
    if kind == "EXTERNAL":
        _endpoint("--environment-config (EXTERNAL)", environment_config)
    return out + [f"--environment_config={environment_config}", PREPARED_WORKERS_NO_STAGING]


def from_run_flags(args: argparse.Namespace, workers_default: int) -> List[str]:
    """run_beam_args() of `retrain run`'s parsed flags."""
    return run_beam_args(args.beam_runner, args.beam_workers, workers_default, args.job_endpoint,
                         args.environment_type, args.environment_config, args.beam_arg)


def run_beam_args(runner: Optional[str], workers: int, workers_default: int,
                  job_endpoint: Optional[str], environment_type: Optional[str],
                  environment_config: Optional[str], passthrough: Sequence[str]) -> List[str]:
    """`retrain run`'s Beam arguments from its flags (runner None: direct, unless a
    --beam-arg names a --runner, which then owns every other Beam option)."""
    from pipeline.config import direct_beam_args
    portable_flags = [flag for flag, value in (("--job-endpoint", job_endpoint),
                                               ("--environment-type", environment_type),
                                               ("--environment-config", environment_config))
                      if value]
    if runner != "portable" and portable_flags:
        raise ValueError(f"{', '.join(portable_flags)}: only with --beam-runner portable")
    check_passthrough(passthrough)
    own_runner = option(passthrough, "runner")
    if runner and own_runner:
        raise ValueError(f"--beam-runner {runner} and --beam-arg=--runner={own_runner}: give one")
    if (runner == "portable" or own_runner) and workers != workers_default:
        raise ValueError("--beam-workers is for the DirectRunner; a job service or cluster sizes its "
                         "own workers (e.g. --beam-arg=--parallelism=N on Flink)")
    if runner == "portable":
        generated = portable_beam_args(job_endpoint, environment_type, environment_config)
    elif own_runner:
        generated = []
    else:
        return direct_beam_args(workers) + check_passthrough(passthrough, direct_beam_args(workers))
    if option(passthrough, "job_server_timeout") is None:
        generated.append(JOB_SERVER_TIMEOUT)
    return generated + check_passthrough(passthrough, generated)


def unshared_paths_note(beam_args: Sequence[str], paths: Sequence[tuple]) -> Optional[str]:
    """A one-line note when Beam workers run elsewhere and read or write local paths:
    they must see them at the same path (a shared folder), else use gs:// or s3://.
    `paths` holds (flag, path) pairs. None when the workers are local or all paths are URIs."""
    if workers_are_local(beam_args):
        return None
    local = [f"{flag} {path}" for flag, path in paths if path and "://" not in path]
    if not local:
        return None
    return (f"Beam workers elsewhere use {', '.join(local)}: each worker must see "
            "it at the same path (a shared folder), or use gs:// or s3://")
