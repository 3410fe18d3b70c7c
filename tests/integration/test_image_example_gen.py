"""ImageExampleGen, run for real by LocalDagRunner (Beam DirectRunner, MLMD SQLite)."""

import json
import os

import pytest

from components import image_example_gen, image_io, ingest_passes, pixel_signature, progress_counts
from components.image_example_gen import ImageExampleGen
from conftest import png_bytes, read_examples, run_example_gen


def _write(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    images = root / "images"
    for i in range(30):
        _write(images / "ant", f"ant_{i:02d}.png", png_bytes(i))
        _write(images / "bee", f"bee_{i:02d}.png", png_bytes(100 + i, size=(20, 16)))
    _write(images / "ant", "copy_of_ant_00.png", png_bytes(0))          # duplicate, same label
    _write(images / "bee", "zz_conflict.png", png_bytes(5))              # same content as ant_05
    _write(images / "bee", "broken.png", b"\x89PNG\r\n\x1a\nnot really")  # corrupt
    _write(images / "bee", "empty.jpg", b"")
    # Hostile input (issue 17): each is skipped with its reason, none stops the run.
    _write(images / "bee", "huge.png", png_bytes(7))
    os.truncate(images / "bee" / "huge.png", 3 * 1024**3)               # sparse: no disk used
    _write(images / "bee", "pixel.png", png_bytes(8, size=(1, 1)))      # under 16 px
    _write(root / "outside", "elsewhere.png", png_bytes(9))
    (images / "bee" / "link.png").symlink_to(root / "outside" / "elsewhere.png")
    (images / "wasp").mkdir()                                            # empty class folder
    progress = root / "progress"
    os.environ[progress_counts.ENV] = str(progress)  # the live bar's counts, checked below
    try:
        uri = run_example_gen(images, root / "work", ["ant", "bee"])
    finally:
        del os.environ[progress_counts.ENV]
    return root, uri, read_examples(uri)


def test_the_progress_count_reaches_every_file_read(messy_run):
    """Both passes share the bar: pass 1 counts what it cannot read, conflicts are
    counted where they are found, pass 2 a kept file with its duplicates."""
    root, _, _ = messy_run
    stage = progress_counts.read(str(root / "progress"))[image_example_gen.PROGRESS_STAGE]
    assert stage["total"] == 66  # 60 + copy + conflict + broken + empty + huge + pixel
    assert stage["done"] == stage["total"]


def test_features_and_vocabulary(messy_run):
    _, uri, splits = messy_run
    rows = splits["train"] + splits["eval"]
    assert image_example_gen.read_labels(uri) == ["ant", "bee"]
    for r in rows:
        assert ["ant", "bee"][r["label"]] == r["label_name"]
        assert r["path"].startswith(r["label_name"] + "/")
        assert r["image"][:8] == b"\x89PNG\r\n\x1a\n"
        assert r["hw"] == ((24, 32) if r["label_name"] == "ant" else (16, 20))
        # DataAudit's thumbnail, made from the decoded pixels: that of the stored bytes.
        assert r["signature"] == pixel_signature.to_feature(pixel_signature.signature(r["image"]))


def test_examples_hold_the_image_and_the_non_input_keys_alone(messy_run):
    """The serving signature parses every raw feature but contracts.NON_INPUT_KEYS:
    a feature outside both would be required of every serving request."""
    import glob

    import tensorflow as tf
    from components import contracts
    _, uri, _ = messy_run
    files = glob.glob(os.path.join(uri, "Split-train", "*.gz"))
    record = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP")))
    keys = set(tf.train.Example.FromString(record.numpy()).features.feature)
    assert keys == {contracts.IMAGE_KEY, *contracts.NON_INPUT_KEYS}


def test_every_good_image_kept_once_bad_ones_reported(messy_run):
    _, uri, splits = messy_run
    rows = splits["train"] + splits["eval"]
    paths = sorted(r["path"] for r in rows)
    # 60 good files, minus ant_05 and its conflicting copy (both excluded),
    # copy_of_ant_00 collapses into ant_00.
    expected = sorted({f"ant/ant_{i:02d}.png" for i in range(30)} - {"ant/ant_05.png"}
                      | {f"bee/bee_{i:02d}.png" for i in range(30)})
    assert paths == expected
    report = {r["path"]: r for r in image_example_gen.read_report(uri)}
    assert report["ant/copy_of_ant_00.png"]["reason"] == "duplicate of ant/ant_00.png (identical content)"
    assert "label conflict" in report["bee/zz_conflict.png"]["reason"]
    assert "label conflict" in report["ant/ant_05.png"]["reason"]
    assert "corrupt or truncated" in report["bee/broken.png"]["reason"] or \
        "unreadable" in report["bee/broken.png"]["reason"]
    assert report["bee/empty.jpg"]["reason"] == "empty file (0 bytes)"
    assert all(report[p]["status"] == "used" for p in expected)
    assert len(report) == 68  # every file accounted for


def test_hostile_files_skipped_with_reasons(messy_run):
    """A 3 GB file is refused from its stat (never read), a 1x1 image for its
    size, a symlink out of the images root is not followed, an empty class
    folder is reported: all in the ingestion report, none fatal."""
    _, uri, _ = messy_run
    report = {r["path"]: r for r in image_example_gen.read_report(uri)}
    assert report["bee/huge.png"]["reason"] == (
        f"file is {3 * 1024**3} bytes, over the limit of 50000000 (max_file_bytes)")
    assert report["bee/pixel.png"]["reason"] == (
        "1x1 is smaller than the minimum of 16 px on the short side")
    assert report["bee/link.png"]["reason"].startswith("symlink to a file outside the images root")
    assert report["wasp/"]["reason"] == image_io.EMPTY_CLASS_REASON
    assert all(report[p]["status"] == "skipped"
               for p in ("bee/huge.png", "bee/pixel.png", "bee/link.png", "wasp/"))


def test_split_is_a_function_of_content(messy_run, tmp_path):
    _, _, first = messy_run
    first_split = {r["sha"]: s for s in first for r in first[s]}
    assert 0.1 < len(first["eval"]) / len(first_split) < 0.35
    # Same contents under new names, plus new images: old content keeps its split.
    images = tmp_path / "images"
    for i in range(30):
        _write(images / "ant", f"renamed_{29 - i}.png", png_bytes(i))
        _write(images / "bee", f"other_{i}.png", png_bytes(100 + i, size=(20, 16)))
        _write(images / "bee", f"new_{i}.png", png_bytes(500 + i))
    second = read_examples(run_example_gen(images, tmp_path / "work", ["ant", "bee"]))
    second_split = {r["sha"]: s for s in second for r in second[s]}
    common = set(first_split) & set(second_split)
    assert len(common) == 59
    assert all(first_split[h] == second_split[h] for h in common)
    assert len(second_split) == 90


def test_bad_eval_percent_rejected():
    with pytest.raises(ValueError, match="eval_percent"):
        ImageExampleGen(images="/x", label_names=["a", "b"], eval_percent=0,
                        exclude_label_conflicts=True)


def test_ingest_config_is_written_as_before():
    """ImageExampleGen's `ingest_config` in a compiled spec: same keys, same JSON text."""
    gen = ImageExampleGen(images="/images", label_names=["a", "b"], eval_percent=20,
                          exclude_label_conflicts=False, extensions=[".PNG", ".jpg"])
    assert gen.exec_properties["ingest_config"] == json.dumps(
        {"source": "/images", "label_names": ["a", "b"], "max_pixels": 50_000_000,
         "extensions": [".png", ".jpg"], "exclude_label_conflicts": False,
         # added by issue 17 (IngestSettings.ADDED_LATER: older specs still load)
         "max_file_bytes": 50_000_000, "min_image_side": 16, "follow_external_symlinks": False},
        sort_keys=True)


def _pass_two(*groups, threads=1):
    """ImageExampleGen's pass 2 (ingest_passes.DecodeFn) on one batch of groups: (records, report rows)."""
    from apache_beam.pvalue import TaggedOutput
    from components.settings import IngestSettings
    settings = IngestSettings(source="/unused", label_names=("ant", "bee"), max_pixels=image_io.DEFAULT_MAX_PIXELS,
                              extensions=tuple(image_io.DEFAULT_EXTENSIONS), exclude_label_conflicts=True,
                              max_file_bytes=image_io.DEFAULT_MAX_FILE_BYTES,
                              min_image_side=image_io.DEFAULT_MIN_IMAGE_SIDE, follow_external_symlinks=False)
    fn = ingest_passes.DecodeFn({"ant": 0, "bee": 1}, settings, threads)
    fn.setup()
    out = list(fn.process(list(groups)))
    fn.finish_bundle()
    fn.teardown()
    rows = [json.loads(o.value) for o in out if isinstance(o, TaggedOutput) and o.tag == ingest_passes.REPORT_TAG]
    return [o for o in out if not isinstance(o, TaggedOutput)], rows


def test_a_file_changed_between_the_passes_is_skipped_with_its_duplicates(tmp_path):
    """Pass 2 reads each kept file again: bytes that no longer hash to what pass 1
    grouped are not written, and the file and its duplicates say why."""
    path = tmp_path / "ant_1.png"
    path.write_bytes(png_bytes(1))
    sha = image_io.content_hash(png_bytes(1))
    records, rows = _pass_two((sha, ("ant/ant_1.png", "ant", str(path)), [("ant/copy.png", "ant")]))
    assert len(records) == 1 and records[0]["sha256"] == sha and records[0]["image"] == png_bytes(1)
    assert [(r["path"], r["status"]) for r in rows] == [("ant/ant_1.png", "used"), ("ant/copy.png", "skipped")]
    path.write_bytes(png_bytes(2))  # rewritten after pass 1 hashed it
    records, rows = _pass_two((sha, ("ant/ant_1.png", "ant", str(path)), [("ant/copy.png", "ant")]))
    assert records == []
    assert [(r["path"], r["status"]) for r in rows] == [("ant/ant_1.png", "skipped"), ("ant/copy.png", "skipped")]
    assert all(r["reason"] == "the file changed while it was being ingested" for r in rows)


def test_a_corrupt_file_and_its_copies_get_the_same_reason(tmp_path):
    """Duplicates are grouped before decoding: a kept file that fails its check takes
    its identical copies with it, each reported with the check's reason."""
    data = b"\x89PNG\r\n\x1a\nnot really"
    path = tmp_path / "broken.png"
    path.write_bytes(data)
    records, rows = _pass_two((image_io.content_hash(data), ("bee/broken.png", "bee", str(path)),
                               [("bee/broken_copy.png", "bee")]))
    assert records == [] and [r["path"] for r in rows] == ["bee/broken.png", "bee/broken_copy.png"]
    assert len({r["reason"] for r in rows}) == 1 and rows[0]["status"] == "skipped"


def test_pass_two_on_threads_gives_the_same_records_and_rows_in_order(tmp_path):
    """A batch checked on several threads: the same records and report rows, in the
    batch's order, as one thread gives (good, corrupt and changed files mixed)."""
    groups = []
    for i in range(12):
        data = png_bytes(i) if i % 4 else b"\x89PNG\r\n\x1a\nbroken %d" % i
        path = tmp_path / f"img_{i}.png"
        path.write_bytes(data)
        label = ("ant", "bee")[i % 2]
        groups.append((image_io.content_hash(data), (f"{label}/img_{i}.png", label, str(path)),
                       [(f"{label}/copy_{i}.png", label)] if i % 3 == 0 else []))
    (tmp_path / "img_5.png").write_bytes(png_bytes(99))  # changed after pass 1
    one = _pass_two(*groups)
    assert one == _pass_two(*groups, threads=3)
    records, rows = one
    assert [r["relpath"] for r in records] == [f"{('ant', 'bee')[i % 2]}/img_{i}.png"
                                               for i in range(12) if i % 4 and i != 5]
    assert [r["path"].split("/")[1] for r in rows] == [
        name for i in range(12) for name in [f"img_{i}.png"] + ([f"copy_{i}.png"] if i % 3 == 0 else [])]
