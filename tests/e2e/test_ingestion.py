"""Messy real-world folders: every file used or skipped with a reason, nothing lost.

The folder is generated here with Pillow (no committed binaries). One pipeline
run must complete on it with exactly the good files as examples; then a new
class appearing, and a class's share collapsing, each stop the next run before
Transform with a message naming the class.
"""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from components import image_io
from components.contracts import LABEL_CHECK_FILE
from components.image_example_gen import read_report
from components.label_guard import check
from pipeline import cli, run_record
from pipeline.config import PipelineConfig

pytestmark = pytest.mark.slow


def _img(seed, size=(48, 40), mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    # Smooth it a little so JPEG/WebP behave like photos, not noise.
    arr = (arr // 64 * 64 + 32).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def _save(path, img, fmt, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def make_messy_folder(root):
    """Returns {relative path: expected reason substring, or None if used}."""
    cat, dog = root / "cat", root / "dog"
    expect = {}

    def good(rel, img, fmt, **kw):
        _save(root / rel, img, fmt, **kw)
        expect[rel] = None

    good("cat/rgb.jpg", _img(1), "JPEG")
    good("cat/cmyk.jpg", _img(2).convert("CMYK"), "JPEG")
    good("cat/progressive.jpg", _img(3), "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    good("cat/phone_rotated.jpg", _img(4, size=(60, 30)), "JPEG", exif=exif.tobytes())
    good("cat/grey.png", _img(5, mode="L"), "PNG")
    good("cat/palette.png", _img(6).convert("P"), "PNG")
    rgba = _img(7).convert("RGBA")
    rgba.putalpha(128)
    good("cat/alpha.png", rgba, "PNG")
    good("cat/deep16.png", Image.fromarray(
        (np.arange(40 * 48).reshape(40, 48) * 30).astype(np.uint16)), "PNG")
    frames = [_img(8).convert("P"), _img(9).convert("P")]
    _save(cat / "anim.gif", frames[0], "GIF", save_all=True, append_images=frames[1:])
    expect["cat/anim.gif"] = None
    good("cat/pic.bmp", _img(10), "BMP")
    good("cat/pic.webp", _img(11), "WEBP", quality=90)
    good("cat/pic.tiff", _img(12), "TIFF")
    good("cat/SHOUTING.JPG", _img(13), "JPEG")
    good("cat/ñandú_猫.png", _img(14), "PNG")
    good("cat/nested/deeper/inner.png", _img(15), "PNG")
    for i in range(8):
        good(f"dog/dog_{i}.png", _img(100 + i), "PNG")

    def bad(rel, data, reason):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        expect[rel] = reason

    full = (root / "cat/rgb.jpg").read_bytes()
    bad("cat/zero.jpg", b"", "empty file")
    bad("cat/half_synced.jpg", full[: len(full) // 2], "corrupt or truncated")
    bad("cat/notes.png", b"shopping list: milk, eggs", "not a recognised image format")
    bad("cat/noise.jpg", np.random.default_rng(0).bytes(5000), "not a recognised image format")
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, "PNG", optimize=True)
    bad("cat/bomb.png", bomb.getvalue(), "exceeds the limit")
    bad("cat/.DS_Store", b"\0\0\0\1Bud1", "hidden")
    bad("cat/readme.txt", b"about these photos", "unsupported extension")
    bad("cat/same_as_rgb.jpg", full, "duplicate of cat/rgb.jpg")
    conflict = (root / "dog/dog_0.png").read_bytes()
    bad("cat/also_a_dog.png", conflict, "label conflict")
    expect["dog/dog_0.png"] = "label conflict"
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "t.png").write_bytes(conflict)
    expect[".thumbnails/"] = "hidden folder"
    os.symlink(cat, cat / "loop")
    expect["cat/loop"] = "symlinked folder not followed"
    # Issue 17: a 1x1 image, a symlink out of the images root, an empty class
    # folder: skipped and reported, the run goes on (a file over max_file_bytes:
    # tests/integration/test_image_example_gen.py; copying this tree would fill it).
    pixel = io.BytesIO()
    _img(16, size=(1, 1)).save(pixel, "PNG")
    bad("cat/pixel.png", pixel.getvalue(), "1x1 is smaller than the minimum of 16 px")
    _save(root.parent / "outside" / "elsewhere.png", _img(17), "PNG")
    os.symlink(root.parent / "outside" / "elsewhere.png", cat / "elsewhere.png")
    expect["cat/elsewhere.png"] = "symlink to a file outside the images root"
    (root / "empty_class").mkdir()
    expect["empty_class/"] = "empty class folder"
    return expect


@pytest.fixture(scope="module")
def messy(tmp_path_factory, imagenet_weights):
    root = tmp_path_factory.mktemp("messy")
    images = root / "images"
    expect = make_messy_folder(images)
    config = PipelineConfig(images=str(images), workdir=str(root / "work"),
                            min_images_per_class=5, min_accuracy=0.0, epochs=5)
    from pipeline import local_runner
    summary = local_runner.run(config)
    return root, images, expect, config, summary


def test_every_file_classified_and_good_ones_all_trained_on(messy):
    _, _, expect, _, summary = messy
    report = {r["path"]: r for r in read_report(os.path.dirname(summary["ingestion_report"]))}
    assert set(report) == set(expect)
    for path, reason in expect.items():
        row = report[path]
        if reason is None:
            assert row["status"] == "used", (path, row)
        else:
            assert row["status"] == "skipped" and reason in row["reason"], (path, row)
    good = sum(1 for r in expect.values() if r is None)
    assert sum(summary["examples"].values()) == good
    assert summary["skipped_files"] == len(expect) - good
    assert summary["states"]["Transform"] == "COMPLETE" and summary["blessed"]


def _run_cli(capsys, images, workdir, *extra, subprocess_run=False):
    """(exit code, stderr less the empty-class warning the messy folder always gets).
    --quiet: no progress lines, so what is left is the error line alone.
    subprocess_run: as a user runs it, so every byte a library writes to stderr
    (a logging handler bound to the real stream included) is seen."""
    argv = ["run", "--images", str(images), "--workdir", str(workdir),
            "--min-images-per-class", "5", "--min-accuracy", "0", "--epochs", "5",
            "--quiet", *extra]
    if subprocess_run:
        import subprocess
        import sys
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True,
                              text=True, timeout=900,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        code, err = proc.returncode, proc.stderr
    else:
        code = cli.main(argv)
        err = capsys.readouterr().err
    warning = "retrain: warning: empty class folder(s) skipped: 'empty_class'\n"
    assert err.startswith(warning), err[:500]
    return code, err[len(warning):]


def _transform_ran_in_latest_run(config):
    return "Transform" in run_record.latest(config).states


def test_new_class_stops_next_run_naming_it(messy, capsys, tmp_path):
    root, images, _, config, _ = messy
    more = tmp_path / "images"
    shutil.copytree(images, more, symlinks=True)
    for i in range(6):
        _save(more / "bird" / f"b{i}.png", _img(300 + i), "PNG")
    code, err = _run_cli(capsys, more, config.workdir)
    assert code == 2, err
    assert "class 'bird' is new" in err and err.count("\n") == 1
    assert not _transform_ran_in_latest_run(config)


def test_class_share_collapse_stops_next_run(messy, capsys, tmp_path):
    root, images, _, config, _ = messy
    fewer = tmp_path / "images"
    shutil.copytree(images, fewer, symlinks=True)
    for i in range(1, 3):
        (fewer / "dog" / f"dog_{i}.png").unlink()
    code, err = _run_cli(capsys, fewer, config.workdir, "--max-class-share-change", "0.05")
    assert code == 2, err
    assert "class 'dog' share changed" in err
    assert not _transform_ran_in_latest_run(config)


def test_gone_class_stops_the_run_then_allow_label_change_lets_it_pass(messy, capsys, tmp_path):
    """A class that disappears stops the next run at LabelGuard (exit 2). Rerun with
    --allow-label-change, LabelGuard passes and the run goes on to the next step,
    which here fails for real: an HDF5 --weights file holding no weights passes the
    pre-run check (it is HDF5) and only BottleneckGen, loading it, finds out: exit 1,
    `pipeline failed: ...`. Both runs are --quiet: no progress line on stderr."""
    import h5py
    root, images, _, config, _ = messy
    renamed = tmp_path / "images"
    shutil.copytree(images, renamed, symlinks=True)
    (renamed / "dog").rename(renamed / "wolf")  # dog is gone, wolf is new
    code, err = _run_cli(capsys, renamed, config.workdir)
    assert code == 2, err
    assert "class 'dog' is gone" in err and "class 'wolf' is new" in err and err.count("\n") == 1
    assert not _transform_ran_in_latest_run(config)

    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    code, err = _run_cli(capsys, renamed, config.workdir, "--allow-label-change",
                         "--weights", str(empty), "--enable-cache",  # ExampleGen..SchemaGen: cached
                         subprocess_run=True)
    assert code == 1, err
    assert err.count("\n") == 1, err[-3000:]  # one line: Beam's and TFX's error logs are for --verbose
    last = err.strip().splitlines()[-1]
    assert last.startswith("retrain: error: pipeline failed: BackboneWeightsError: cannot load")
    assert str(empty) in last
    assert not any(line.startswith("[") for line in err.splitlines())  # --quiet: no progress
    assert "Traceback" not in err, err[-3000:]  # the traceback is for --verbose
    record = run_record.latest(config)
    assert record.states["LabelGuard"] == "COMPLETE" and record.states["BottleneckGen"] == "FAILED"
    with open(os.path.join(record.uris.label_check, LABEL_CHECK_FILE)) as f:
        check_json = json.load(f)
    assert check_json["problems"] == [] and set(check_json["baseline"]) == {"cat", "dog"}
    assert set(check_json["current"]) == {"cat", "wolf"}
    assert record.status == "failed"


def test_guard_rules():
    base = {"a": 50, "b": 50}
    assert check({"a": 55, "b": 45}, base, False, 0.2) == []
    assert check({"a": 50, "b": 50, "c": 5}, None, False, 0.2) == []  # no baseline
    assert check({"a": 50, "b": 50, "c": 5}, base, False, 0.2)[0].startswith("class 'c' is new")
    assert check({"a": 50}, base, True, 0.6) == []
    assert "class 'b' is gone" in check({"a": 50}, base, False, 1.0)[0]
    assert any("class 'a' share changed from 50.0% to 90.0%" in p
               for p in check({"a": 90, "b": 10}, base, False, 0.2))


def test_manifest_csv(tmp_path):
    images = tmp_path / "pics"
    for i in range(3):
        _save(images / f"x{i}.png", _img(400 + i), "PNG")
    (tmp_path / "list.csv").write_text(
        "uri,label\n"
        f"pics/x0.png,apple\n{images / 'x1.png'},pear\npics/x2.png,apple\n"
        "pics/missing.png,pear\npics/x0.png\nnotes.txt,pear\npics/x1.png,bad\x07label\n")
    items = list(image_io.read_manifest(str(tmp_path / "list.csv")))
    cands = [i for i in items if isinstance(i, image_io.Candidate)]
    skips = {i.relpath: i.reason for i in items if isinstance(i, image_io.Skipped)}
    assert [(c.relpath, c.label) for c in cands] == [
        ("pics/x0.png", "apple"), (str(images / "x1.png"), "pear"), ("pics/x2.png", "apple"),
        ("pics/missing.png", "pear")]
    assert cands[0].path == str(tmp_path / "pics" / "x0.png")
    assert "expected 2 columns" in skips["list.csv:6"]
    assert "unsupported extension" in skips["notes.txt"]
    assert "control characters" in skips["pics/x1.png"]


def test_manifest_through_example_gen(tmp_path):
    from conftest import read_examples, run_example_gen
    for i in range(6):
        _save(tmp_path / "a" / f"{i}.png", _img(500 + i), "PNG")
        _save(tmp_path / "b" / f"{i}.jpg", _img(600 + i), "JPEG")
    rows = ["uri,label"] + [f"a/{i}.png,apple" for i in range(6)] + \
        [f"b/{i}.jpg,banana" for i in range(6)] + ["a/gone.png,apple"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    uri = run_example_gen(tmp_path / "m.csv", tmp_path / "work", ["apple", "banana"])
    got = read_examples(uri)
    paths = sorted(r["path"] for split in got.values() for r in split)
    assert paths == sorted([f"a/{i}.png" for i in range(6)] + [f"b/{i}.jpg" for i in range(6)])
    report = {r["path"]: r for r in read_report(uri)}
    assert report["a/gone.png"]["status"] == "skipped"
    assert "unreadable file" in report["a/gone.png"]["reason"]
