"""Submitting and scheduling a compiled pipeline.yaml on Kubeflow Pipelines (v2 API).

Every network call is bounded (the kfp client sets no timeouts of its own), the
host is checked first with one plain request so an unreachable host or a
refused login reads as one clear line, and tokens never appear in messages.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import socket
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, Optional

from kubeflow.runner import KubeflowError, load_spec

HEALTHZ = "/apis/v2beta1/healthz"
DEFAULT_TIMEOUT_S = 15.0
# KFP's scheduler (robfig/cron) takes six fields, seconds first.
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-]+$")


def validate_cron(expr: str) -> str:
    fields = expr.split()
    if expr.startswith("@"):  # @daily, @every 6h: robfig descriptors
        return expr
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        hint = " (5 fields: add the seconds first, e.g. '0 " + expr.strip() + "')" \
            if len(fields) == 5 else ""
        raise KubeflowError(f"--cron needs 6 fields, seconds first, e.g. '0 0 3 * * *' for "
                            f"03:00 every day; got {expr!r}{hint}")
    return " ".join(fields)


def check_host(host: str, token: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """One bounded GET of the v2 healthz endpoint; raises KubeflowError naming the problem."""
    if not re.match(r"^https?://[^/\s]+", host or ""):
        raise KubeflowError(f"--host must be an http(s) URL of the Kubeflow Pipelines API, got {host!r}")
    request = urllib.request.Request(host.rstrip("/") + HEALTHZ)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    # Like the kfp client, ignore *_proxy variables: the host is named explicitly.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read(65536)
    except urllib.error.HTTPError as e:
        raise KubeflowError(_http_problem(host, e.code, e.reason, _read(e), token)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise KubeflowError(f"cannot reach Kubeflow Pipelines at {host}: {_redact(str(reason), token)} "
                            f"(check --host; within {timeout:g} s)") from None
    try:
        json.loads(body or b"{}")
    except ValueError:
        raise KubeflowError(
            f"{host}{HEALTHZ} answered with {kind or 'non-JSON'} content, not the KFP API: is --host "
            "behind a login page? Pass a token with --token-env, or port-forward the ml-pipeline "
            "service and use http://localhost:8888") from None


def submit(spec_path: str, host: str, *, pipeline_root: Optional[str] = None,
           run_name: Optional[str] = None, experiment: str = "Default",
           namespace: Optional[str] = None, token: Optional[str] = None,
           enable_caching: Optional[bool] = None, timeout: float = DEFAULT_TIMEOUT_S,
           arguments: Optional[Dict[str, Any]] = None) -> str:
    """Creates one run from the YAML; returns the run id. `arguments`: pipeline
    parameters the spec declares (e.g. ``force``), checked before any call."""
    spec, root = _spec_and_root(spec_path, pipeline_root)
    undeclared = sorted(set(arguments or {}) - set(spec.root.input_definitions.parameters))
    if undeclared:
        raise KubeflowError(f"{spec_path} declares no pipeline parameter {', '.join(undeclared)}: "
                            "recompile it with `retrain compile --target kfp` from this version")
    run_name = run_name or f"{spec.pipeline_info.name} {datetime.datetime.now():%Y-%m-%d %H:%M:%S}"
    with _client(host, token, namespace, timeout) as client:
        result = client.create_run_from_pipeline_package(
            spec_path, run_name=run_name, experiment_name=experiment, namespace=namespace,
            pipeline_root=root, enable_caching=enable_caching, arguments=arguments or None)
        return result.run_id


def schedule(spec_path: str, host: str, *, cron: str, name: Optional[str] = None,
             pipeline_root: Optional[str] = None, experiment: str = "Default",
             namespace: Optional[str] = None, token: Optional[str] = None,
             timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Creates a recurring run; returns its id.

    One run at a time (max_concurrency=1), no backfill of missed slots
    (no_catchup), and caching off: a cached ExampleGen would never see the
    images added since the last run.
    """
    cron = validate_cron(cron)
    spec, root = _spec_and_root(spec_path, pipeline_root)
    name = name or f"{spec.pipeline_info.name} scheduled"
    with _client(host, token, namespace, timeout) as client:
        experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        recurring = client.create_recurring_run(
            experiment_id=experiment_id, job_name=name, cron_expression=cron,
            max_concurrency=1, no_catchup=True, pipeline_package_path=spec_path,
            pipeline_root=root, enable_caching=False)
        return recurring.recurring_run_id


def _spec_and_root(spec_path: str, pipeline_root: Optional[str]):
    if not spec_path.endswith((".yaml", ".yml")):
        raise KubeflowError(f"{spec_path}: kfp's client takes a .yaml/.yml pipeline spec "
                            "(retrain compile --output pipeline.yaml)")
    spec = load_spec(spec_path)
    root = pipeline_root or spec.default_pipeline_root
    if not root:
        raise KubeflowError(f"{spec_path} names no pipeline root: pass --pipeline-root URI")
    return spec, root


@contextlib.contextmanager
def _client(host: str, token: Optional[str], namespace: Optional[str],
            timeout: float) -> Iterator[object]:
    check_host(host, token, timeout)
    import kfp
    import kfp_server_api
    import urllib3
    previous = socket.getdefaulttimeout()
    # urllib3 (under kfp_server_api) falls back to the socket default timeout.
    socket.setdefaulttimeout(timeout)
    try:
        client = kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")
        yield client
    except KubeflowError:
        raise
    except kfp_server_api.ApiException as e:
        raise KubeflowError(_http_problem(host, e.status, e.reason, e.body, token)) from None
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise KubeflowError(f"lost the connection to Kubeflow Pipelines at {host}: "
                            f"{_redact(str(e), token)[:200]}") from None
    except ValueError as e:  # the kfp client's own checks (package, experiment name)
        raise KubeflowError(f"kfp client: {_redact(str(e), token)}") from None
    finally:
        socket.setdefaulttimeout(previous)


def _read(e: urllib.error.HTTPError) -> bytes:
    try:
        return e.read(65536)
    except OSError:
        return b""


def _http_problem(host: str, status, reason, body, token: Optional[str]) -> str:
    message = _server_message(body)
    if status in (401, 403):
        text = (f"Kubeflow Pipelines at {host} refused the request (HTTP {status}): authentication "
                "failed; pass a valid bearer token with --token-env VAR (the name of an environment "
                "variable holding it)")
    elif status == 404:
        text = (f"{host} has no KFP v2 API (HTTP 404 on /apis/v2beta1): is --host the Kubeflow "
                "Pipelines endpoint of KFP >= 2.0?")
    else:
        text = f"Kubeflow Pipelines at {host} answered HTTP {status} {reason or ''}".rstrip()
    # KFP's backend compiler: "resolver not implemented yet" (older) or
    # "non-container and non-importer executor not implemented" (newer).
    if re.search(r"resolver not implemented|non-importer executor not implemented", message):
        text += (": this KFP backend cannot run TFX Resolver nodes (the latest blessed model "
                 "and feature cache); this spec was compiled for Vertex AI Pipelines: recompile "
                 "with `retrain compile --target kfp` for open-source Kubeflow Pipelines")
    elif message:
        text += f": {message[:300]}"
    return _redact(text, token)


def _server_message(body) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        doc = json.loads(body or "{}")
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    return str(doc.get("message") or doc.get("error") or "").replace("\n", " ")


def _redact(text: str, token: Optional[str]) -> str:
    return text.replace(token, "[token]") if token else text
