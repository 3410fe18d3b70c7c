"""Learned rounding of int8 convolution kernels (AdaRound's layer objective, solved greedily).

The converter folds each BatchNorm into the convolution before it and rounds the
folded kernel to int8 per output channel (scale max|w| / 127), each weight to the
nearest step.  Rounding each weight to nearest does not minimise the error of the
layer's *output*: for MobileNet v1's conv_dw_1 the large taps (about +-12.5) nearly
cancel and the rounding errors of the small ones add up.  For each output channel
the output error over input patches X is ``d' H d`` with ``d`` the rounding error
and ``H = X' X`` (Nagel et al. 2020, "Up or down? Adaptive rounding", eq. 20); with
X centred, as here, that is the error's variance (bias correction removes its mean).
:func:`learned_integers` chooses floor or ceiling for every weight by coordinate
descent on that quadratic, starting from nearest; the weight that sets the scale
keeps its +-127 so the converter's scale is unchanged.  :func:`kernel_for` turns the
integers back into a Keras kernel that the converter rounds to exactly them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# Hessian rows (patches) at most, spread over the calibration images: bounds memory/time.
MAX_PATCHES = 40_000
SWEEPS = 2


def folded_scale(kernel: np.ndarray, multiplier: np.ndarray, depthwise: bool):
    """(folded kernel / scale, scale, multiplier broadcast): the converter's per-channel
    int8 view of ``kernel`` with the BatchNorm multiplier folded in."""
    m = multiplier[None, None, :, None] if depthwise else multiplier[None, None, None, :]
    folded = kernel.astype(np.float64) * m
    scale = np.abs(folded).max(axis=(0, 1, 3) if depthwise else (0, 1, 2), keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    return folded / scale, scale, m


def kernel_for(integers: np.ndarray, kernel: np.ndarray, multiplier: np.ndarray, depthwise: bool) -> np.ndarray:
    """The Keras kernel whose folded, per-channel int8 rounding is ``integers``."""
    _, scale, m = folded_scale(kernel, multiplier, depthwise)
    q = integers.astype(np.float64) * scale
    return np.where(m == 0, kernel, q / np.where(m == 0, 1.0, m)).astype(kernel.dtype)


def _patches(inputs: np.ndarray, layer, rng) -> Optional[np.ndarray]:
    """[P, kh * kw, C] input patches of ``layer`` (a conv in the same order as its
    kernel's leading axes), at most MAX_PATCHES of them; None for dilated, grouped or
    depth-multiplied convs."""
    import tensorflow as tf
    kh, kw = layer.kernel_size
    if tuple(layer.dilation_rate) != (1, 1) or getattr(layer, "groups", 1) != 1 \
            or getattr(layer, "depth_multiplier", 1) != 1:
        return None
    sh, sw = layer.strides
    per_image = MAX_PATCHES // max(len(inputs), 1) + 1
    out = []
    for i in range(0, len(inputs), 8):
        p = tf.image.extract_patches(inputs[i:i + 8], sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1],
                                     rates=[1, 1, 1, 1], padding=layer.padding.upper()).numpy()
        n, h, w, _ = p.shape
        p = p.reshape(n, h * w, kh * kw, inputs.shape[-1])
        pick = rng.choice(h * w, min(per_image, h * w), replace=False)
        out.append(p[:, pick].reshape(-1, kh * kw, inputs.shape[-1]))
    return np.concatenate(out)


def learned_integers(inputs: np.ndarray, layer, multiplier: np.ndarray, depthwise: bool) -> Optional[np.ndarray]:
    """int8 integers (the kernel's shape) minimising the layer's output error on
    ``inputs`` (the layer's float input activations [N, H, W, C]); None when the
    layer's shape is not handled (dilated or grouped)."""
    rng = np.random.default_rng(0)
    kernel = layer.get_weights()[0]
    x, _, _ = folded_scale(kernel, multiplier, depthwise)
    patches = _patches(np.asarray(inputs, np.float32), layer, rng)
    if patches is None:
        return None
    kh, kw, cin, cout = kernel.shape
    # Centred: the mean of the output error is removed afterwards (bias correction),
    # so what rounding must minimise is its variance.
    p = patches.astype(np.float64)
    p -= p.mean(axis=0, keepdims=True)
    if depthwise:  # one [k, k] Hessian per channel; x: [C, k]
        hess = np.einsum("pkc,plc->ckl", p, p)
        x = x.reshape(kh * kw, cin).T
    else:  # one shared [D, D] Hessian; x: [Cout, D]
        flat = p.reshape(len(p), kh * kw * cin)
        hess = (flat.T @ flat)[None]
        x = x.reshape(kh * kw * cin, cout).T
    n = np.clip(np.round(x), -127, 127)
    floor = np.floor(x)
    pinned = np.abs(n) == 127  # the weights that set the scale keep it
    d = n - x
    grad = np.einsum("ckl,cl->ck", hess, d) if depthwise else d @ hess[0]
    diag = np.diagonal(hess, axis1=1, axis2=2)  # [1 or C, D]
    for _ in range(SWEEPS):
        changed = 0
        for i in range(x.shape[1]):
            alt = np.where(n[:, i] == floor[:, i], floor[:, i] + 1, floor[:, i])
            step = np.clip(alt, -127, 127) - n[:, i]
            gain = 2 * step * grad[:, i] + step * step * diag[:, i]
            take = (gain < -1e-12) & ~pinned[:, i]
            if not take.any():
                continue
            changed += int(take.sum())
            step = np.where(take, step, 0.0)
            n[:, i] += step
            grad += step[:, None] * (hess[:, :, i] if depthwise else hess[0, i][None, :])
        if not changed:
            break
    n = n.T.reshape(kh, kw, cin, 1) if depthwise else n.T.reshape(kh, kw, cin, cout)
    return n.astype(np.int8)
