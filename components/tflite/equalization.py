"""Activation-range equalization of ReLU6 channels before int8 conversion.

Full-integer int8 quantizes each activation tensor per tensor: a ReLU6 output gets
the grid 6/255 whatever the channel.  MobileNet v1's ``conv1`` channels that feed
``conv_dw_1`` often stay far below 6, and ``conv_dw_1``'s folded kernels reach
about +-900 with taps that nearly cancel, so the 8-bit input step of those channels
is amplified into most of the layer's output error (QuantizationDebugger: RMSE of 3
output steps in conv_dw_1 and conv_pw_1; EfficientNet-Lite0's stem and block0 alike).

For a chain BatchNorm -> ReLU6 -> [ZeroPadding2D] -> Conv2D/DepthwiseConv2D whose
activation feeds only that convolution, channel ``c`` is scaled up by ``s_c`` before
the ReLU6 (BatchNorm gamma and beta times ``s_c``) and down again in the next kernel
(its input channel ``c`` divided by ``s_c``): ReLU6 is positively homogeneous below
its cap, so the float function is unchanged wherever the channel stays under
``6 / s_c``, and the channel uses the whole 8-bit range.  ``s_c = 6 / max_c``
(the channel's largest activation on the calibration images, at most
MAX_SCALE, at least 1): cross-layer equalization (Nagel et al. 2019, section 4.1),
with the scale chosen from the activations as ReLU6 requires.  Only the int8
conversion sees the scaled weights (:class:`equalized` restores them on exit).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from components.tflite.bias_correction import _graph_nodes, _is_functional, bias_corrected, conv_bn_pairs

MAX_SCALE = 16.0  # a dead channel (max ~0) is scaled no further than this


def relu6_chains(model) -> List[Tuple[Any, Any, Any]]:
    """(batchnorm, relu6, next conv) at any nesting depth of ``model``: the BatchNorm
    (fed by a convolution) feeds only a ReLU(6) whose output, through zero padding at
    most, feeds only the Conv2D or DepthwiseConv2D."""
    import tf_keras
    bns = {id(bn) for _, _, bn in conv_bn_pairs(model)}
    convs = (tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D)
    out = []
    for owner in _functionals(model):
        consumers: Dict[int, int] = {}
        for node in _graph_nodes(owner):
            for t in node.keras_inputs:
                consumers[id(t.node.layer)] = consumers.get(id(t.node.layer), 0) + 1
        for t in owner.outputs:
            consumers[id(t.node.layer)] = consumers.get(id(t.node.layer), 0) + 1
        for conv in owner.layers:
            if not isinstance(conv, convs) or len(conv.inbound_nodes) != 1:
                continue
            prev = conv.inbound_nodes[0].inbound_layers
            while isinstance(prev, tf_keras.layers.ZeroPadding2D) and consumers.get(id(prev)) == 1:
                prev = prev.inbound_nodes[0].inbound_layers
            if not (_is_relu6(prev) and len(prev.inbound_nodes) == 1 and consumers.get(id(prev)) == 1):
                continue
            bn = prev.inbound_nodes[0].inbound_layers
            if id(bn) in bns and consumers.get(id(bn)) == 1:
                out.append((bn, prev, conv))
    return out


def _functionals(model) -> List[Any]:
    out = [model]
    for layer in model.layers:
        if _is_functional(layer):
            out += _functionals(layer)
    return out


def _is_relu6(layer) -> bool:
    import tf_keras
    if not isinstance(layer, tf_keras.layers.ReLU):
        return False
    c = layer.get_config()
    return (c.get("max_value") is not None and float(c["max_value"]) == 6.0
            and not float(c.get("negative_slope") or 0.0) and not float(c.get("threshold") or 0.0))


class _ChannelMax(bias_corrected):
    """One float pass through the graph recording each listed layer's per-channel
    maximum (the bias-correction walk, float copy only); ``keep_all``: the whole
    output instead (benchmarks/int8_diagnosis.py)."""

    def __init__(self, model, pixels, layers, keep_all: bool = False):
        super().__init__(model, pixels)
        self._wanted = {id(layer): layer.name for layer in layers}
        self._keep_all = keep_all
        self.maxima: Dict[str, np.ndarray] = {}

    def __enter__(self):
        import tensorflow as tf
        x = tf.constant(self.pixels)
        self._walk(self.model, [x], [x])
        return self

    def _run(self, layer, args_f, kw_f, args_q, kw_q):
        import tensorflow as tf
        if _is_functional(layer):
            out, _ = self._walk(layer, tf.nest.flatten((args_f, kw_f)), tf.nest.flatten((args_f, kw_f)))
            out = tf.nest.pack_sequence_as(layer.output, out)
            return out, out
        out = layer(*args_f, **kw_f)
        if id(layer) in self._wanted:
            self.maxima[self._wanted[id(layer)]] = (
                out.numpy() if self._keep_all else tf.reduce_max(out, axis=(0, 1, 2)).numpy())
        return out, out


def channel_scales(model, pixels: np.ndarray) -> Dict[str, np.ndarray]:
    """BatchNorm name -> float32 [C] scale of each :func:`relu6_chains` channel,
    from its largest activation on ``pixels`` (calibration images)."""
    chains = relu6_chains(model)
    if not chains:
        return {}
    with _ChannelMax(model, pixels, [bn for bn, _, _ in chains]) as probe:
        pass
    scales = {}
    for bn, _, _ in chains:
        peak = np.clip(probe.maxima[bn.name], 6.0 / MAX_SCALE, 6.0)
        scales[bn.name] = (6.0 / peak).astype(np.float32)
    return scales


class equalized:
    """Context manager: ``model``'s ReLU6 channels scaled by ``scales`` (BatchNorm name
    -> [C], :func:`channel_scales`), the next kernels scaled back; undone on exit.
    ValueError when the scales do not fit the model (names, shapes, values)."""

    def __init__(self, model, scales: Dict[str, np.ndarray]):
        self.model, self.scales = model, scales
        self._saved: List[Tuple[Any, List[np.ndarray]]] = []

    def __enter__(self):
        chains = {bn.name: (bn, conv) for bn, _, conv in relu6_chains(self.model)}
        if not set(self.scales) <= set(chains):
            raise ValueError("the equalization scales' layers are not the model's")
        try:
            for name, s in self.scales.items():
                bn, conv = chains[name]
                gamma, beta, mean, var = bn.get_weights()
                if s.shape != gamma.shape or not np.all(np.isfinite(s)) or np.any(s < 1.0) or \
                        np.any(s > MAX_SCALE):
                    raise ValueError(f"the equalization scales for {name} do not fit")
                weights = conv.get_weights()
                self._saved += [(bn, bn.get_weights()), (conv, weights)]
                bn.set_weights([gamma * s, beta * s, mean, var])
                kernel = weights[0] / s.reshape(1, 1, -1, 1).astype(weights[0].dtype)
                conv.set_weights([kernel] + weights[1:])
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self):
        for layer, weights in reversed(self._saved):
            layer.set_weights(weights)
        self._saved = []

    def __exit__(self, *exc):
        self._restore()
        return False

