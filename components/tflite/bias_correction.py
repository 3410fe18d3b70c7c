"""Empirical bias correction of BatchNorm offsets for int8 weights.

The converter folds each BatchNorm into the convolution before it and quantizes the
folded kernel to int8, symmetric per output channel.  For some backbones that
rounding shifts the layer's output systematically: a 3x3 depthwise kernel of
mobilenet_v1 (conv_dw_1) has two taps of about +-12.5 that nearly cancel and small
taps of about 0.05 that decide the output, and the int8 step is 0.1.
:class:`bias_corrected` measures that shift on calibration images and moves it into
the BatchNorm offsets (Nagel et al. 2019, "Data-free quantization", section 4.2;
Finkelstein et al. 2019) while the converter runs.

The model's graph is read through tf_keras' public functional API only
(``layer.inbound_nodes``, ``node.inbound_layers``, ``node.keras_inputs``,
``node.call_args``/``call_kwargs``, ``KerasTensor.node``, ``model.inputs``/``outputs``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from components.tflite import rounding


@dataclasses.dataclass
class QuantPlan:
    """What int8 conversion changes in the frozen backbone: learned kernel integers
    (conv layer name -> int8 array, the kernel's shape) and BatchNorm offset shifts
    (BatchNorm name -> float32 [C]).  Depends on the backbone's weights and the images
    it was measured on, not on the head: cached per weights fingerprint
    (components/backbones/quant_cache.py)."""
    integers: Dict[str, np.ndarray]
    shifts: Dict[str, np.ndarray]
    # ReLU6 range equalization applied before (BatchNorm name -> float32 [C]; equalization.py)
    scales: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _is_functional(layer) -> bool:
    """A tf_keras Model built from a graph of layers (functional or Sequential)."""
    import tf_keras
    return (isinstance(layer, tf_keras.Model) and bool(getattr(layer, "outputs", None))
            and all(getattr(t, "node", None) is not None for t in layer.outputs))


def conv_bn_pairs(model) -> List[Tuple[Any, Any, Any]]:
    """(owner, conv, batchnorm) for every BatchNormalization fed by a Conv2D or
    DepthwiseConv2D, at any nesting depth of functional ``model``, in layer order;
    ``owner`` is the (sub)model whose graph holds both.  Layers called more than
    once (shared) are left out: their BatchNorm sees several inputs."""
    import tf_keras
    convs = (tf_keras.layers.Conv2D, tf_keras.layers.DepthwiseConv2D)
    out = []
    for layer in model.layers:
        if isinstance(layer, tf_keras.Model):
            out += conv_bn_pairs(layer)
        elif isinstance(layer, tf_keras.layers.BatchNormalization) and len(layer.inbound_nodes) == 1:
            inbound = layer.inbound_nodes[0].inbound_layers
            if isinstance(inbound, convs) and len(inbound.inbound_nodes) == 1:
                out.append((model, inbound, layer))
    return out


def per_channel_quantized(kernel: np.ndarray, multiplier: np.ndarray, depthwise: bool) -> np.ndarray:
    """``kernel`` after the converter's int8 treatment: BatchNorm multiplier folded in,
    symmetric per-output-channel int8 (scale max|w| / 127), multiplier taken out again."""
    x, _, _ = rounding.folded_scale(kernel, multiplier, depthwise)
    return rounding.kernel_for(np.clip(np.round(x), -127, 127), kernel, multiplier, depthwise)


def _graph_nodes(model) -> List[Any]:
    """The nodes of functional ``model``'s graph, inputs first (a depth-first walk back
    from its outputs, as tf_keras orders them when it builds the model)."""
    order, done = [], set()

    def visit(node):
        if id(node) in done:
            return
        done.add(id(node))
        if not node.is_input:
            for t in node.keras_inputs:
                visit(t.node)
        order.append(node)
    for t in model.outputs:
        visit(t.node)
    return [n for n in order if not n.is_input]


class _Done(Exception):
    pass


class bias_corrected:
    """Context manager: ``model``'s BatchNorm offsets corrected for per-channel int8
    weights, undone on exit.

    The correction is measured on ``pixels`` (calibration images) in one walk through
    the graph (nested models included): a float and a quantized copy of the
    activations advance side by side, node by node, so the cost is about two forward
    passes.  The quantized copy runs each convolution with its int8-rounded kernel and
    each BatchNorm with the corrections found so far; at every BatchNorm the difference
    of the two copies' per-channel means (the shift of this layer plus what is left of
    the layers before it) is subtracted from beta and from the quantized copy.  The
    kernels are left as they are (the converter rounds them the same way); only the
    biases change.  (Rounding the quantized copy's activations to their 8-bit grids as
    well measured worse: mobilenet_v1 agreement 0.967 against 0.978.)

    With ``learned_rounding`` each kernel's integers are chosen on the way to minimise
    the layer's output error on the float activations (:mod:`rounding`), and the
    kernel is set to exactly those values until exit.  ``plan`` (a :class:`QuantPlan`
    measured before) is applied without a walk; ValueError when it does not fit.
    ``self.plan`` holds what was applied.
    """

    def __init__(self, model, pixels: Optional[np.ndarray], learned_rounding: bool = False,
                 plan: Optional[QuantPlan] = None):
        if pixels is None and plan is None:
            raise ValueError("bias correction needs calibration images or a plan")
        self.model = model
        self.pixels = None if pixels is None else np.asarray(pixels, np.float32)
        self.learned_rounding = learned_rounding
        self._betas: List[Tuple[Any, List[np.ndarray]]] = []
        self._kernels: List[Tuple[Any, List[np.ndarray]]] = []
        self.corrections: Dict[str, float] = {}
        # What was applied: reused as is when given (no walk), else measured here.
        self.plan = plan if plan is not None else QuantPlan({}, {})
        self._given = plan is not None

    def __enter__(self):
        import tensorflow as tf
        pairs = conv_bn_pairs(self.model)
        self._convs = {id(conv): bn for _, conv, bn in pairs}
        self._bns = {id(bn): conv for _, conv, bn in pairs}
        self._left = len(pairs)
        try:
            if self._given:
                self._apply_plan(pairs)
            elif pairs:
                x = tf.constant(self.pixels)
                try:
                    self._walk(self.model, [x], [x])
                except _Done:
                    pass
        except BaseException:
            self._restore_betas()
            raise
        return self

    def _apply_plan(self, pairs):
        """Sets the given plan's kernels and BatchNorm offsets; ValueError when it does
        not fit the model (another backbone, a corrupt entry)."""
        if set(self.plan.shifts) != {bn.name for _, _, bn in pairs} or \
                not set(self.plan.integers) <= {conv.name for _, conv, _ in pairs}:
            raise ValueError("the quantization plan's layers are not the model's")
        for _, conv, bn in pairs:
            gamma, beta, mean, var = bn.get_weights()
            shift = self.plan.shifts[bn.name]
            if shift.shape != beta.shape or not np.all(np.isfinite(shift)):
                raise ValueError(f"the quantization plan's offsets for {bn.name} do not fit")
            if conv.name in self.plan.integers:
                kernel = self._plan_kernel(conv, bn, gamma / np.sqrt(var + bn.epsilon))
                self._set_kernel(conv, kernel)
            self._betas.append((bn, bn.get_weights()))
            bn.set_weights([gamma, beta - shift.astype(beta.dtype), mean, var])
            self.corrections[bn.name] = float(np.abs(shift).max()) if shift.size else 0.0

    def _plan_kernel(self, conv, bn, multiplier):
        import tf_keras
        depthwise = isinstance(conv, tf_keras.layers.DepthwiseConv2D)
        kernel = conv.get_weights()[0]
        integers = self.plan.integers[conv.name]
        x, _, _ = rounding.folded_scale(kernel, multiplier, depthwise)
        # A learned rounding is floor or ceiling: anything else is not this kernel's.
        if integers.shape != kernel.shape or np.any(np.abs(integers - x) >= 1.0 + 1e-6):
            raise ValueError(f"the quantization plan's integers for {conv.name} do not fit")
        return rounding.kernel_for(integers, kernel, multiplier, depthwise)

    def _set_kernel(self, conv, kernel):
        weights = conv.get_weights()
        self._kernels.append((conv, weights))
        conv.set_weights([kernel] + weights[1:])

    def _walk(self, model, inputs_f, inputs_q):
        """Runs the float and the quantized activations through functional ``model``,
        correcting on the way; returns both copies of its outputs (flat lists)."""
        import tensorflow as tf
        nodes = _graph_nodes(model)
        # Uses left of each tensor (by id): a value is dropped after its last use.
        uses: Dict[int, int] = {}
        for node in nodes:
            for t in node.keras_inputs:
                uses[id(t)] = uses.get(id(t), 0) + 1
        for t in model.outputs:
            uses[id(t)] = uses.get(id(t), 0) + 1
        values: Dict[int, Tuple[Any, Any]] = {}

        def take(t):
            uses[id(t)] -= 1
            return values[id(t)] if uses[id(t)] else values.pop(id(t))

        for ref, yf, yq in zip(model.inputs, inputs_f, inputs_q):
            values[id(ref)] = (yf, yq)
        for node in nodes:
            if any(id(t) not in values for t in node.keras_inputs):
                continue
            (args_f, kw_f), (args_q, kw_q) = self._arguments(node, take)
            out_f, out_q = self._run(node.layer, args_f, kw_f, args_q, kw_q)
            for t, yf, yq in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out_f), tf.nest.flatten(out_q)):
                if uses.get(id(t)):
                    values[id(t)] = (yf, yq)
        outs = [take(t) for t in model.outputs]
        return [f for f, _ in outs], [q for _, q in outs]

    @staticmethod
    def _arguments(node, take):
        """The node's (args, kwargs) with its Keras inputs replaced by the float and by
        the quantized values."""
        import tensorflow as tf
        keras_inputs = {id(t) for t in node.keras_inputs}
        flat = tf.nest.flatten((node.call_args, node.call_kwargs))
        taken = [take(a) if id(a) in keras_inputs else None for a in flat]
        return tuple(tf.nest.pack_sequence_as((node.call_args, node.call_kwargs),
                                              [a if v is None else v[i] for a, v in zip(flat, taken)])
                     for i in (0, 1))

    def _run(self, layer, args_f, kw_f, args_q, kw_q):
        import tensorflow as tf
        import tf_keras
        if _is_functional(layer):
            out_f, out_q = self._walk(layer, tf.nest.flatten((args_f, kw_f)), tf.nest.flatten((args_q, kw_q)))
            return tf.nest.pack_sequence_as(layer.output, out_f), tf.nest.pack_sequence_as(layer.output, out_q)
        if id(layer) in self._convs:
            bn = self._convs[id(layer)]
            out_f = layer(*args_f, **kw_f)
            weights = layer.get_weights()
            gamma, _, _, var = bn.get_weights()
            multiplier = gamma / np.sqrt(var + bn.epsilon)
            depthwise = isinstance(layer, tf_keras.layers.DepthwiseConv2D)
            integers = rounding.learned_integers(tf.nest.flatten(args_f)[0].numpy(), layer, multiplier,
                                                 depthwise) if self.learned_rounding else None
            if integers is None:
                layer.set_weights([per_channel_quantized(weights[0], multiplier, depthwise)] + weights[1:])
                try:
                    return out_f, layer(*args_q, **kw_q)
                finally:
                    layer.set_weights(weights)
            # Kept until exit: the converter rounds this kernel to exactly ``integers``.
            self.plan.integers[layer.name] = integers
            self._set_kernel(layer, rounding.kernel_for(integers, weights[0], multiplier, depthwise))
            return out_f, layer(*args_q, **kw_q)
        if id(layer) in self._bns:
            out_f = layer(*args_f, training=False)
            out_q = layer(*args_q, training=False)
            shift = tf.reduce_mean(out_q - out_f, axis=(0, 1, 2)).numpy()
            gamma, beta, mean, var = layer.get_weights()
            self._betas.append((layer, layer.get_weights()))
            layer.set_weights([gamma, beta - shift.astype(beta.dtype), mean, var])
            self.plan.shifts[layer.name] = shift.astype(np.float32)
            self.corrections[layer.name] = float(np.abs(shift).max())
            self._left -= 1
            if self._left == 0:
                raise _Done
            return out_f, out_q - shift
        return layer(*args_f, **kw_f), layer(*args_q, **kw_q)

    def _restore_betas(self):
        for layer, weights in reversed(self._betas + self._kernels):
            layer.set_weights(weights)
        self._betas, self._kernels = [], []

    def __exit__(self, *exc):
        self._restore_betas()
        return False
