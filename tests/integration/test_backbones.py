"""Tests for components.backbones: the registry entries, weight resolution, errors,
fingerprints.

Every registry entry is built as the product builds it, with random weights (the
Keras backbones' ImageNet weights need internet); the converted MobileNet v1 and
EfficientNet-Lite0 weights are the real ones (``fetch_weights()``, cached in
$TFX_RETRAIN_CACHE or ~/.cache/tfx-image-retrain).  The conversions themselves are
tested in test_backbone_conversions.py.
"""

import dataclasses
import hashlib
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tf_keras

from components import backbones
from components.tflite import convert as tflite_convert, runtime as tflite_runtime
from components.backbones import fetch
from components.backbones import weights as backbone_weights
from conftest import synthetic_images

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


# ----------------------------------------------------- every registry entry, as built


@pytest.mark.parametrize("name", list(backbones.BACKBONES))
def test_registry_entry_builds_what_its_spec_says(name):
    """Every entry, built as the product builds it (random weights): the input size,
    scaling and feature size of its spec, frozen, scaling inside the model."""
    spec = backbones.get_spec(name)
    model = backbones.build_feature_extractor(name, weights="random")
    assert model.input_shape == (None, spec.input_size, spec.input_size, 3)
    x = synthetic_images(2, spec.input_size, seed=2)
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
    x = synthetic_images(1, 8, seed=5)
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
    x = synthetic_images(1, spec.input_size, seed=2)
    got = tflite_runtime.Classifier(tflite_convert.convert(model, "float32")).predict(x)
    want = model(x).numpy()
    assert got.shape == (1, spec.feature_dim)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max())))


def test_imagenet_classifiers_random():
    for name in ("mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0"):
        spec = backbones.get_spec(name)
        model = backbones.build_imagenet_classifier(name, "random")
        probs = model(synthetic_images(1, spec.input_size, seed=4)).numpy()
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
    x = synthetic_images(1, 224, seed=3)
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


# ----------------------------------------------------------- offline ImageNet weights


def test_fetch_weights_is_idempotent(imagenet_weights, monkeypatch):
    mtime = imagenet_weights.stat().st_mtime_ns
    _forbid_fetching(monkeypatch)
    assert backbones.fetch_weights() == imagenet_weights
    assert imagenet_weights.stat().st_mtime_ns == mtime


def test_lite0_fetch_is_idempotent_and_fingerprinted(lite0_weights, monkeypatch):
    mtime = lite0_weights.stat().st_mtime_ns
    _forbid_fetching(monkeypatch)
    assert backbones.fetch_weights("efficientnet_lite0") == lite0_weights
    assert lite0_weights.stat().st_mtime_ns == mtime
    fp = backbones.weights_fingerprint("efficientnet_lite0", "imagenet")
    assert fp == LITE0.converted_fingerprint() != V1.converted_fingerprint()


def test_weights_from_path_equal_imagenet(imagenet_weights):
    x = synthetic_images(2, 224, seed=1)
    a = backbones.build_feature_extractor("mobilenet_v1", "imagenet")(x).numpy()
    b = backbones.build_feature_extractor("mobilenet_v1", str(imagenet_weights))(x).numpy()
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- errors


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


# ----------------------------------------------------------------------- fingerprints

# What the single-module components/backbones.py (commit 3f90e07, before the package
# split) computed and named: existing caches (converted .h5 files and the
# FeatureCache namespaces keyed on these fingerprints) stay valid only while they hold.
_CACHE_COMPATIBLE = {
    "mobilenet_v1": ("98d4bf966053f127d66d0fcbbe680623e53dfb3a7e2fe924caaa18d4e3a8e19f",
                     "mobilenet_v1_1.0_224_imagenet.h5", "nudity-0.2.3_retrained_graph.pb"),
    "efficientnet_lite0": ("d68b0c2250410ac89b1d67b2a25d766086c51ea98d80f5a9cdc7c23fb8ad7c18",
                           "efficientnet_lite0_224_imagenet.h5", "efficientnet-lite0-57934424.pth"),
}


def test_converted_weights_keep_their_cache_names_and_fingerprints(imagenet_weights, lite0_weights):
    assert sorted(_CACHE_COMPATIBLE) == sorted(n for n, s in backbones.BACKBONES.items() if s.converted)
    weights = backbones.cache_dir() / "weights"
    for name, (fingerprint, h5_name, source_name) in _CACHE_COMPATIBLE.items():
        spec = backbones.get_spec(name)
        assert backbones.weights_fingerprint(name, "imagenet") == fingerprint
        assert spec.converted.path() == weights / h5_name
        assert spec.converted.source.cache_path() == weights / "sources" / source_name
    assert {imagenet_weights.name, lite0_weights.name} == {h5 for _, h5, _ in _CACHE_COMPATIBLE.values()}


def test_weights_fingerprint(imagenet_weights, tmp_path):
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
    shutil.copyfile(imagenet_weights, a)
    shutil.copyfile(imagenet_weights, b)
    by_path = backbones.weights_fingerprint("mobilenet_v1", str(a))
    assert by_path == backbones.weights_fingerprint("mobilenet_v1", str(b))
    assert by_path == hashlib.sha256(imagenet_weights.read_bytes()).hexdigest()
    V1.application(include_top=True).save_weights(str(b))  # other (random) weights
    assert backbones.weights_fingerprint("mobilenet_v1", str(b)) not in (by_path, fp)
    assert backbones.weights_fingerprint("mobilenet_v1", str(a)) == by_path


def test_fetch_weights_subcommand_prints_the_cached_file(imagenet_weights):
    """`retrain fetch-weights` (the README's set-up step) as a user runs it: exit 0,
    the weights file's path on stdout, the cached file left as it was."""
    mtime = imagenet_weights.stat().st_mtime_ns
    root = pathlib.Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "fetch-weights", "--backbone",
                           "mobilenet_v1"], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(imagenet_weights)
    assert imagenet_weights.stat().st_mtime_ns == mtime
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "fetch-weights", "--backbone", "nope"],
                         cwd=root, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
