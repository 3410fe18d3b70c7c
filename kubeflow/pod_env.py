"""S3 credentials for the pods of a compiled spec: `retrain compile --s3-secret NAME`.

Executors read and write s3:// themselves (components/object_store.py), so each
pod needs the AWS variables. They never go into the spec as values: the spec
asks Kubernetes to set them from a secret, through KFP's Kubernetes platform
spec (a second YAML document after the pipeline spec, as kfp-kubernetes'
``use_secret_as_env`` writes it; the driver applies ``secretAsEnv`` to the pod,
kubeflow/pipelines backend/src/v2/driver/driver.go at 2.0.0-2.5.0, k8s.go
since). A default KFP install keeps MinIO's keys in the secret
``mlpipeline-minio-artifact`` under ``accesskey`` and ``secretkey``. The
endpoint and region are not secret: they go into each container's ``env``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import yaml

MINIO_SECRET = "mlpipeline-minio-artifact"


@dataclasses.dataclass(frozen=True)
class S3Access:
    secret: str = MINIO_SECRET
    access_key: str = "accesskey"    # key in the secret -> AWS_ACCESS_KEY_ID
    secret_key: str = "secretkey"    # key in the secret -> AWS_SECRET_ACCESS_KEY
    endpoint: Optional[str] = None   # -> AWS_ENDPOINT_URL, e.g. http://minio-service.kubeflow:9000
    region: Optional[str] = None     # -> AWS_REGION

    def secret_as_env(self) -> Dict[str, Any]:
        return {"secretName": self.secret, "keyToEnv": [
            {"secretKey": self.access_key, "envVar": "AWS_ACCESS_KEY_ID"},
            {"secretKey": self.secret_key, "envVar": "AWS_SECRET_ACCESS_KEY"}]}

    def env(self) -> List[Dict[str, str]]:
        out = []
        if self.endpoint:
            out.append({"name": "AWS_ENDPOINT_URL", "value": self.endpoint})
        if self.region:
            out.append({"name": "AWS_REGION", "value": self.region})
        return out


def read(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(pipeline spec, platform spec) of a compiled YAML; the second may be {}.
    Later documents merge into the platform spec, as kfp's client reads them."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if not docs:
        return {}, {}
    platform: Dict[str, Any] = {}
    for doc in docs[1:]:
        platform.update(doc)
    return docs[0], platform


def add_s3_access(path: str, access: S3Access) -> None:
    """Adds the endpoint to every container and the secret to every executor."""
    with open(path) as f:
        text = f.read()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    spec, platform = read(path)
    executors = platform.setdefault("platforms", {}).setdefault("kubernetes", {}) \
        .setdefault("deploymentSpec", {}).setdefault("executors", {})
    for label, executor in spec["deploymentSpec"]["executors"].items():
        if "container" not in executor:
            continue
        container = executor["container"]
        names = {e["name"] for e in access.env()}
        container["env"] = [e for e in container.get("env", []) if e["name"] not in names] + access.env()
        config = executors.setdefault(label, {})
        config["secretAsEnv"] = [s for s in config.get("secretAsEnv", [])
                                 if s.get("secretName") != access.secret] + [access.secret_as_env()]
    with open(path, "w") as f:
        f.write(header)
        yaml.safe_dump(spec, f, sort_keys=True)
        f.write("---\n")
        yaml.safe_dump(platform, f, sort_keys=True)


def secret_env(platform: Dict[str, Any], executor_label: str,
               secrets: Dict[str, Dict[str, str]]) -> Dict[str, str]:
    """The variables the driver sets from secrets for one executor's pod.

    ``secrets``: name -> {key: value}, what the cluster holds. A missing secret or
    key fails the pod (Kubernetes: CreateContainerConfigError): KeyError here.
    """
    config = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}) \
        .get("executors", {}).get(executor_label, {})
    env = {}
    for entry in config.get("secretAsEnv", []):
        name = entry["secretName"]
        if name not in secrets:
            raise KeyError(f"secret {name!r} not found")
        for pair in entry.get("keyToEnv", []):
            if pair["secretKey"] not in secrets[name]:
                raise KeyError(f"couldn't find key {pair['secretKey']} in Secret {name}")
            env[pair["envVar"]] = secrets[name][pair["secretKey"]]
    return env
