"""Per-weights cache of the backbone's int8 quantization plan, beside the weights.

The int8 variant's BatchNorm bias correction (and learned kernel rounding) change
only the frozen backbone, never the head: they depend on the backbone's weights and
on the images they are measured on, so they are measured once and reused by later
exports whatever the head, as long as the weights fingerprint and the method are the
same and the images mostly are (:data:`MIN_OVERLAP` of the content keys of the
images it was measured on).

An entry is one file, ``<weights_dir>/quantization/<backbone>-<group>-<images>.npz``:
``group`` hashes the backbone, its weights fingerprint, the method and
:data:`PLAN_VERSION`; ``images`` hashes the image keys.  The file is a sha256 line of
the payload, then an ``.npz`` of named arrays (``i/<conv layer>`` int8 integers,
``s/<BatchNorm>`` float32 offset shifts, ``e/<BatchNorm>`` float32 ReLU6
range-equalization scales, ``k/images`` uint8 [n, 32] the sha256 keys of the images
measured on, ``g/group`` the group key, so a renamed file is not trusted).  Written
atomically; an entry that is unreadable, too large, fails its digest or does not fit
the model (the caller checks, then :func:`discard`) is measured again, never trusted.
No pickle: ``np.load(allow_pickle=False)``.  At most :data:`MAX_ENTRIES` entries per
group are kept and looked at; a directory listing is read only up to
:data:`MAX_LISTED` names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pathlib
import re
import zipfile
import zlib
from typing import Dict, List, Optional, Sequence

import numpy as np

from components.backbones.fetch import _write_atomically, weights_dir

# Bump when what a plan holds or how it is measured changes: old entries are ignored.
# 2: keyed by weights and method, holding the keys of its images (reused by overlap).
PLAN_VERSION = "int8-plan-2"
MAX_ENTRY_BYTES = 64 * 1024 * 1024  # MobileNet v1's integers are 3.2 MB
# A plan's BatchNorm shifts are per-channel means over the (64) images it was measured
# on.  A rerun with 10 % more training images keeps about 90 % of them
# (convert.calibration_images picks by content), and a plan measured on the old picks
# gave the new model the same int8 agreement as a fresh one (docs/tflite.md,
# benchmarks/int8_plan_reuse.py).  Below 0.8 (roughly a quarter more images since the
# plan was measured) it is measured again, so reuse never drifts far from the data.
MIN_OVERLAP = 0.8
MAX_ENTRIES = 4  # per backbone, weights and method: the newest are kept and looked at
MAX_LISTED = 4096  # directory entries read when looking (a flooded folder costs time only)
MAX_IMAGES = 4096  # image keys in one entry
KEY_BYTES = 32  # sha256


@dataclasses.dataclass(frozen=True)
class Entry:
    """One cached plan, and how much of the current images it was measured on."""
    integers: Dict[str, np.ndarray]  # conv layer -> int8 kernel integers (learned rounding)
    shifts: Dict[str, np.ndarray]  # BatchNorm -> float32 [C] offset shifts
    scales: Dict[str, np.ndarray]  # BatchNorm -> float32 [C] ReLU6 equalization scales
    images: frozenset  # the sha256 hex keys of the images it was measured on
    path: pathlib.Path
    overlap: float  # shared keys / the larger of the two key sets


def group_key(backbone: str, fingerprint: str, method: str) -> str:
    return hashlib.sha256(f"{backbone}\n{fingerprint}\n{method}\n{PLAN_VERSION}".encode()).hexdigest()[:32]


def overlap(measured: frozenset, current: frozenset) -> float:
    """Shared keys over the larger set: a plan measured on far fewer (or more) images
    than the current picks does not count as theirs."""
    return len(measured & current) / max(len(measured), len(current), 1)


def entry_path(backbone: str, fingerprint: str, method: str, images: Sequence[str]) -> pathlib.Path:
    """``images``: the sha256 hex keys of the images the plan is measured on."""
    digest = hashlib.sha256("\n".join(sorted(images)).encode()).hexdigest()[:16]
    return weights_dir() / "quantization" / f"{backbone}-{group_key(backbone, fingerprint, method)}-{digest}.npz"


def find(backbone: str, fingerprint: str, method: str, images: Sequence[str]) -> Optional[Entry]:
    """The cached entry of this backbone's weights and method whose images overlap
    ``images`` the most, if by at least MIN_OVERLAP; None otherwise (corrupt entries
    are skipped)."""
    current = frozenset(images)
    best = None
    group = group_key(backbone, fingerprint, method)
    for path in _entries(backbone, group)[:MAX_ENTRIES]:
        entry = _read(path, group, current)
        if entry is not None and entry.overlap >= MIN_OVERLAP and (best is None or entry.overlap > best.overlap):
            best = entry
    return best


def save(backbone: str, fingerprint: str, method: str, images: Sequence[str], integers: Dict[str, np.ndarray],
         shifts: Dict[str, np.ndarray], scales: Optional[Dict[str, np.ndarray]] = None) -> pathlib.Path:
    """Writes the entry atomically (a reader sees the old entry or the new one), then
    removes the group's oldest entries beyond MAX_ENTRIES."""
    keys = sorted(set(images))
    if not 0 < len(keys) <= MAX_IMAGES:
        raise ValueError(f"a quantization plan needs 1 to {MAX_IMAGES} image keys, got {len(keys)}")
    group = group_key(backbone, fingerprint, method)
    buf = io.BytesIO()
    np.savez(buf, **{f"i/{k}": np.asarray(v, np.int8) for k, v in integers.items()},
             **{f"s/{k}": np.asarray(v, np.float32) for k, v in shifts.items()},
             **{f"e/{k}": np.asarray(v, np.float32) for k, v in (scales or {}).items()},
             **{"k/images": np.frombuffer(b"".join(bytes.fromhex(k) for k in keys), np.uint8).reshape(-1, KEY_BYTES),
                "g/group": np.frombuffer(group.encode(), np.uint8)})
    payload = buf.getvalue()
    path = entry_path(backbone, fingerprint, method, keys)
    _write_atomically(path, hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    for old in _entries(backbone, group)[MAX_ENTRIES:]:
        if old != path:
            discard(old)
    return path


def discard(path: pathlib.Path) -> None:
    """Removes an entry that did not fit the model (a missing one is fine)."""
    try:
        path.unlink()
    except OSError:
        pass


def _entries(backbone: str, group: str) -> List[pathlib.Path]:
    """The group's entry files (regular files named as :func:`entry_path` names them),
    newest first, among the first MAX_LISTED names listed."""
    folder = weights_dir() / "quantization"
    name = re.compile(re.escape(f"{backbone}-{group}-") + r"[0-9a-f]{16}\.npz")
    found = []
    try:
        with os.scandir(folder) as listing:
            for i, item in enumerate(listing):
                if i >= MAX_LISTED:
                    break
                try:
                    if name.fullmatch(item.name) and item.is_file(follow_symlinks=False):
                        found.append((item.stat(follow_symlinks=False).st_mtime_ns, item.name))
                except OSError:  # removed meanwhile (another export pruning)
                    continue
    except OSError:
        return []
    return [folder / n for _, n in sorted(found, reverse=True)]


def _read(path: pathlib.Path, group: str, current: frozenset) -> Optional[Entry]:
    """The entry at ``path``, or None when unreadable, too large, or corrupt (digest,
    format, group, names, shapes or dtypes)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ENTRY_BYTES + 1)
    except OSError:
        return None
    digest, _, payload = data.partition(b"\n")
    if len(data) > MAX_ENTRY_BYTES or digest.decode("ascii", "replace") != hashlib.sha256(payload).hexdigest():
        return None
    arrays: Dict[str, Dict[str, np.ndarray]] = {"i": {}, "s": {}, "e": {}, "k": {}, "g": {}}
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            if sum(member.file_size for member in npz.zip.infolist()) > MAX_ENTRY_BYTES:
                return None  # decompressed, it would not fit the bound either
            for name in npz.files:
                kind, _, layer = name.partition("/")
                value = npz[name]
                if not layer or kind not in arrays or value.dtype != _DTYPES[kind] or \
                        (kind in ("s", "e", "g") and value.ndim != 1) or (kind == "k" and value.ndim != 2):
                    return None
                arrays[kind][layer] = value
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    keys, stored_group = arrays["k"].get("images"), arrays["g"].get("group")
    if keys is None or stored_group is None or stored_group.tobytes() != group.encode() or \
            not arrays["s"] or keys.shape[1] != KEY_BYTES or not 0 < len(keys) <= MAX_IMAGES:
        return None
    measured = frozenset(row.tobytes().hex() for row in keys)
    return Entry(arrays["i"], arrays["s"], arrays["e"], measured, path, overlap(measured, current))


_DTYPES = {"i": np.int8, "s": np.float32, "e": np.float32, "k": np.uint8, "g": np.uint8}
