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

from components import contracts

KEY_BYTES = 64  # hex sha256


def cache_record(key: bytes, features: bytes) -> bytes:
    return key + features


def parse_cache_record(record: bytes) -> Tuple[bytes, bytes]:
    """A cache record -> (key, float32 little-endian feature bytes)."""
    if len(record) <= KEY_BYTES or (len(record) - KEY_BYTES) % 4:
        raise ValueError(f"malformed feature-cache record of {len(record)} bytes: "
                         f"expected a {KEY_BYTES}-byte key and float32 features")
    return record[:KEY_BYTES], record[KEY_BYTES:]


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
