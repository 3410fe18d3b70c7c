"""Ingestion checks kept between runs (components/ingest_checks.py): ImageExampleGen
run for real (LocalDagRunner, Beam DirectRunner, MLMD SQLite), twice on one root."""

import gzip
import io
import os

import numpy as np
import pytest
from PIL import Image

from components import contracts, image_example_gen, ingest_checks, pixel_signature, previous_artifacts
from conftest import png_bytes, read_examples, run_example_gen


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _bmp(seed: int) -> bytes:  # not a format TF decodes: re-encoded as PNG every run
    buf = io.BytesIO()
    Image.open(io.BytesIO(png_bytes(seed))).save(buf, "BMP")
    return buf.getvalue()


def _write(images, files):
    for rel, data in files.items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).write_bytes(data)


def _counts(uri):
    """ImageExampleGen's images_decoded / images_reused_checks of the Examples at uri (MLMD)."""
    import sqlite3
    db = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(uri)))), "mlmd.sqlite")
    rows = sqlite3.connect(db).execute(
        "SELECT p.name, p.int_value FROM ArtifactProperty p JOIN Artifact a ON a.id = p.artifact_id "
        "WHERE a.uri = ? AND p.name LIKE 'images_%'", (uri,)).fetchall()
    return dict(rows)


def _by_sha(uri):
    return {r["sha"]: r for rows in read_examples(uri).values() for r in rows}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Run 1 on PNGs, JPEGs, BMPs, a corrupt file and a duplicate; run 2 after one image
    was added, one rewritten and one removed."""
    root = tmp_path_factory.mktemp("checks")
    images, work = root / "images", root / "work"
    files = {f"ant/a{i}.png": png_bytes(i) for i in range(6)}
    files.update({f"bee/b{i}.jpg": _jpeg(i) for i in range(6)})
    files.update({"ant/odd.bmp": _bmp(50), "bee/broken.png": b"\x89PNG\r\n\x1a\nnot really",
                  "bee/copy_of_b0.jpg": _jpeg(0)})
    _write(images, files)
    where = ingest_checks.location(str(work / "root"), "examplegen-test")
    first = run_example_gen(images, work, ["ant", "bee"], checks_location=where)
    _write(images, {"ant/new.png": png_bytes(77), "bee/b1.jpg": _jpeg(101)})  # added, rewritten
    (images / "ant" / "a5.png").unlink()
    second = run_example_gen(images, work, ["ant", "bee"], checks_location=where)
    return {"images": images, "work": work, "where": where, "first": first, "second": second}


def test_a_rerun_decodes_only_new_and_changed_content_and_writes_the_same_records(two_runs):
    first, second = two_runs["first"], two_runs["second"]
    # Run 1 decoded the 13 distinct images it accepted (the copy is a duplicate, the
    # corrupt file rejected). Run 2: the 10 unchanged PNGs and JPEGs come from run 1's
    # checks; the new image, the rewritten one and the BMP (re-encoded: never kept) are decoded.
    assert _counts(first) == {"images_decoded": 13, "images_reused_checks": 0}
    assert _counts(second) == {"images_decoded": 3, "images_reused_checks": 10}
    a, b = _by_sha(first), _by_sha(second)
    assert len(b) == 13 and len(set(a) & set(b)) == 11  # the old b1 and a5 gone, new and b1' in
    for sha in set(a) & set(b):
        assert a[sha] == b[sha]  # every feature, the image bytes and pixel signature included
    for r in b.values():  # the checks' signature is the one the stored bytes give
        assert r["signature"] == pixel_signature.to_feature(pixel_signature.signature(r["image"]))
    reasons = [{r["path"]: r["reason"] for r in image_example_gen.read_report(uri)} for uri in (first, second)]
    assert reasons[1]["bee/broken.png"] == reasons[0]["bee/broken.png"]  # judged again, the same way
    assert reasons[1]["bee/copy_of_b0.jpg"] == "duplicate of bee/b0.jpg (identical content)"


def test_each_run_that_decoded_records_its_checks_and_they_hold_kept_originals_alone(two_runs):
    records = previous_artifacts.records(two_runs["where"], previous_artifacts.INGEST_CHECKS)
    assert len(records) == 2
    latest = previous_artifacts.latest(two_runs["where"], previous_artifacts.INGEST_CHECKS)
    assert latest["uri"] == two_runs["second"]
    with gzip.open(os.path.join(two_runs["second"], contracts.INGEST_CHECKS_FILE), "rt") as f:
        checks = ingest_checks.parse(f)
    examples = _by_sha(two_runs["second"])
    bmp = next(sha for sha, r in examples.items() if r["path"] == "ant/odd.bmp")
    assert set(checks) == set(examples) - {bmp}  # the re-encoded BMP is decoded every run
    for sha, check in checks.items():
        r = examples[sha]
        assert (check.height, check.width, check.signature) == (*r["hw"], r["signature"])


def test_the_same_images_again_decode_nothing_and_add_no_record(two_runs):
    third = run_example_gen(two_runs["images"], two_runs["work"], ["ant", "bee"],
                            checks_location=two_runs["where"])
    assert _counts(third) == {"images_decoded": 1, "images_reused_checks": 12}  # the BMP alone
    assert len(previous_artifacts.records(two_runs["where"], previous_artifacts.INGEST_CHECKS)) == 3
    assert _by_sha(third) == _by_sha(two_runs["second"])


def test_other_limits_invalidate_the_checks(two_runs, tmp_path):
    """min_image_side is part of the key: another value decodes (and judges) every image again."""
    uri = run_example_gen(two_runs["images"], two_runs["work"], ["ant", "bee"],
                          checks_location=two_runs["where"], min_image_side=30)
    counts = _counts(uri)
    assert counts["images_reused_checks"] == 0
    kept = _by_sha(uri)
    assert all(min(r["hw"]) >= 30 for r in kept.values())
    assert {r["path"] for r in image_example_gen.read_report(uri) if r["reason"] and "smaller" in r["reason"]}


def test_a_damaged_checks_file_is_ignored_and_every_image_decoded(tmp_path):
    images, work = tmp_path / "images", tmp_path / "work"
    _write(images, {**{f"ant/a{i}.png": png_bytes(i) for i in range(3)},
                    **{f"bee/b{i}.png": png_bytes(10 + i) for i in range(3)}})
    where = ingest_checks.location(str(work / "root"), "examplegen-test")
    first = run_example_gen(images, work, ["ant", "bee"], checks_location=where)
    path = os.path.join(first, contracts.INGEST_CHECKS_FILE)
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    short = ingest_checks.line("f" * 64, ingest_checks.Check(24, 32, b"\0" * 10))  # not a signature
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines + [short]))
    second = run_example_gen(images, work, ["ant", "bee"], checks_location=where)
    assert _counts(second) == {"images_decoded": 6, "images_reused_checks": 0}
    assert _by_sha(second) == _by_sha(first)
    open(path, "wb").write(b"not gzip at all")
    assert ingest_checks.load(where, ingest_checks.key(50_000_000, 16)) != {}  # the second run's
    os.remove(os.path.join(second, contracts.INGEST_CHECKS_FILE))  # its record is skipped: the first's is garbage
    assert ingest_checks.load(where, ingest_checks.key(50_000_000, 16)) == {}
