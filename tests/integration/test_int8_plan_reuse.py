"""A scheduled rerun with a few more images reuses the int8 quantization plan.

The calibration picks are a content order (smallest keys), so new images displace
only the picks they undercut; the plan cache (components/backbones/quant_cache.py)
reuses an entry whose images overlap the current picks by MIN_OVERLAP.  Tiny data:
PNGs of 32 x 24 pixels, a 16 x 16 conv/BN model that converts in a second.
"""

import hashlib

import numpy as np
import tensorflow as tf

from components import contracts
from components.backbones import quant_cache
from components.tflite import convert
from conftest import png_bytes, synthetic_images, tiny_conv_bn_model


def _write(path, rows):
    """Raw Examples as ImageExampleGen writes them: image, label, content_sha256
    (the original file's hash: here not the stored bytes' hash, so the test sees
    which one orders the picks)."""
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for image, key in rows:
            w.write(tf.train.Example(features=tf.train.Features(feature={
                contracts.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                contracts.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
                contracts.CONTENT_SHA256_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
            })).SerializeToString())
    return str(path)


def _rows(seeds):
    return [(png_bytes(s), hashlib.sha256(b"original %d" % s).hexdigest()) for s in seeds]


def test_calibration_picks_are_the_smallest_content_keys_and_survive_added_images(tmp_path):
    """60 images, 20 picks; 6 new images (+10 %) displace only picks they undercut, so
    the overlap is 20 minus the new images picked (here >= 0.8); the order of the
    records does not matter; without content_sha256 the image bytes' hash orders."""
    first, added = _rows(range(60)), _rows(range(60, 66))
    picks = convert.calibration_images([_write(tmp_path / "a.gz", first)], 20)
    expected = [image for image, _ in sorted(first, key=lambda r: r[1])[:20]]
    assert picks == expected
    rerun = convert.calibration_images([_write(tmp_path / "b.gz", added[:3]),
                                        _write(tmp_path / "c.gz", (first + added[3:])[::-1])], 20)
    new_images = {image for image, _ in added}
    assert set(rerun) - set(picks) <= new_images
    assert len(set(rerun) & set(picks)) == 20 - len(set(rerun) & new_images) >= 16
    assert convert.calibration_images([_write(tmp_path / "a.gz", first)], 0) == []
    assert len(convert.calibration_images([str(tmp_path / "a.gz")], 100)) == 60
    # Examples without the content hash (older or hand-written): the image bytes' sha256.
    plain = tf.train.Example(features=tf.train.Features(feature={
        contracts.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"xyz"]))}))
    assert convert.content_key(plain.SerializeToString()) == (hashlib.sha256(b"xyz").hexdigest(), b"xyz")


def test_a_rerun_with_a_tenth_more_images_reuses_the_plan_and_a_larger_change_does_not(tmp_path, monkeypatch):
    """Plan measured on 100 calibration images (the 64 with the smallest pixel keys);
    110 (+10 %): the entry is reused, not rewritten; 150 (+50 %): overlap below
    MIN_OVERLAP, measured again into its own entry."""
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path))
    model = tiny_conv_bn_model()
    images = synthetic_images(150, 16, seed=3)
    cache = convert.PlanCache("tiny", "fp")
    folder = tmp_path / "weights" / "quantization"

    def export(n):
        return convert.convert(model, "int8", lambda: iter(images[:n]), plan_cache=cache)

    def picks(n):
        return frozenset(convert.correction_images(images[:n]))
    assert len(picks(100)) == convert.BIAS_CORRECTION_IMAGES
    export(100)
    (entry,) = folder.iterdir()
    stamp = entry.stat().st_mtime_ns
    assert quant_cache.overlap(picks(100), picks(110)) >= quant_cache.MIN_OVERLAP
    export(110)
    assert list(folder.iterdir()) == [entry] and entry.stat().st_mtime_ns == stamp
    assert quant_cache.find("tiny", "fp", "bias", sorted(picks(110))).images == picks(100)
    assert quant_cache.overlap(picks(100), picks(150)) < quant_cache.MIN_OVERLAP
    export(150)
    assert len(list(folder.iterdir())) == 2
    assert quant_cache.find("tiny", "fp", "bias", sorted(picks(150))).images == picks(150)
    # Other weights never see these entries (tests/integration/test_tflite_export.py too).
    assert quant_cache.find("tiny", "fp-new", "bias", sorted(picks(110))) is None
