"""Beam's portable path on this machine: a job service and an external SDK worker
pool on free loopback ports, as Beam ships them.

  python -m apache_beam.runners.portability.local_job_service_main --port P
  python -m apache_beam.runners.worker.worker_pool_main --service_port Q

The pool starts each worker as `python` from PATH (this interpreter's folder is
put first) and imports the project from PYTHONPATH (the repository root), what a
cluster's worker image provides. Used by tests/integration/test_portable_runner.py
and benchmarks/portable_overhead.py; `retrain run --beam-runner portable
--job-endpoint 127.0.0.1:P --environment-type EXTERNAL --environment-config
127.0.0.1:Q` sends the Beam steps there (docs/beam_runners.md). TF-free.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator, List, Tuple

REPO = str(pathlib.Path(__file__).resolve().parent.parent)
JOB_SERVICE = "apache_beam.runners.portability.local_job_service_main"
WORKER_POOL = "apache_beam.runners.worker.worker_pool_main"


@dataclasses.dataclass(frozen=True)
class BeamServices:
    job_port: int
    pool_port: int

    def run_flags(self) -> List[str]:
        """`retrain run` flags that send the Beam steps to these services."""
        return ["--beam-runner", "portable", "--job-endpoint", f"127.0.0.1:{self.job_port}",
                "--environment-type", "EXTERNAL", "--environment-config",
                f"127.0.0.1:{self.pool_port}"]

    def jobs(self) -> List[Tuple[str, str]]:
        """(job name, state) of every job the job service has seen."""
        import grpc
        from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc
        with grpc.insecure_channel(f"127.0.0.1:{self.job_port}") as channel:
            stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
            infos = stub.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=30).job_info
        name = beam_job_api_pb2.JobState.Enum.Name
        return [(i.job_name, name(i.state)) for i in infos]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, name: str, log: pathlib.Path,
                   timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the Beam {name} exited with {proc.returncode}: {tail}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Beam {name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """Ends the process and the workers it started (its own process group)."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running(log_dir: str, timeout: float = 120.0) -> Iterator[BeamServices]:
    """Starts both on free loopback ports (logs in `log_dir`); always stops them,
    and every worker the pool started, on the way out."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RETRAIN_PROGRESS_DIR", None)  # remote workers never see the CLI's scratch folder
    services = BeamServices(job_port=free_port(), pool_port=free_port())
    procs: List[subprocess.Popen] = []
    try:
        for name, module, flag, port in (("job service", JOB_SERVICE, "--port", services.job_port),
                                         ("worker pool", WORKER_POOL, "--service_port",
                                          services.pool_port)):
            log = pathlib.Path(log_dir) / f"{module.rsplit('.', 1)[-1]}.log"
            with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall it
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", module, flag, str(port)], cwd=REPO, env=env,
                    start_new_session=True, stdout=out, stderr=subprocess.STDOUT))
            _wait_for_port(port, procs[-1], name, log, timeout)
        yield services
    finally:
        for proc in reversed(procs):
            _stop(proc)
