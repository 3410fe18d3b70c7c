"""The two record formats BottleneckGen writes, encoded by hand for speed.

* FeatureCache records: the 64-byte hex cache key, then the float32 vector,
  little-endian (as gzip'd tf.Examples, writing and reading them cost about 1 s
  a run here). A layout change must bump bottleneck_gen.CACHE_FORMAT_VERSION, so
  older caches miss instead of being misparsed.
* Bottleneck tf.Examples (``features``, ``label``, ``content_sha256``, ``view``),
  serialised directly: the features bytes already are a packed FloatList's
  payload (tf.train.FloatList(value=...) costs ~0.1 ms a row).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from components import contracts

KEY_BYTES = 64  # hex sha256


def cache_record(key: bytes, features: bytes) -> bytes:
    return key + features


def parse_cache_record(record: bytes, dtype: str = "<f4") -> Tuple[bytes, bytes]:
    """A cache record -> (key, little-endian feature bytes: float32, or float16 when
    ``dtype`` is "<f2", a fine-tuning cache's cut activations)."""
    itemsize = np.dtype(dtype).itemsize
    if len(record) <= KEY_BYTES or (len(record) - KEY_BYTES) % itemsize:
        raise ValueError(f"malformed feature-cache record of {len(record)} bytes: "
                         f"expected a {KEY_BYTES}-byte key and float{8 * itemsize} features")
    return record[:KEY_BYTES], record[KEY_BYTES:]


def cache_dtype(activation_dtype: str, trainable_blocks: int) -> str:
    """NumPy dtype of a cached vector: float32, or float16 for a float16 cut activation
    (fine-tuning, components/fine_tune.py)."""
    return "<f2" if trainable_blocks and activation_dtype == "float16" else "<f4"


def as_float32(features: bytes, dtype: str) -> bytes:
    """Cached vector bytes -> the float32 bytes a bottleneck tf.Example carries."""
    return features if dtype == "<f4" else np.frombuffer(features, dtype).astype("<f4").tobytes()


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(name: str, kind: int, payload: bytes) -> bytes:
    """One Features.feature map entry; kind: 1 BytesList, 2 FloatList, 3 Int64List."""
    return _field(1, _field(1, name.encode()) + _field(2, _field(kind, _field(1, payload))))


def bottleneck_example(record: Dict, features: bytes) -> bytes:
    """The serialised bottleneck tf.Example of `record` (label, sha, view) and its features."""
    return _field(1, b"".join((
        _feature(contracts.FEATURES_KEY, 2, features),
        _feature(contracts.LABEL_KEY, 3, _varint(record["label"])),
        _feature(contracts.CONTENT_SHA256_KEY, 1, record["sha"].encode()),
        _feature("view", 3, _varint(record["view"])))))
