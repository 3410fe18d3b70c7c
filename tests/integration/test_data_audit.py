"""DataAudit's executor on hand-written Examples and bottlenecks (no backbone run):
paths and pixels come from ImageExampleGen's records, augmented views are left out,
planted flips and a leaked copy are found, a lookalike vector with other pixels is
not, and `retrain audit` reads a corrupt file in one line."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import audit_math, contracts, data_audit, feature_records, pixel_signature
from components.image_example_gen import _example

LABELS = ["cat", "dog", "owl"]


def _write(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for r in records:
            w.write(r)


def _picture(rng, fmt="PNG", side=48, quality=85) -> bytes:
    """A distinct smooth picture (4 x 4 random colours, upscaled)."""
    img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _shrunk_jpeg(data: bytes) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    img.resize((36, 36), Image.BICUBIC).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Examples + bottlenecks of 3 classes x 30 images (real pixels); 3 flipped labels;
    a shrunk JPEG copy of train image cat/3 filed as owl/copy.jpg in eval; a lookalike
    of dog/2 (its vector, other pixels) as owl/lookalike.png; 2 augmented views per
    train image."""
    root = tmp_path_factory.mktemp("audit")
    rng = np.random.default_rng(0)
    centres = np.abs(rng.standard_normal((3, 128))) * 2
    rows = []  # (split, label index, path, vector)
    for c, name in enumerate(LABELS):
        for i in range(30):
            vec = np.abs(centres[c] + 1.5 * rng.standard_normal(128))
            rows.append(("eval" if i % 4 == 0 else "train", c, f"{name}/{i}.png", vec))
    flipped = {"dog/5.png": 0, "owl/7.png": 1, "cat/9.png": 2}
    rows = [(s, flipped.get(p, c), p, v) for s, c, p, v in rows]
    source = next(r for r in rows if r[2] == "cat/3.png")
    assert source[0] == "train"
    rows.append(("eval", 2, "owl/copy.jpg", source[3] * 0.97 + 0.02 * rng.random(128)))
    twin = next(r for r in rows if r[2] == "dog/2.png")
    rows.append((twin[0], 2, "owl/lookalike.png", twin[3] * 0.99 + 0.01 * rng.random(128)))
    pixels = {r[2]: _picture(rng) for r in rows}
    pixels["owl/copy.jpg"] = _shrunk_jpeg(pixels["cat/3.png"])
    examples, bottlenecks = root / "examples", root / "bottlenecks"
    for split in ("train", "eval"):
        mine = [r for r in rows if r[0] == split]
        shas = [f"{hash(r[2]) & 0xFFFFFFFF:064x}" for r in mine]
        # Train as ImageExampleGen writes it (signed); eval unsigned (b"", as Examples
        # written before it signed them): DataAudit signs those itself.
        signed = {p: pixel_signature.to_feature(pixel_signature.signature(pixels[p]) if split == "train" else None)
                  for (_, _, p, _) in mine}
        _write(str(examples / f"Split-{split}" / "data.gz"), [_example({
            "image": pixels[p], "label": c, "label_name": LABELS[c], "relpath": p, "height": 8,
            "width": 8, "sha256": sha, "signature": signed[p]}).SerializeToString()
            for (_, c, p, _), sha in zip(mine, shas)])
        views = 2 if split == "train" else 0
        _write(str(bottlenecks / f"Split-{split}" / "bottlenecks.gz"), [
            feature_records.bottleneck_example(
                {"label": c, "sha": sha, "view": view},
                (v if view == 0 else rng.random(128)).astype("<f4").tobytes())
            for (_, c, _, v), sha in zip(mine, shas) for view in range(views + 1)])
    return examples, bottlenecks, flipped


def test_audit_finds_flips_and_ranks_the_leaked_copy_first(artifacts, tmp_path):
    examples, bottlenecks, flipped = artifacts
    result = data_audit.run_audit(str(bottlenecks), str(examples), ["train", "eval"], LABELS, 20)
    assert result["images"] == 92  # views > 0 left out
    top = [s["path"] for s in result["suspected_mislabels"][:6]]
    assert len(set(top) & set(flipped)) >= 2
    assert all(0 <= s["score"] <= 1 for s in result["suspected_mislabels"])
    assert len(result["suspected_mislabels"]) >= int(np.ceil(0.05 * 92))
    first = result["near_duplicates"][0]
    assert first["paths"] == ["cat/3.png", "owl/copy.jpg"] and first["splits"] == ["train", "eval"]
    assert first["same_label"] is False and first["similarity"] >= audit_math.CANDIDATE_THRESHOLD
    assert first["pixel_rms"][0] <= audit_math.PIXEL_GREY_RMS  # confirmed by the stored pixels
    # The lookalike's vector is as close to dog/2 as the copy's, its pixels are not: no pair.
    assert [p["paths"] for p in result["near_duplicates"]] == [["cat/3.png", "owl/copy.jpg"]]
    assert result["duplicate_rule"]["images_with_pixels"] == 92
    assert result["small_classes"] == {} and result["label_names"] == LABELS
    data_audit.write_audit(str(tmp_path), result)
    assert json.loads((tmp_path / contracts.AUDIT_FILE).read_text()) == result


def test_stored_signatures_are_read_not_recomputed(artifacts, tmp_path):
    """A signed Example's signature is the one DataAudit uses (it does not decode the
    image again); an unsigned one is signed from its image bytes."""
    examples, _, _ = artifacts
    images = data_audit.read_images(str(examples), ["train", "eval"])
    assert len(images) == 92 and all(i.signature is not None for i in images.values())
    planted = np.full(pixel_signature.DIM, 7, np.uint8)
    image = _picture(np.random.default_rng(9))
    for sig, expected in ((planted, planted), (None, pixel_signature.signature(image))):
        _write(str(tmp_path / str(sig is None) / "Split-train" / "data.gz"), [_example({
            "image": image, "label": 0, "label_name": "cat", "relpath": "cat/x.png", "height": 48,
            "width": 48, "sha256": "ab" * 32, "signature": pixel_signature.to_feature(sig)}).SerializeToString()])
        (info,) = data_audit.read_images(str(tmp_path / str(sig is None)), ["train"]).values()
        np.testing.assert_array_equal(info.signature, expected)


def test_read_audit_refuses_a_corrupt_file_in_one_line(tmp_path):
    from pipeline import audit_cli
    assert audit_cli.read_audit(str(tmp_path)) is None  # no audit.json: none
    (tmp_path / contracts.AUDIT_FILE).write_text("{not json")
    with pytest.raises(audit_cli.AuditUnreadable, match="audit.json is not JSON"):
        audit_cli.read_audit(str(tmp_path))
    (tmp_path / contracts.AUDIT_FILE).write_text('{"suspected_mislabels": []}')
    with pytest.raises(audit_cli.AuditUnreadable, match="lacks one of"):
        audit_cli.read_audit(str(tmp_path))
    assert audit_cli.summary_audit(str(tmp_path)) is None  # the run summary goes on without it


def test_the_same_images_in_another_record_order_get_the_same_audit(artifacts, tmp_path):
    """Beam's output order varies between runs: the audit orders rows by content, so
    the regression's folds and every score are the same."""
    examples, bottlenecks, _ = artifacts
    for split in ("train", "eval"):
        records = [r.numpy() for r in tf.data.TFRecordDataset(
            str(bottlenecks / f"Split-{split}" / "bottlenecks.gz"), compression_type="GZIP")]
        _write(str(tmp_path / f"Split-{split}" / "bottlenecks.gz"), records[::-1])
    first = data_audit.run_audit(str(bottlenecks), str(examples), ["train", "eval"], LABELS, 20)
    again = data_audit.run_audit(str(tmp_path), str(examples), ["train", "eval"], LABELS, 20)
    assert again == first
