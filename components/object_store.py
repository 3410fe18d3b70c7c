"""s3:// (AWS S3, MinIO) as pipeline root, serving dir and image location.

Settings come from the standard AWS variables only: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (MinIO: e.g. http://minio-service.kubeflow:9000)
and AWS_CA_BUNDLE. Two libraries reach S3 here, configured differently:

* tf.io.gfile, tf.saved_model, tf.data (our components and TFX's own executors):
  tensorflow-io's S3 plugin, which exists in a process only after
  ``import tensorflow_io`` (:func:`enable_tensorflow`), and reads S3_ENDPOINT (a
  URL; 0.37.1 takes http/https from it and reads no S3_USE_HTTPS), S3_CA_FILE,
  the AWS SDK's AWS_REGION and the credentials variables.
* Beam IO (ReadFromTFRecord, WriteToText...): boto3, which reads the credentials,
  AWS_ENDPOINT_URL(_S3), AWS_DEFAULT_REGION (not AWS_REGION) and AWS_CA_BUNDLE
  itself. Beam's S3Options (--s3_endpoint_url...) are left unset on purpose, so a
  compiled Kubeflow spec holds no endpoint of the compiling machine and no secret.

:func:`configure` derives the rest from the standard variables, in os.environ
(inherited by Beam worker subprocesses). Whatever may touch s3:// calls
:func:`prepare` first (`retrain run` and `compile`, pipeline/local_runner.py, each
Kubeflow task through kubeflow/executor_entrypoint.py); Beam workers get it through
``--beam_plugins`` (:func:`beam_args`, components/object_store_worker.py).

tensorflow-io 0.37.1, the only release for TF 2.16, aborts every process that
used its S3 plugin at exit ("pure virtual method called", exit 134,
tensorflow/io#2039, fixed upstream after its last release): entry points end
through :func:`exit_process`, which skips C++ static destructors once it is loaded.

No TensorFlow, Beam or boto3 import at module load: `retrain run` checks its
s3:// locations before TensorFlow loads.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Dict, Iterable, List, Mapping, MutableMapping, NoReturn, Optional, Tuple
from urllib.parse import urlparse

SCHEME = "s3://"
# Imported by Beam SDK worker processes (multi-process DirectRunner, Dataflow).
WORKER_PLUGIN = "components.object_store_worker"
# MinIO and moto accept any region; botocore and the AWS SDK need one to sign.
DEFAULT_REGION = "us-east-1"

_tensorflow_enabled = False


class ObjectStoreError(ValueError):
    """Bad object-store settings or access; the message names what to fix (never a secret)."""


def is_s3(uri: Optional[str]) -> bool:
    return bool(uri) and str(uri).lower().startswith(SCHEME)


def uses_s3(uris: Iterable[Optional[str]]) -> bool:
    return any(is_s3(u) for u in uris)


def split(uri: str) -> Tuple[str, str]:
    """s3://bucket/key/prefix -> (bucket, "key/prefix")."""
    bucket, _, key = uri[len(SCHEME):].partition("/")
    if not bucket:
        raise ObjectStoreError(f"{uri} names no bucket (expected s3://bucket/path)")
    return bucket, key


def endpoint(environ: Mapping[str, str]) -> Tuple[Optional[str], Optional[str]]:
    """(endpoint URL, the variable it came from); the S3-specific one wins, as in boto3."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if environ.get(name):
            return environ[name].strip().rstrip("/"), name
    return None, None


def derived_env(environ: Mapping[str, str]) -> Dict[str, str]:
    """What TensorFlow's plugin and boto3 need beyond the standard variables."""
    out: Dict[str, str] = {}
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        missing, given = (("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID") if key
                          else ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
        raise ObjectStoreError(f"{missing} is not set but {given} is: set both (or neither, "
                               "for credentials from ~/.aws or an instance role)")
    if environ.get("AWS_SESSION_TOKEN") and not key:
        raise ObjectStoreError("AWS_SESSION_TOKEN is set without AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY: a session token goes with its key pair")
    url, name = endpoint(environ)
    if url:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ObjectStoreError(f"{name} must be an http:// or https:// URL, e.g. "
                                   "http://minio-service.kubeflow:9000")
        out["S3_ENDPOINT"] = url
    elif environ.get("S3_ENDPOINT"):
        # Only TensorFlow's plugin would see it; Beam's boto3 would go to AWS.
        raise ObjectStoreError("S3_ENDPOINT is set but AWS_ENDPOINT_URL is not: set "
                               "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) to the endpoint instead")
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or \
        (DEFAULT_REGION if url else None)
    if region:
        for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
            if not environ.get(var):
                out[var] = region
    if environ.get("AWS_CA_BUNDLE") and not environ.get("S3_CA_FILE"):
        out["S3_CA_FILE"] = environ["AWS_CA_BUNDLE"]
    return out


def configure(environ: Optional[MutableMapping[str, str]] = None) -> Dict[str, str]:
    """Sets the derived variables in `environ` (os.environ); returns them. Cheap and
    idempotent; raises ObjectStoreError for inconsistent settings."""
    environ = os.environ if environ is None else environ
    derived = derived_env(environ)
    environ.update(derived)
    return derived


def beam_args(uris: Iterable[Optional[str]]) -> List[str]:
    """Beam options for a pipeline touching `uris`: the worker plugin when any is s3://.

    In-process runs need nothing; worker subprocesses import the plugin before
    any DoFn (TFX's own, too) opens an s3:// path.
    """
    return [f"--beam_plugins={WORKER_PLUGIN}"] if uses_s3(uris) else []


def enable_tensorflow() -> None:
    """Registers s3:// with tf.io.gfile in this process (import tensorflow_io)."""
    global _tensorflow_enabled
    if _tensorflow_enabled:
        return
    configure()
    try:
        import tensorflow_io  # noqa: F401  (registers its filesystem plugins on import)
    except ImportError as e:
        raise ObjectStoreError(f"s3:// paths need the tensorflow-io package "
                               f"(requirements.lock pins tensorflow-io==0.37.1): {e}") from None
    _tensorflow_enabled = True


def tensorflow_enabled() -> bool:
    return _tensorflow_enabled


def check_access(uris: Iterable[Optional[str]]) -> None:
    """Lists one key under each s3:// URI's prefix: a wrong key, secret, endpoint or
    bucket becomes one ObjectStoreError line naming the variable to fix."""
    targets = sorted({split(u) for u in uris if is_s3(u)})
    if not targets:
        return
    configure()
    import boto3
    from botocore import config as bc, exceptions as bx
    url, url_var = endpoint(os.environ)
    where = f"{url} ({url_var})" if url else "AWS S3"
    # A check, not a transfer: an unreachable endpoint fails in seconds, not minutes.
    client = boto3.session.Session().client("s3", config=bc.Config(
        connect_timeout=10, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"}))
    for bucket, key in targets:
        uri = f"{SCHEME}{bucket}/{key}"
        try:
            client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        except bx.NoCredentialsError:
            raise ObjectStoreError(f"{uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY") from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError) as e:
            raise ObjectStoreError(f"{uri}: cannot reach the S3 endpoint {where}: "
                                   f"{type(e).__name__}") from None
        except bx.ClientError as e:
            raise ObjectStoreError(f"{uri}: {_explain(e, bucket, where)}") from None


def _explain(error, bucket: str, where: str) -> str:
    code = error.response.get("Error", {}).get("Code", "")
    if code == "InvalidAccessKeyId":
        return f"the key in AWS_ACCESS_KEY_ID is unknown to {where}"
    if code == "SignatureDoesNotMatch":
        return f"AWS_SECRET_ACCESS_KEY is not the secret of AWS_ACCESS_KEY_ID ({where})"
    if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
        return f"AWS_SESSION_TOKEN is expired or invalid ({where})"
    if code == "NoSuchBucket":
        return f"bucket '{bucket}' does not exist at {where}"
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        return f"access denied for the key in AWS_ACCESS_KEY_ID ({where})"
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed"):
        return f"bucket '{bucket}' is in another region: set AWS_REGION ({where})"
    return f"{code or type(error).__name__} from {where}"


def prepare(uris: Iterable[Optional[str]]) -> None:
    """Everything a process needs before it touches `uris`: settings, a checked
    login, and s3:// in tf.io.gfile. Nothing (not even a settings check) when
    none is s3://."""
    uris = list(uris)
    if uses_s3(uris):
        configure()
        check_access(uris)
        enable_tensorflow()


def buckets_in(text: str) -> List[str]:
    """``s3://bucket/`` for every bucket named in `text` (e.g. a task's arguments)."""
    return sorted({f"{SCHEME}{m}/" for m in re.findall(r"s3://([a-z0-9][a-z0-9.\-]{1,62})", text, re.I)})


def exit_process(code: int) -> NoReturn:
    """Ends the process with `code`. With tensorflow-io's S3 plugin loaded, exits
    without C++ static destructors (they abort: tensorflow/io#2039)."""
    if not _tensorflow_enabled:
        sys.exit(code)
    import atexit
    atexit._run_exitfuncs()  # Python's own clean-up (logging, temp dirs) still runs
    flush_streams()
    os._exit(code)


def flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
