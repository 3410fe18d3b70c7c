"""Transform module: raw image bytes -> frozen-backbone features ("bottlenecks").

Referenced by the pipeline as ``components.preprocessing.preprocessing_fn``.
The backbone runs here, once per image; its weights end up inside the
transform graph, so the serving model (which embeds this graph) needs no
separate weight files.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from components import backbones, fine_tune
from components.contracts import FEATURES_KEY, IMAGE_KEY, LABEL_KEY
# The decoding is shared with `retrain predict`, which must not load tf.Transform.
from components.image_decode import decode_and_resize, decode_batch, decode_rgb  # noqa: F401
from components.settings import TransformSettings

# Bump when decoding/resizing changes: cached features depend on it (bottleneck_gen).
PREPROCESSING_VERSION = 1


# tf.Transform traces preprocessing_fn several times per run (analysis, export,
# apply); building the backbone and reading its weights each time cost ~10 s.
# make_and_track_object creates objects eagerly, so one instance per process
# can be shared by every trace, and by BottleneckGen before them. TFX imports
# preprocessing_fn with importlib.reload (tfx/utils/import_utils.py
# import_func_from_module), which runs this module again in the same namespace:
# the cache is kept across that, or Transform builds the backbone again (~0.8 s).
_EXTRACTORS: dict = globals().get("_EXTRACTORS", {})


def shared_extractor(name: str, weights: str, trainable_blocks: int = 0):
    """The process-wide feature extractor for (backbone, weights): pooled features, or
    with ``trainable_blocks`` N > 0 the frozen part below the top N blocks (the
    flattened activation at the cut, components/fine_tune.py).

    Keyed on the weights' fingerprint too: a weights file rewritten in place in a
    long-lived process (a notebook, a test session) gets a new model, never the
    old one's features cached under the new file's fingerprint.
    """
    backbones.ensure_weights(name, weights)
    key = (name, weights, backbones.weights_fingerprint(name, weights))
    if trainable_blocks:
        key += (trainable_blocks,)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = (fine_tune.lower_extractor(name, weights, trainable_blocks) if trainable_blocks
                            else backbones.build_feature_extractor(name, weights))
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
    name, weights, blocks = settings.backbone, settings.weights, settings.trainable_blocks
    spec = backbones.get_spec(name)
    extractor = tft.make_and_track_object(
        lambda: _TrackedBackbone(shared_extractor(name, weights, blocks)), name="backbone")
    images = tf.reshape(inputs[IMAGE_KEY], [-1])
    features = extractor(decode_and_resize(images, spec.input_size))
    if blocks:  # the cut activation, as BottleneckGen caches it
        features = fine_tune.round_activation(features, settings.activation_dtype)
    outputs = {FEATURES_KEY: tf.ensure_shape(features, [None, fine_tune.activation_dim(name, blocks)])}
    if LABEL_KEY in inputs:
        outputs[LABEL_KEY] = tf.reshape(inputs[LABEL_KEY], [-1])
    return outputs
