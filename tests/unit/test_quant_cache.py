"""The int8 quantization plan cache beside the weights: content-keyed, verified, atomic."""

import numpy as np

from components.backbones import quant_cache

INTEGERS = {"conv_dw_1": np.arange(-4, 5, dtype=np.int8).reshape(3, 3, 1, 1)}
SHIFTS = {"conv_dw_1_bn": np.array([0.5, -0.25], np.float32)}


def _same(found):
    integers, shifts = found
    return (integers.keys() == INTEGERS.keys() and shifts.keys() == SHIFTS.keys()
            and np.array_equal(integers["conv_dw_1"], INTEGERS["conv_dw_1"])
            and np.array_equal(shifts["conv_dw_1_bn"], SHIFTS["conv_dw_1_bn"]))


def test_an_entry_is_found_only_under_its_weights_fingerprint_and_images(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path))
    path = quant_cache.save("mobilenet_v1", "fp-a", "img-1", INTEGERS, SHIFTS)
    assert path.parent == tmp_path / "weights" / "quantization"
    assert _same(quant_cache.load("mobilenet_v1", "fp-a", "img-1"))
    assert quant_cache.load("mobilenet_v1", "fp-b", "img-1") is None  # other weights
    assert quant_cache.load("mobilenet_v1", "fp-a", "img-2") is None  # other images
    assert quant_cache.load("efficientnet_lite0", "fp-a", "img-1") is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_corrupt_entry_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path))
    path = quant_cache.save("mobilenet_v1", "fp", "img", INTEGERS, SHIFTS)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-20] ^= 0xFF
    digest, _, payload = good.partition(b"\n")
    import hashlib
    import io
    bad_member = io.BytesIO()
    np.savez(bad_member, **{"x/evil": np.zeros(3)})
    forged = bad_member.getvalue()
    for data in (bytes(flipped), good[:len(good) // 2], b"", b"not a digest\n" + payload,
                 hashlib.sha256(forged).hexdigest().encode() + b"\n" + forged):
        path.write_bytes(data)
        assert quant_cache.load("mobilenet_v1", "fp", "img") is None
    path.write_bytes(good)
    assert _same(quant_cache.load("mobilenet_v1", "fp", "img"))
