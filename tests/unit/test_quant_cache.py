"""The int8 quantization plan cache beside the weights: content-keyed, verified, atomic."""

import numpy as np

from components.backbones import quant_cache

INTEGERS = {"conv_dw_1": np.arange(-4, 5, dtype=np.int8).reshape(3, 3, 1, 1)}
SHIFTS = {"conv_dw_1_bn": np.array([0.5, -0.25], np.float32)}
SCALES = {"conv1_bn": np.array([1.0, 12.5], np.float32)}


def _same(found):
    integers, shifts, scales = found
    return (integers.keys() == INTEGERS.keys() and shifts.keys() == SHIFTS.keys() and scales.keys() == SCALES.keys()
            and np.array_equal(integers["conv_dw_1"], INTEGERS["conv_dw_1"])
            and np.array_equal(shifts["conv_dw_1_bn"], SHIFTS["conv_dw_1_bn"])
            and np.array_equal(scales["conv1_bn"], SCALES["conv1_bn"]))


def test_an_entry_is_found_only_under_its_weights_fingerprint_and_images(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path))
    path = quant_cache.save("mobilenet_v1", "fp-a", "img-1", INTEGERS, SHIFTS, SCALES)
    assert path.parent == tmp_path / "weights" / "quantization"
    assert _same(quant_cache.load("mobilenet_v1", "fp-a", "img-1"))
    assert quant_cache.load("mobilenet_v1", "fp-b", "img-1") is None  # other weights
    assert quant_cache.load("mobilenet_v1", "fp-a", "img-2") is None  # other images
    assert quant_cache.load("efficientnet_lite0", "fp-a", "img-1") is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_corrupt_entry_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path))
    path = quant_cache.save("mobilenet_v1", "fp", "img", INTEGERS, SHIFTS, SCALES)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-20] ^= 0xFF
    digest, _, payload = good.partition(b"\n")
    import hashlib
    import io
    bad_member = io.BytesIO()
    np.savez(bad_member, **{"x/evil": np.zeros(3)})
    forged = bad_member.getvalue()
    bad_scales = io.BytesIO()
    np.savez(bad_scales, **{"s/bn": np.zeros(3, np.float32), "e/bn": np.zeros((3, 1), np.float64)})
    forged_scales = bad_scales.getvalue()
    for data in (bytes(flipped), good[:len(good) // 2], b"", b"not a digest\n" + payload,
                 hashlib.sha256(forged).hexdigest().encode() + b"\n" + forged,
                 hashlib.sha256(forged_scales).hexdigest().encode() + b"\n" + forged_scales):
        path.write_bytes(data)
        assert quant_cache.load("mobilenet_v1", "fp", "img") is None
    path.write_bytes(good)
    assert _same(quant_cache.load("mobilenet_v1", "fp", "img"))
