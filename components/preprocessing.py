"""Transform module: raw image bytes -> frozen-backbone features ("bottlenecks").

Referenced by the pipeline as ``components.preprocessing.preprocessing_fn``.
The backbone runs here, once per image; its weights end up inside the
transform graph, so the serving model (which embeds this graph) needs no
separate weight files.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from components import backbones
from components.contracts import FEATURES_KEY, IMAGE_KEY, LABEL_KEY
# The decoding is shared with `retrain predict`, which must not load tf.Transform.
from components.image_decode import decode_and_resize, decode_batch, decode_rgb  # noqa: F401
from components.settings import TransformSettings

# Bump when decoding/resizing changes: cached features depend on it (bottleneck_gen).
PREPROCESSING_VERSION = 1


# tf.Transform traces preprocessing_fn several times per run (analysis, export,
# apply); building the backbone and reading its weights each time cost ~10 s.
# make_and_track_object creates objects eagerly, so one instance per process
# can be shared by every trace.
_EXTRACTORS: dict = {}


def shared_extractor(name: str, weights: str):
    """The process-wide feature extractor for (backbone, weights).

    Keyed on the weights' fingerprint too: a weights file rewritten in place in a
    long-lived process (a notebook, a test session) gets a new model, never the
    old one's features cached under the new file's fingerprint.
    """
    backbones.ensure_weights(name, weights)
    key = (name, weights, backbones.weights_fingerprint(name, weights))
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = backbones.build_feature_extractor(name, weights)
    return _EXTRACTORS[key]


class _TrackedBackbone(tf.Module):
    """What the transform SavedModel keeps of the backbone: its variables.

    Tracking the Keras model itself made tf.saved_model.save serialise every
    layer's call functions and trace the model again with AutoGraph (about 8 s
    of each Transform run for MobileNet); the graph needs only the variables.
    """

    def __init__(self, model):
        super().__init__(name="backbone")
        self.backbone_variables = list(model.weights)
        # A plain callable is not tracked; AutoGraph off: converting every layer's
        # call cost ~7 s per trace and the backbone has no tensor-dependent Python.
        self._forward = tf.autograph.experimental.do_not_convert(
            lambda pixels: model(pixels, training=False))

    def __call__(self, pixels):
        return self._forward(pixels)


def preprocessing_fn(inputs, custom_config):
    """custom_config: TransformSettings.to_config() (components/settings.py)."""
    settings = TransformSettings.from_config(custom_config)
    name, weights = settings.backbone, settings.weights
    spec = backbones.get_spec(name)
    extractor = tft.make_and_track_object(
        lambda: _TrackedBackbone(shared_extractor(name, weights)), name="backbone")
    images = tf.reshape(inputs[IMAGE_KEY], [-1])
    features = extractor(decode_and_resize(images, spec.input_size))
    outputs = {FEATURES_KEY: tf.ensure_shape(features, [None, spec.feature_dim])}
    if LABEL_KEY in inputs:
        outputs[LABEL_KEY] = tf.reshape(inputs[LABEL_KEY], [-1])
    return outputs
