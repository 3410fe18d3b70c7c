"""The int8 quantization plan cache beside the weights: keyed by weights and method,
reused by image overlap, verified, atomic, bounded."""

import hashlib
import io
import os

import numpy as np

from components.backbones import quant_cache

INTEGERS = {"conv_dw_1": np.arange(-4, 5, dtype=np.int8).reshape(3, 3, 1, 1)}
SHIFTS = {"conv_dw_1_bn": np.array([0.5, -0.25], np.float32)}
SCALES = {"conv1_bn": np.array([1.0, 12.5], np.float32)}


def _keys(start, stop):
    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, stop)]


IMAGES = _keys(0, 64)


def _same(found):
    return (found.integers.keys() == INTEGERS.keys() and found.shifts.keys() == SHIFTS.keys()
            and found.scales.keys() == SCALES.keys()
            and np.array_equal(found.integers["conv_dw_1"], INTEGERS["conv_dw_1"])
            and np.array_equal(found.shifts["conv_dw_1_bn"], SHIFTS["conv_dw_1_bn"])
            and np.array_equal(found.scales["conv1_bn"], SCALES["conv1_bn"]))


def test_an_entry_is_found_only_under_its_weights_fingerprint_and_method(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path))
    path = quant_cache.save("mobilenet_v1", "fp-a", "bias", IMAGES, INTEGERS, SHIFTS, SCALES)
    assert path.parent == tmp_path / "weights" / "quantization"
    found = quant_cache.find("mobilenet_v1", "fp-a", "bias", IMAGES[::-1])
    assert _same(found) and found.images == frozenset(IMAGES) and found.overlap == 1.0
    assert quant_cache.find("mobilenet_v1", "fp-b", "bias", IMAGES) is None  # other weights
    assert quant_cache.find("mobilenet_v1", "fp-a", "bias+learned", IMAGES) is None  # other method
    assert quant_cache.find("efficientnet_lite0", "fp-a", "bias", IMAGES) is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_plan_is_reused_from_the_overlap_bound_and_measured_again_below(tmp_path, monkeypatch):
    """52 of 64 keys shared (0.81) reuses the entry, 51 (0.797) does not; the entry
    overlapping most wins; a plan on far fewer images is not the current images'."""
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path))
    quant_cache.save("mobilenet_v1", "fp", "bias", IMAGES, INTEGERS, SHIFTS, SCALES)
    assert quant_cache.MIN_OVERLAP == 0.8
    shared_52 = IMAGES[:52] + _keys(100, 112)
    assert quant_cache.find("mobilenet_v1", "fp", "bias", shared_52).overlap == 52 / 64
    assert quant_cache.find("mobilenet_v1", "fp", "bias", IMAGES[:51] + _keys(100, 113)) is None
    assert quant_cache.find("mobilenet_v1", "fp", "bias", IMAGES + _keys(100, 117)) is None  # 64 of 81
    closer = quant_cache.save("mobilenet_v1", "fp", "bias", IMAGES[:60] + _keys(100, 104),
                              {}, {"other": np.zeros(2, np.float32)})
    best = quant_cache.find("mobilenet_v1", "fp", "bias", IMAGES[:58] + _keys(100, 106))
    assert best.path == closer and best.overlap == 62 / 64
    assert quant_cache.find("mobilenet_v1", "fp", "bias", IMAGES[:20]) is None  # 20 / 64


def test_a_corrupt_entry_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path))
    path = quant_cache.save("mobilenet_v1", "fp", "bias", IMAGES, INTEGERS, SHIFTS, SCALES)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-20] ^= 0xFF
    _, _, payload = good.partition(b"\n")
    group = np.frombuffer(quant_cache.group_key("mobilenet_v1", "fp", "bias").encode(), np.uint8)
    keys = np.frombuffer(b"".join(bytes.fromhex(k) for k in IMAGES), np.uint8).reshape(-1, 32)

    def signed(**arrays):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return hashlib.sha256(buf.getvalue()).hexdigest().encode() + b"\n" + buf.getvalue()
    shift = {"s/bn": np.zeros(3, np.float32)}
    for data in (bytes(flipped), good[:len(good) // 2], b"", b"not a digest\n" + payload,
                 signed(**{"x/evil": np.zeros(3)}, **shift, **{"k/images": keys, "g/group": group}),
                 signed(**shift, **{"e/bn": np.zeros((3, 1), np.float64), "k/images": keys, "g/group": group}),
                 signed(**shift, **{"g/group": group}),  # no image keys
                 signed(**shift, **{"k/images": keys[:, :16], "g/group": group}),  # not sha256 keys
                 signed(**shift, **{"k/images": keys.astype(np.int64), "g/group": group}),
                 signed(**shift, **{"k/images": keys, "g/group": group[::-1]}),  # another group's
                 signed(**{"k/images": keys, "g/group": group}),  # no shifts
                 hashlib.sha256(b"PK\x03\x04junk").hexdigest().encode() + b"\nPK\x03\x04junk"):  # not a zip
        path.write_bytes(data)
        assert quant_cache.find("mobilenet_v1", "fp", "bias", IMAGES) is None
    # A compressed member that would inflate past the size bound is not read.
    bomb = io.BytesIO()
    np.savez_compressed(bomb, **shift, **{"e/bn": np.zeros(quant_cache.MAX_ENTRY_BYTES // 4, np.float32),
                                          "k/images": keys, "g/group": group})
    assert len(bomb.getvalue()) < 1_000_000
    path.write_bytes(hashlib.sha256(bomb.getvalue()).hexdigest().encode() + b"\n" + bomb.getvalue())
    assert quant_cache.find("mobilenet_v1", "fp", "bias", IMAGES) is None
    # Another group's valid entry renamed into this group is not trusted either.
    other = quant_cache.save("mobilenet_v1", "fp-other", "bias", IMAGES, INTEGERS, SHIFTS, SCALES)
    os.replace(other, path)
    assert quant_cache.find("mobilenet_v1", "fp", "bias", IMAGES) is None
    path.write_bytes(good)
    assert _same(quant_cache.find("mobilenet_v1", "fp", "bias", IMAGES))


def test_the_entries_are_bounded_and_a_hostile_folder_is_only_skipped(tmp_path, monkeypatch):
    """At most MAX_ENTRIES per group are kept (the oldest go); links, folders and
    foreign names in the cache folder are never read nor removed."""
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path))
    folder = tmp_path / "weights" / "quantization"
    folder.mkdir(parents=True)
    outside = tmp_path / "secret.npz"
    outside.write_bytes(b"not yours")
    group = quant_cache.group_key("mobilenet_v1", "fp", "bias")
    (folder / f"mobilenet_v1-{group}-{'0' * 16}.npz").symlink_to(outside)
    (folder / f"mobilenet_v1-{group}-{'1' * 16}.npz").mkdir()
    (folder / "unrelated.txt").write_text("kept")
    paths = []
    for i in range(quant_cache.MAX_ENTRIES + 2):
        paths.append(quant_cache.save("mobilenet_v1", "fp", "bias", _keys(100 * i, 100 * i + 64),
                                      INTEGERS, SHIFTS, SCALES))
        os.utime(paths[-1], ns=(i * 10**9, i * 10**9))  # distinct ages, oldest first
    assert [p.exists() for p in paths] == [False, False] + [True] * quant_cache.MAX_ENTRIES
    assert quant_cache.find("mobilenet_v1", "fp", "bias", _keys(100, 164)) is None  # removed
    assert quant_cache.find("mobilenet_v1", "fp", "bias", _keys(500, 564)).path == paths[-1]
    assert outside.read_bytes() == b"not yours" and (folder / "unrelated.txt").exists()
    assert (folder / f"mobilenet_v1-{group}-{'1' * 16}.npz").is_dir()
