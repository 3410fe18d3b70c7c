"""Fine-tuning the backbone's top N blocks on cached cut activations (`--trainable-blocks N`).

The frozen lower part of the backbone (components/backbones/model.py build_split)
runs once per image: BottleneckGen caches its output, the activation at the cut,
flattened (``activation_dim`` floats, float16 or float32 in the cache), and the
Transform graph the serving model embeds ends at the same cut. The Trainer trains
the top model: that activation -> the top N blocks (ImageNet weights, BatchNorm in
inference mode, a lower learning rate) -> global pooling -> the softmax head. The
top model takes the place of the head everywhere (head/head.h5, the serving
signatures, TFLite), so the whole network is lower + top, behind the same signatures.

N = 0 is the head-only path: none of this runs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import List, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from components import backbones
from components.backbones import model as backbone_model
from components.contracts import FEATURES_KEY
from components.settings import ACTIVATION_DTYPES

TUNE_CHOICES = ("all", "bn", "bn_dw")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the top blocks train. The defaults are what every run uses; the other
    values are experiments (benchmarks/fine_tune.py passes them to train_head), none
    of which beat the defaults in docs/performance.md, so none is a run setting."""
    # The blocks' Adam step size is the head's times this: their ImageNet weights are a
    # good start that a head-sized step would wreck in the first epoch (Keras' transfer
    # learning guide fine-tunes at 1e-5 after a 1e-3 head).
    block_learning_rate_factor: float = 0.1
    # Warm start (standard fine-tuning practice): the head first trains alone, with
    # early stopping, on the pooled output of the frozen top blocks, then the blocks
    # unfreeze. Off: on two ~475-image sets it gained no more than the cold start.
    warm_start: bool = False
    warm_start_epochs: int = 100  # at most; early stopping ends it (the head alone is cheap)
    dropout: float = 0.0          # on the pooled features before the head (0: none)
    # BatchNorm of the top blocks in training mode (batch statistics, moving averages
    # updated) instead of inference mode, as Keras' fine-tuning guide advises.
    batchnorm_training: bool = False
    # Augmentation of the cut activation while training, in place of the on-the-fly
    # image augmentation a cache of one activation per image rules out. A shift of the
    # map approximates a shift of the image (convolutions commute with translation, up
    # to borders and stride); a mirrored map is not the mirrored image's activation.
    shift: int = 0                # random translation by up to this many cells, per image
    flip: bool = False            # random left-right mirror of the activation map
    mixup: float = 0.0            # mixup's Beta(a, a) (0: none)
    # The head's step size while the blocks train is the run's learning rate times this.
    head_learning_rate_factor: float = 1.0
    # Which of the top blocks' weights train: "all", "bn" (BatchNorm scale and offset
    # only), "bn_dw" (those and the depthwise kernels): 1-2 % of the weights of "all".
    tune: str = "all"

    def __post_init__(self):
        if self.tune not in TUNE_CHOICES:
            raise ValueError(f"Recipe: tune must be one of {', '.join(TUNE_CHOICES)}, got {self.tune!r}")
        if self.shift < 0 or self.mixup < 0:
            raise ValueError(f"Recipe: shift and mixup must be >= 0, got {self.shift} and {self.mixup}")


DEFAULT_RECIPE = Recipe()


def check(backbone: str, trainable_blocks: int, activation_dtype: str) -> None:
    """ValueError (one line) naming the setting to fix."""
    backbones.check_trainable_blocks(backbone, trainable_blocks)
    if activation_dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"activation dtype must be one of {', '.join(ACTIVATION_DTYPES)}, got {activation_dtype!r}")


def from_exec_properties(backbone: str, props) -> Tuple[int, str]:
    """(N, activation dtype) of BottleneckGen's execution properties (absent: head only)."""
    blocks = int(props.get("trainable_blocks") or 0)
    activation_dtype = props.get("activation_dtype") or ACTIVATION_DTYPES[0]
    check(backbone, blocks, activation_dtype)
    return blocks, activation_dtype


def cut_channels(backbone: str, trainable_blocks: int) -> int:
    return backbone_model.cut_shape(backbone, trainable_blocks)[-1]


@functools.lru_cache(maxsize=None)
def activation_dim(backbone: str, trainable_blocks: int) -> int:
    """Floats per image BottleneckGen writes: the pooled features (N = 0) or the
    flattened activation at the cut."""
    if trainable_blocks == 0:
        return backbones.get_spec(backbone).feature_dim
    return int(np.prod(backbone_model.cut_shape(backbone, trainable_blocks)))


def namespace_suffix(backbone: str, trainable_blocks: int, activation_dtype: str) -> str:
    """What the cached activation depends on beyond the head-only namespace: the cut and
    its dtype ("" for N = 0: head-only keys are unchanged)."""
    if trainable_blocks == 0:
        return ""
    return f"|cut={backbones.get_spec(backbone).cut_layer(trainable_blocks)}|{activation_dtype}"


def round_activation(activation: tf.Tensor, activation_dtype: str) -> tf.Tensor:
    """The activation as the cache holds it: float16-rounded (then float32 again) when
    cached as float16, so the serving graph feeds the top blocks what they trained on."""
    if activation_dtype == "float16":
        return tf.cast(tf.cast(activation, tf.float16), tf.float32)
    return activation


def lower_extractor(backbone: str, weights: str, trainable_blocks: int) -> tf_keras.Model:
    """Frozen: float32 [N, H, W, 3] RGB 0..255 -> the flattened cut activation [N, D]."""
    lower, _ = backbone_model.build_split(backbone, trainable_blocks, weights)
    flat = tf_keras.layers.Flatten(name="cut_activation")(lower.output)
    model = tf_keras.Model(lower.input, flat, name=f"{backbone}_lower{trainable_blocks}")
    model.trainable = False
    return model


def build_top(backbone: str, weights: str, trainable_blocks: int, num_classes: int,
              recipe: Recipe = DEFAULT_RECIPE) -> tf_keras.Model:
    """The top model: flattened cut activation [N, D] (input ``features``) -> probabilities.

    The top blocks carry ``weights`` (ImageNet) and train; BatchNorm runs in inference
    mode (``training=False`` on the blocks: moving statistics frozen, scale and offset
    trained), as Keras' fine-tuning guide advises for small data.
    """
    _, upper = backbone_model.build_split(backbone, trainable_blocks, weights)
    inputs = tf_keras.Input([activation_dim(backbone, trainable_blocks)], name=FEATURES_KEY)
    shaped = tf_keras.layers.Reshape(upper.input_shape[1:], name="cut_shape")(inputs)
    frozen = {"all": (), "bn_dw": (tf_keras.layers.Conv2D,),
              "bn": (tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D)}[recipe.tune]
    for layer in upper.submodules:
        if isinstance(layer, frozen):
            layer.trainable = False
    pooled = upper(shaped) if recipe.batchnorm_training else upper(shaped, training=False)
    if recipe.dropout:
        pooled = tf_keras.layers.Dropout(recipe.dropout, name="head_dropout")(pooled)
    outputs = tf_keras.layers.Dense(num_classes, activation="softmax", name="head")(pooled)
    return tf_keras.Model(inputs, outputs, name="head")


def frozen_top_features(top: tf_keras.Model, x: np.ndarray) -> np.ndarray:
    """The head's input for cut activations ``x``: the top blocks as loaded (inference mode)."""
    pooled = tf_keras.Model(top.input, top.get_layer("head").input)
    return pooled.predict(x, batch_size=256, verbose=0)


class TwoRateModel(tf_keras.Model):
    """Fits ``top`` with Adam at ``learning_rate`` for the head and at
    ``block_factor`` x that for the blocks (Keras has no per-layer rate)."""

    def __init__(self, top: tf_keras.Model, learning_rate: float, block_factor: float,
                 recipe: Recipe = DEFAULT_RECIPE):
        super().__init__(name="fine_tune")
        self.top = top
        self._recipe = recipe
        self._cut = tuple(int(d) for d in top.get_layer("cut_shape").output_shape[1:])
        head = top.get_layer("head")
        self._head_vars: List[tf.Variable] = list(head.trainable_weights)
        head_ids = {id(v) for v in self._head_vars}
        self._block_vars = [v for v in top.trainable_weights if id(v) not in head_ids]
        self.block_optimizer = tf_keras.optimizers.Adam(learning_rate * block_factor)

    def call(self, inputs, training=None):
        return self.top(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        x = augment_activation(x, self._cut, self._recipe)
        mix = self._recipe.mixup
        if mix:
            x, lam, order = mixup(x, mix)
        with tf.GradientTape() as tape:
            predicted = self(x, training=True)
            loss = self.compiled_loss(y, predicted, sample_weight, regularization_losses=self.losses)
            if mix:
                other = None if sample_weight is None else tf.gather(sample_weight, order)
                loss = lam * loss + (1.0 - lam) * self.compiled_loss(
                    tf.gather(y, order), predicted, other, regularization_losses=self.losses)
        grads = tape.gradient(loss, self._block_vars + self._head_vars)
        k = len(self._block_vars)
        self.block_optimizer.apply_gradients(zip(grads[:k], self._block_vars))
        self.optimizer.apply_gradients(zip(grads[k:], self._head_vars))
        return self.compute_metrics(x, y, predicted, sample_weight)


def mixup(x: tf.Tensor, a: float) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(lam x + (1 - lam) x[order], lam, order): lam ~ Beta(a, a), one per batch, and a
    random order of the batch; the loss is then lam L(y) + (1 - lam) L(y[order])."""
    g1, g2 = tf.random.gamma([], a), tf.random.gamma([], a)
    lam = g1 / (g1 + g2)
    order = tf.random.shuffle(tf.range(tf.shape(x)[0]))
    return lam * x + (1.0 - lam) * tf.gather(x, order), lam, order


def augment_activation(x: tf.Tensor, cut: Tuple[int, int, int], recipe: Recipe) -> tf.Tensor:
    """Flattened cut activations [B, D], shifted and/or mirrored per image (recipe)."""
    if not (recipe.shift or recipe.flip):
        return x
    h, w, c = cut
    maps = tf.reshape(x, [-1, h, w, c])
    if recipe.flip:
        flip = tf.random.uniform([tf.shape(maps)[0], 1, 1, 1]) < 0.5
        maps = tf.where(flip, tf.reverse(maps, [2]), maps)
    if recipe.shift:
        s = recipe.shift
        padded = tf.pad(maps, [[0, 0], [s, s], [s, s], [0, 0]], mode="SYMMETRIC")
        b = tf.shape(maps)[0]
        dy = tf.random.uniform([b, 1], 0, 2 * s + 1, dtype=tf.int32)
        dx = tf.random.uniform([b, 1], 0, 2 * s + 1, dtype=tf.int32)
        maps = tf.gather(padded, dy + tf.range(h)[None], axis=1, batch_dims=1)
        maps = tf.gather(maps, dx + tf.range(w)[None], axis=2, batch_dims=1)
    return tf.reshape(maps, [-1, h * w * c])


def build_trainable(backbone: str, weights: str, trainable_blocks: int, num_classes: int,
                    learning_rate: float, recipe: Recipe = DEFAULT_RECIPE
                    ) -> Tuple[tf_keras.Model, tf_keras.Model]:
    """(model to fit, top model to save and serve), compiled as the head is."""
    top = build_top(backbone, weights, trainable_blocks, num_classes, recipe)
    fit = TwoRateModel(top, learning_rate, recipe.block_learning_rate_factor, recipe)
    fit.compile(optimizer=tf_keras.optimizers.Adam(learning_rate * recipe.head_learning_rate_factor),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return fit, top
