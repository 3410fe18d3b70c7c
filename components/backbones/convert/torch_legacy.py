"""Legacy (pre-1.6, non-zip) ``torch.save`` state dicts read without torch.

:func:`read_legacy_torch_state_dict` parses the file with a *restricted* unpickler
that resolves only the four globals such a state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch.FloatStorage``, ``torch.LongStorage``), each emulated here; any other global
is refused.  The file is treated as untrusted: no code from it runs.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from typing import Dict

import numpy as np


class WeightsFormatError(ValueError):
    """The file is not the expected legacy PyTorch state dict."""


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
