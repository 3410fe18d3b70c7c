"""Frozen models built from a registry entry: feature extractor, ImageNet classifier.

Both take float32 RGB images in 0..255, already resized to the backbone's square
input size, and apply the backbone's input scaling inside (a ``Rescaling`` layer
named ``input_scaling``), so callers never preprocess by hand.
"""

from __future__ import annotations

import numpy as np
import tf_keras

from components import contracts
from components.backbones import weights as weights_lib
from components.backbones.registry import get_spec
from components.backbones.spec import BackboneSpec


def build_feature_extractor(name: str, weights: str = "imagenet") -> tf_keras.Model:
    """Frozen feature extractor for backbone ``name``.

    Input: float32 [N, H, W, 3] RGB in 0..255, H = W = ``get_spec(name).input_size``.
    Inside: the backbone's scaling (``spec.scaling``), its convolutional base, global
    average pooling.  Output: float32 [N, spec.feature_dim].  ``trainable=False``.
    Never downloads anything unless ``weights="keras"``.
    """
    spec = get_spec(name)
    app = weights_lib.application_with_weights(spec, weights, need_top=False)
    pooled = tf_keras.layers.GlobalAveragePooling2D(name="feature_pool")(_feature_tensor(app, spec))
    base = tf_keras.Model(_base_input(app, spec), pooled, name=f"{name}_base")
    return _with_scaling(spec, base, "feature_extractor")


def build_imagenet_classifier(name: str = contracts.DEFAULT_BACKBONE, weights: str = "imagenet") -> tf_keras.Model:
    """Frozen full application with its ImageNet head (for verification).

    Input: float32 [N, H, W, 3] RGB in 0..255 (scaling applied inside).
    Output: softmax probabilities [N, 1000] over the standard ImageNet-1k classes.
    """
    spec = get_spec(name)
    app = weights_lib.application_with_weights(spec, weights, need_top=True)
    core = tf_keras.Model(_base_input(app, spec), app.output, name=f"{name}_application")
    return _with_scaling(spec, core, "imagenet_classifier")


def _feature_tensor(app: tf_keras.Model, spec: BackboneSpec):
    """Output of the convolutional base: the named layer, else (auto-named last layer)
    the application's output without its head, or the input of its final pooling."""
    if spec.feature_layer:
        return app.get_layer(spec.feature_layer).output
    if not any(layer.name == spec.head_layer for layer in app.layers):
        return app.output
    pools = [layer for layer in app.layers if isinstance(layer, tf_keras.layers.GlobalAveragePooling2D)]
    return pools[-1].input


def _base_input(app: tf_keras.Model, spec: BackboneSpec):
    return app.get_layer(spec.base_input).input if spec.base_input else app.input


def _scaling_layer(spec: BackboneSpec) -> tf_keras.layers.Layer:
    mean, std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
    scale, offset = 1.0 / std, -mean / std
    if scale.size == 1:
        scale, offset = float(scale[0]), float(offset[0])
    else:
        scale, offset = scale.tolist(), offset.tolist()
    return tf_keras.layers.Rescaling(scale, offset=offset, name="input_scaling")


def _with_scaling(spec: BackboneSpec, core: tf_keras.Model, suffix: str) -> tf_keras.Model:
    inputs = tf_keras.Input(shape=(spec.input_size, spec.input_size, 3), dtype="float32", name="image")
    # training=False: frozen means inference mode throughout (BatchNorm statistics,
    # and dropout / stochastic depth in EfficientNet), even under fit() or training=True.
    outputs = core(_scaling_layer(spec)(inputs), training=False)
    model = tf_keras.Model(inputs, outputs, name=f"{spec.name}_{suffix}")
    model.trainable = False
    return model
