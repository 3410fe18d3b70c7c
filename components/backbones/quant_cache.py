"""Per-weights cache of the backbone's int8 quantization plan, beside the weights.

The int8 variant's BatchNorm bias correction (and learned kernel rounding) change
only the frozen backbone, never the head: they depend on the backbone's weights and
on the images they are measured on, so they are measured once per (weights
fingerprint, images) and reused by every later export of the same data, whatever
the head.  An entry is one file, ``<weights_dir>/quantization/<backbone>-<key>.npz``:
a sha256 line of the payload, then an ``.npz`` of named arrays (``i/<conv layer>``
int8 integers, ``s/<BatchNorm>`` float32 offset shifts, ``e/<BatchNorm>`` float32
ReLU6 range-equalization scales).  ``key`` hashes the
backbone, its weights fingerprint, the images' digest and :data:`PLAN_VERSION`.  Written atomically; an entry that is unreadable, fails its
digest or does not fit the model (the caller checks) is recomputed, never trusted.
No pickle: ``np.load(allow_pickle=False)``.
"""

from __future__ import annotations

import hashlib
import io
import pathlib
from typing import Dict, Optional, Tuple

import numpy as np

from components.backbones.fetch import _write_atomically, weights_dir

# Bump when what a plan holds or how it is measured changes: old entries are ignored.
PLAN_VERSION = "int8-plan-1"
MAX_ENTRY_BYTES = 64 * 1024 * 1024  # MobileNet v1's integers are 3.2 MB

Arrays = Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], Dict[str, np.ndarray]]  # integers, shifts, scales


def entry_path(backbone: str, fingerprint: str, images: str) -> pathlib.Path:
    """``images``: a digest of the images the plan is measured on."""
    key = hashlib.sha256(f"{backbone}\n{fingerprint}\n{images}\n{PLAN_VERSION}".encode()).hexdigest()[:32]
    return weights_dir() / "quantization" / f"{backbone}-{key}.npz"


def load(backbone: str, fingerprint: str, images: str) -> Optional[Arrays]:
    """The cached (integers, shifts, scales) of this backbone's weights and images, or None
    when absent, too large, or corrupt (digest, format, names or dtypes)."""
    path = entry_path(backbone, fingerprint, images)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ENTRY_BYTES + 1)
    except OSError:
        return None
    digest, _, payload = data.partition(b"\n")
    if len(data) > MAX_ENTRY_BYTES or digest.decode("ascii", "replace") != hashlib.sha256(payload).hexdigest():
        return None
    integers: Dict[str, np.ndarray] = {}
    shifts: Dict[str, np.ndarray] = {}
    scales: Dict[str, np.ndarray] = {}
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            for name in npz.files:
                kind, _, layer = name.partition("/")
                value = npz[name]
                if kind == "i" and layer and value.dtype == np.int8:
                    integers[layer] = value
                elif kind in ("s", "e") and layer and value.dtype == np.float32 and value.ndim == 1:
                    (shifts if kind == "s" else scales)[layer] = value
                else:
                    return None
    except (ValueError, OSError, EOFError):
        return None
    return (integers, shifts, scales) if shifts else None


def save(backbone: str, fingerprint: str, images: str, integers: Dict[str, np.ndarray],
         shifts: Dict[str, np.ndarray], scales: Optional[Dict[str, np.ndarray]] = None) -> pathlib.Path:
    """Writes the entry atomically (a reader sees the old entry or the new one)."""
    buf = io.BytesIO()
    np.savez(buf, **{f"i/{k}": np.asarray(v, np.int8) for k, v in integers.items()},
             **{f"s/{k}": np.asarray(v, np.float32) for k, v in shifts.items()},
             **{f"e/{k}": np.asarray(v, np.float32) for k, v in (scales or {}).items()})
    payload = buf.getvalue()
    path = entry_path(backbone, fingerprint, images)
    _write_atomically(path, hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    return path
