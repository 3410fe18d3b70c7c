"""s3:// as images, pipeline root, serving dir and registry: against a real S3 API.

moto's server (ThreadedMotoServer, on 127.0.0.1 and a free port) stands in for
MinIO's S3 API, the artifact store of a default open-source Kubeflow Pipelines
install. IAM authentication is on: requests must be signed with the key pair the
test created, so a wrong secret fails like it would on MinIO. Everything reaches
the server through the standard AWS variables only (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; no region: object_store's default).

The pipeline code runs in child processes, started like `retrain` or a
Kubeflow task: tensorflow-io 0.37.1, whose plugin gives tf.io.gfile its s3://,
aborts any process that used it at exit (tensorflow/io#2039), so a process
that touched s3:// must end through object_store.exit_process; pytest's own
process must not load it. A child prints one JSON line of what it saw; the
test then checks the bucket with boto3, an independent reader.
"""

import json
import os
import subprocess
import sys
import time

import pytest

if __name__ == "__main__":  # a child run: pytest puts tests/ (conftest's folder) on sys.path, a script does not
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components import object_store  # noqa: E402
from conftest import copy_subset  # noqa: E402

BUCKET = "retrain"
CLASSES = ["flags", "food_and_drink"]
_RESULT = "RESULT "


# ------------------------------------------------------------------ settings

def test_settings_come_from_the_standard_aws_variables():
    env = {"AWS_ENDPOINT_URL": "http://minio-service.kubeflow:9000",
           "AWS_ACCESS_KEY_ID": "minio", "AWS_SECRET_ACCESS_KEY": "minio123"}
    assert object_store.derived_env(env) == {
        "S3_ENDPOINT": "http://minio-service.kubeflow:9000",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    # The S3-specific endpoint wins (as in boto3); either region names both.
    env.update(AWS_ENDPOINT_URL_S3="https://s3.example.org/", AWS_DEFAULT_REGION="eu-west-1",
               AWS_CA_BUNDLE="/etc/ca.pem")
    assert object_store.derived_env(env) == {
        "S3_ENDPOINT": "https://s3.example.org", "AWS_REGION": "eu-west-1",
        "S3_CA_FILE": "/etc/ca.pem"}
    assert object_store.derived_env({"AWS_REGION": "eu-north-1"}) == {"AWS_DEFAULT_REGION": "eu-north-1"}
    assert object_store.derived_env({}) == {}  # plain AWS, credentials from ~/.aws or a role
    environ = dict(env)
    assert object_store.configure(environ) and environ["S3_ENDPOINT"] == "https://s3.example.org"


@pytest.mark.parametrize("env,message", [
    ({"AWS_ACCESS_KEY_ID": "minio"}, "AWS_SECRET_ACCESS_KEY is not set but AWS_ACCESS_KEY_ID is"),
    ({"AWS_SECRET_ACCESS_KEY": "minio123"}, "AWS_ACCESS_KEY_ID is not set but AWS_SECRET_ACCESS_KEY is"),
    ({"AWS_SESSION_TOKEN": "t"}, "AWS_SESSION_TOKEN is set without AWS_ACCESS_KEY_ID"),
    ({"AWS_ENDPOINT_URL": "minio:9000"}, "AWS_ENDPOINT_URL must be an http:// or https:// URL"),
    ({"S3_ENDPOINT": "http://minio:9000"}, "S3_ENDPOINT is set but AWS_ENDPOINT_URL is not"),
])
def test_inconsistent_settings_name_the_variable(env, message):
    with pytest.raises(object_store.ObjectStoreError) as e:
        object_store.derived_env(env)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "minio123" not in str(e.value)


def test_beam_workers_get_the_plugin_only_for_s3(tmp_path):
    from pipeline.config import PipelineConfig
    assert object_store.beam_args(["/data", "gs://b/root"]) == []
    local = PipelineConfig(images=str(tmp_path), workdir=str(tmp_path))
    assert local.pipeline_beam_args() == local.beam_args
    s3 = PipelineConfig(images=str(tmp_path), workdir=str(tmp_path), serving_uri="s3://b/serving")
    assert s3.pipeline_beam_args() == local.beam_args + [f"--beam_plugins={object_store.WORKER_PLUGIN}"]
    assert not any("s3_" in a or "secret" in a.lower() for a in s3.pipeline_beam_args())


# ------------------------------------------------------------ the S3 server

@pytest.fixture(scope="module")
def s3(emoji_root, tmp_path_factory):
    """The server, a signed-in key pair, and bucket `retrain` with images/<class>/ (12 each)."""
    import logging

    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    admin = dict(endpoint_url=url, region_name="us-east-1",
                 aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="pipeline")
    iam.put_user_policy(UserName="pipeline", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="pipeline")["AccessKey"]
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])
    client.create_bucket(Bucket=BUCKET)
    # From here on every request is authenticated and authorised (moto's IAM).
    requests.post(f"{url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    images = copy_subset(emoji_root, tmp_path_factory.mktemp("s3-images"), CLASSES, per_class=12)
    for f in sorted(images.glob("*/*")):
        client.upload_file(str(f), BUCKET, f"images/{f.parent.name}/{f.name}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID=key["AccessKeyId"],
               AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"], TF_CPP_MIN_LOG_LEVEL="2")
    yield {"url": url, "env": env, "client": client, "secret": key["SecretAccessKey"]}
    server.stop()


def _keys(client, prefix):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def _child(s3, mode, spec, log, timeout=600):
    """Runs this file as a child process in `mode`; returns (its JSON result, seconds).
    Its output is kept in `log` (a file under pytest's tmp_path)."""
    start = time.time()
    proc = subprocess.run([sys.executable, __file__, mode, json.dumps(spec)], env=s3["env"],
                          capture_output=True, text=True, timeout=timeout)
    log.write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout[-3000:], proc.stderr[-6000:])
    assert s3["secret"] not in proc.stdout + proc.stderr
    return json.loads(lines[-1][len(_RESULT):]), time.time() - start


def test_wrong_secret_is_one_line_naming_the_variable(s3, tmp_path):
    env = dict(s3["env"], AWS_SECRET_ACCESS_KEY="not-the-secret")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--images", f"s3://{BUCKET}/images",
         "--workdir", str(tmp_path / "work"), "--pipeline-root", f"s3://{BUCKET}/bad/root",
         "--serving-dir", f"s3://{BUCKET}/bad/serving"],
        env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("retrain: error: s3://") and \
        "AWS_SECRET_ACCESS_KEY is not the secret of AWS_ACCESS_KEY_ID" in lines[0] and \
        f"{s3['url']} (AWS_ENDPOINT_URL)" in lines[0], lines
    assert "not-the-secret" not in proc.stderr and s3["secret"] not in proc.stderr
    assert _keys(s3["client"], "bad/") == []


def test_unknown_key_and_missing_bucket_are_named(s3, monkeypatch):
    for name, value in s3["env"].items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    for name in ("S3_ENDPOINT", "AWS_REGION", "AWS_DEFAULT_REGION", "S3_CA_FILE"):
        monkeypatch.setenv(name, "")  # unset for configure(), which sets them; removed after
    object_store.check_access([f"s3://{BUCKET}/images", "/local/path"])
    with pytest.raises(object_store.ObjectStoreError, match=r"^s3://missing-bucket/x: bucket "
                       r"'missing-bucket' does not exist at http://127\.0\.0\.1:\d+ \(AWS_ENDPOINT_URL\)$"):
        object_store.check_access(["s3://missing-bucket/x"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
    with pytest.raises(object_store.ObjectStoreError, match="the key in AWS_ACCESS_KEY_ID is unknown"):
        object_store.check_access([f"s3://{BUCKET}/images"])


def test_components_read_and_write_s3(s3, imagenet_weights, tmp_path):
    """ImageExampleGen and BottleneckGen (LocalDagRunner) from and to s3://, the
    registry's records, and pushed versions complete or absent."""
    result, seconds = _child(s3, "components", {"bucket": BUCKET, "classes": CLASSES,
                                                "tmp": str(tmp_path)}, tmp_path / "child.log")
    client = s3["client"]
    assert result["examples"] == 24 and result["bottlenecks"] == 24 and result["computed"] == 24
    # The feature cache BottleneckGen recorded is the one the registry returns.
    cache = result["feature_cache"]
    assert cache["uri"].startswith(f"s3://{BUCKET}/parts/root/BottleneckGen/feature_cache/")
    cache_keys = _keys(client, cache["uri"].split("/", 3)[3] + "/")
    assert cache_keys and all(k.rsplit("/", 1)[1].startswith("features-") for k in cache_keys)
    splits = _keys(client, "parts/root/BottleneckGen/bottlenecks/")
    assert {k.split("/")[-2] for k in splits} == {"Split-train", "Split-eval"}
    assert not [k for k in _keys(client, "parts/root/") if "/.writing/" in k]  # temp folder gone
    # Registry: a blessed-model record counts once its SavedModel exists.
    assert result["blessed_before_model"] is None
    assert result["blessed_after_model"] == f"s3://{BUCKET}/parts/models/7"
    records = _keys(client, "parts/root/_registry/parts/")
    assert len(records) == 2 and all(k.endswith(".json") and "/.tmp-" not in k for k in records)
    # Serving: versions 1 and 3 complete; 2 left incomplete (no marker) is ignored and not reused.
    assert result["versions"] == [1, 3] and result["failed_push_left"] == []
    keys = _keys(client, "parts/serving/")
    for v in (1, 3):
        assert [k.rsplit("/", 1)[1] for k in keys if k.startswith(f"parts/serving/{v}/")] == [
            "_SUCCESS", "labels.txt", "metrics.json", "model.tflite"]
    assert not any(k.startswith("parts/serving/4/") for k in keys)
    print(f"components child: {seconds:.1f} s")


@pytest.mark.slow
def test_beam_worker_processes_read_s3(s3, tmp_path):
    """--beam-workers > 1: DoFns in worker subprocesses open s3:// with tf.io.gfile,
    through the --beam_plugins module, and the workers exit cleanly."""
    result, _ = _child(s3, "workers", {"bucket": BUCKET}, tmp_path / "workers.log")
    assert sorted(text for text, _ in result["read"]) == sorted(result["expected"])
    assert result["parent"] not in {pid for _, pid in result["read"]}  # read in the workers
    log = (tmp_path / "workers.log").read_text()
    assert "exited with return code" not in log and "pure virtual" not in log


@pytest.mark.slow
def test_local_pipeline_on_s3(s3, imagenet_weights, emoji_root, tmp_path):
    """pipeline/local_runner.py run end to end: images, pipeline root and serving
    dir on s3://, registry lookups (as on Kubeflow); only MLMD's SQLite is local."""
    work = tmp_path / "work"
    spec = {"bucket": BUCKET, "workdir": str(work)}
    summary, seconds = _child(s3, "pipeline", spec, tmp_path / "run1.log", timeout=900)
    assert summary["blessed"] and summary["pushed_version"] == 1, summary
    assert summary["examples"]["train"] + summary["examples"]["eval"] == 24
    assert summary["pushed_dir"] == f"s3://{BUCKET}/e2e/serving/1"
    serving = _keys(s3["client"], "e2e/serving/")
    assert {"e2e/serving/1/_SUCCESS", "e2e/serving/1/model.tflite", "e2e/serving/1/labels.txt",
            "e2e/serving/1/metrics.json"} <= set(serving)
    labels = s3["client"].get_object(Bucket=BUCKET, Key="e2e/serving/1/labels.txt")["Body"].read()
    assert labels.decode().split() == CLASSES
    registry = _keys(s3["client"], "e2e/root/_registry/image-retrain/")
    assert any("/blessed_model/" in k for k in registry) and any("/feature_cache/" in k for k in registry)
    assert any(k.startswith("e2e/root/Trainer/model/") for k in _keys(s3["client"], "e2e/root/Trainer/"))
    # No local artifacts: the store, the reports and the workdir lock (pipeline/workdir_lock.py).
    assert sorted(p.name for p in work.iterdir()) == [".retrain.lock", "metadata.sqlite", "reports"]
    report = os.path.basename(summary["report"])
    assert "could not be built" not in (work / "reports" / report).read_text()
    assert f"e2e/root/reports/{report}" in _keys(s3["client"], "e2e/root/reports/")
    # The same images again: ChangeCheck (registry lookups, kubeflow/change_gate.py)
    # ends the run after ImageExampleGen; nothing is trained or pushed, and it says why.
    same, seconds_same = _child(s3, "pipeline", spec, tmp_path / "run-same.log", timeout=900)
    assert set(same["states"]) == {"ImageExampleGen", "change-check"}, same["states"]
    assert same["unchanged"] and same["pushed_version"] is None, same
    assert same["not_pushed_reason"].startswith("no new images since run "), same
    assert _keys(s3["client"], "e2e/serving/") == serving
    # One new image per class: a full run that finds the first one's blessed model and
    # feature cache in the registry (the 24 earlier images' features are reused).
    more = copy_subset(emoji_root, tmp_path / "more", CLASSES, per_class=13)
    new = [f for f in sorted(more.glob("*/*"))
           if f"images/{f.parent.name}/{f.name}" not in _keys(s3["client"], "images/")]
    assert len(new) == 2
    for f in new:
        s3["client"].upload_file(str(f), BUCKET, f"images/{f.parent.name}/{f.name}")
    summary2, seconds2 = _child(s3, "pipeline", spec, tmp_path / "run2.log", timeout=900)
    assert summary2["baseline_accuracy"] is not None and summary2["cache_hits"] == 24, summary2
    assert summary2["examples"]["train"] + summary2["examples"]["eval"] == 26
    print(f"pipeline children: {seconds:.1f} s, {seconds_same:.1f} s, {seconds2:.1f} s")


# ------------------------------------------------------ child process modes

def _components(spec):
    import tensorflow as tf
    from tfx import v1 as tfx

    from components import previous_artifacts as pa
    from components.bottleneck_gen import BottleneckGen
    from components.image_example_gen import ImageExampleGen
    from components.contracts import list_versions
    from components.tflite_pusher import publish_version

    bucket = spec["bucket"]
    root, images = f"s3://{bucket}/parts/root", f"s3://{bucket}/images"
    object_store.prepare([root, images])
    registry = pa.registry_uri(root, "parts")
    gen = ImageExampleGen(images=images, label_names=spec["classes"], eval_percent=30,
                          exclude_label_conflicts=True)
    bottlenecks = BottleneckGen(examples=gen.outputs["examples"], previous_cache=None,
                                backbone="mobilenet_v1", weights="imagenet", batch_size=8,
                                augment_views=0)
    record = pa.RecordFeatureCache(feature_cache=bottlenecks.outputs["feature_cache"], registry=registry)
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="parts", pipeline_root=root, components=[gen, bottlenecks, record],
        enable_cache=False, beam_pipeline_args=["--direct_num_workers=1"] + object_store.beam_args([root]),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(spec["tmp"], "mlmd.sqlite"))))

    def count(pattern, compression="GZIP"):
        files = tf.io.gfile.glob(pattern)
        return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type=compression))

    cache = pa.latest(registry, pa.FEATURE_CACHE)
    out = {
        "examples": count(f"{root}/ImageExampleGen/examples/*/Split-*/*.gz"),
        "bottlenecks": count(f"{root}/BottleneckGen/bottlenecks/*/Split-*/*.gz"),
        "computed": count(f"{cache['uri']}/features-*.tfrecord", compression=""),
        "feature_cache": cache,
    }
    model = f"s3://{bucket}/parts/models/7"
    pa.record(registry, pa.BLESSED_MODEL, {"uri": model})
    out["blessed_before_model"] = pa.latest(registry, pa.BLESSED_MODEL)
    tf.io.gfile.makedirs(f"{model}/Format-Serving")
    with tf.io.gfile.GFile(f"{model}/Format-Serving/saved_model.pb", "wb") as f:
        f.write(b"model")
    out["blessed_after_model"] = pa.latest(registry, pa.BLESSED_MODEL)["uri"]

    serving, src = f"s3://{bucket}/parts/serving", f"s3://{bucket}/parts/src"
    files = {"model.tflite": f"{src}/m.tflite", "labels.txt": f"{src}/labels.txt"}
    for path, data in zip(files.values(), (b"tflite", b"a\nb\n")):
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
    publish_version(serving, files, {"accuracy": 0.9})
    with tf.io.gfile.GFile(f"{serving}/2/model.tflite", "wb") as f:  # a push that died halfway
        f.write(b"partial")
    publish_version(serving, files, {"accuracy": 0.95})
    try:
        publish_version(serving, dict(files, **{"model.tflite": f"{src}/missing"}), {})
    except tf.errors.OpError:
        pass
    out["versions"] = list_versions(serving)
    out["failed_push_left"] = tf.io.gfile.glob(f"{serving}/4/*")
    return out


def _read_in_worker(uri):
    import tensorflow as tf
    with tf.io.gfile.GFile(uri, "rb") as f:
        return [f.read().hex()[:16], os.getpid()]


def _workers(spec):
    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.config import direct_beam_args
    images = f"s3://{spec['bucket']}/images"
    object_store.prepare([images])
    uris = sorted(tf.io.gfile.glob(f"{images}/*/*.png"))[:4]
    expected = [tf.io.gfile.GFile(u, "rb").read().hex()[:16] for u in uris]
    out = f"s3://{spec['bucket']}/workers/read"
    options = PipelineOptions(direct_beam_args(2) + object_store.beam_args([images]))
    with beam.Pipeline(options=options) as p:
        _ = (p | beam.Create(uris) | beam.Reshuffle() | beam.Map(_read_in_worker)
             | beam.Map(json.dumps) | beam.io.WriteToText(out, num_shards=1))
    with tf.io.gfile.GFile(f"{out}-00000-of-00001") as f:
        read = [json.loads(line) for line in f if line.strip()]
    return {"read": read, "expected": expected, "parent": os.getpid()}


def _pipeline(spec):
    from pipeline import local_runner
    from pipeline.config import PipelineConfig
    bucket = spec["bucket"]
    config = PipelineConfig(
        images=f"s3://{bucket}/images", workdir=spec["workdir"],
        pipeline_root_uri=f"s3://{bucket}/e2e/root", serving_uri=f"s3://{bucket}/e2e/serving",
        lookup="registry", min_images_per_class=5, min_accuracy=0.0, max_accuracy_drop=1.0,
        epochs=20, tflite_variants=("float32",), calibration_images=10)
    summary = local_runner.run(config)
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = config.metadata_path
    latest = max((a for a in metadata_store.MetadataStore(cfg).get_artifacts_by_type("Examples")
                  if "cache_hits" in a.custom_properties), key=lambda a: a.id)
    summary["cache_hits"] = latest.custom_properties["cache_hits"].int_value
    return summary


if __name__ == "__main__":
    mode, child_spec = sys.argv[1], json.loads(sys.argv[2])
    found = {"components": _components, "workers": _workers, "pipeline": _pipeline}[mode](child_spec)
    print(_RESULT + json.dumps(found, sort_keys=True, default=str), flush=True)
    object_store.exit_process(0)
