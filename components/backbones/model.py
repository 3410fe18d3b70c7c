"""Frozen models built from a registry entry: feature extractor, ImageNet classifier.

Both take float32 RGB images in 0..255, already resized to the backbone's square
input size, and apply the backbone's input scaling inside (a ``Rescaling`` layer
named ``input_scaling``), so callers never preprocess by hand.
"""

from __future__ import annotations

import functools
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from components import contracts
from components.backbones import weights as weights_lib
from components.backbones.registry import check_trainable_blocks, get_spec
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


def build_split(name: str, trainable_blocks: int, weights: str = "imagenet"
                ) -> Tuple[tf_keras.Model, tf_keras.Model]:
    """(lower, upper): the feature extractor cut below its top ``trainable_blocks`` blocks
    (the spec's ``blocks``), from one application carrying ``weights``.

    lower: float32 [N, H, W, 3] RGB 0..255 -> the activation at the cut [N, h, w, c]
    (input scaling inside; frozen, inference mode). upper: that activation -> pooled
    features [N, spec.feature_dim]: the top blocks' own layers, trainable, called as
    given (the caller chooses the BatchNorm mode). upper(lower(x)) is the feature
    extractor's output (tests/integration/test_fine_tune.py states the tolerance).
    """
    check_trainable_blocks(name, trainable_blocks)
    spec = get_spec(name)
    app = weights_lib.application_with_weights(spec, weights, need_top=False)
    cut = app.get_layer(spec.cut_layer(trainable_blocks)).input
    lower = _with_scaling(spec, tf_keras.Model(_base_input(app, spec), cut, name=f"{name}_lower"), "lower")
    activation = tf_keras.Input(cut.shape[1:], dtype="float32", name="activation")
    top = _rebuild(_feature_tensor(app, spec), {id(cut): activation})
    pooled = tf_keras.layers.GlobalAveragePooling2D(name="feature_pool")(top)
    return lower, tf_keras.Model(activation, pooled, name=f"{name}_top{trainable_blocks}")


@functools.lru_cache(maxsize=None)
def cut_shape(name: str, trainable_blocks: int) -> Tuple[int, int, int]:
    """(h, w, c) of the activation at the cut for ``trainable_blocks`` (random weights:
    only the shapes are read)."""
    check_trainable_blocks(name, trainable_blocks)
    spec = get_spec(name)
    app = spec.application(include_top=False)
    return tuple(int(d) for d in app.get_layer(spec.cut_layer(trainable_blocks)).input.shape[1:])


def _rebuild(tensor, done: Dict[int, object]):
    """``tensor`` of a functional graph recomputed from the new tensors in ``done``
    (old tensor id -> new tensor) by calling the same layers again: their weights are
    shared. Handles any DAG above the cut (EfficientNet's residual adds)."""
    key = id(tensor)
    if key not in done:
        layer, node_index, tensor_index = tensor._keras_history
        if isinstance(layer, tf_keras.layers.InputLayer):
            raise ValueError(f"the top blocks read {layer.name!r}, below the cut: fix the spec's blocks")
        node = layer._inbound_nodes[node_index]

        def new(t):
            return _rebuild(t, done) if tf_keras.backend.is_keras_tensor(t) else t
        args = tf.nest.map_structure(new, node.call_args)
        kwargs = tf.nest.map_structure(new, node.call_kwargs)
        outputs = tf.nest.flatten(layer(*args, **kwargs))
        done[key] = outputs[tensor_index]
    return done[key]


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
