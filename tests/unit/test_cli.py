"""`retrain` bad-input handling: one line on stderr, exit code 2, nothing run."""

import shutil

import pytest

from conftest import png_bytes
from pipeline import cli


def _folder(root, counts):
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for i in range(n):
            (root / label / f"{i}.png").write_bytes(png_bytes(hash((label, i)) % 10_000))
    return root


def _run(capsys, *args):
    code = cli.main(["run", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_missing_images_folder(tmp_path, capsys):
    code, err = _run(capsys, "--images", tmp_path / "nope", "--workdir", tmp_path / "w")
    assert code == 2 and len(err) == 1
    assert err[0] == f"retrain: error: images folder not found: {tmp_path / 'nope'}"
    assert not (tmp_path / "w").exists()


def test_fewer_than_two_classes(tmp_path, capsys):
    images = _folder(tmp_path / "images", {"only": 12})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2 and len(err) == 1 and "need at least 2" in err[0] and "only" in err[0]


def test_class_below_minimum(tmp_path, capsys):
    images = _folder(tmp_path / "images", {"pug": 3, "beagle": 12})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2
    assert err == ["retrain: error: class 'pug' has 3 images, the minimum is 10"]
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w",
                     "--min-images-per-class", "2", "--backbone", "no_such_net")
    assert code == 2 and "no_such_net" in err[0] and "mobilenet_v1" in err[0]


def test_every_class_below_minimum_named_in_one_error(tmp_path, capsys):
    # 98 emoji subcategories had 9 classes under 10 images: one error names them
    # all, sorted as the classes are, with their counts (not one class per rerun).
    images = _folder(tmp_path / "images", {"ant": 2, "bee": 12, "cat": 4, "dog": 9})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2 and len(err) == 1
    assert err[0] == ("retrain: error: 3 classes have fewer than 10 images (the minimum): "
                      "'ant' (2), 'cat' (4), 'dog' (9); add images, remove those folders "
                      "or lower --min-images-per-class")


def test_missing_offline_weights_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path / "empty-cache"))
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2 and len(err) == 1 and "retrain fetch-weights" in err[0]


@pytest.mark.parametrize("flag,value", [("--eval-percent", "0"), ("--min-accuracy", "1.5")])
def test_bad_settings(tmp_path, capsys, flag, value):
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w", flag, value)
    assert code == 2 and len(err) == 1 and flag.strip("-").replace("-", "_") in err[0]


def test_empty_class_folder_skipped_with_a_warning(tmp_path, capsys, monkeypatch):
    """An empty class folder is skipped and reported; only a class with some
    images but fewer than the minimum stops the run."""
    from pipeline import preflight
    from pipeline.config import PipelineConfig
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path / "empty-cache"))  # stop after preflight
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    (images / "c").mkdir()
    (images / "d").mkdir()
    (images / "d" / "notes.txt").write_text("no images here")
    config = preflight.scan(PipelineConfig(images=str(images), workdir=str(tmp_path / "w")))
    assert config.label_names == ("a", "b") and config.empty_classes == ("c", "d")
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2 and len(err) == 2 and "retrain fetch-weights" in err[1]
    assert err[0] == "retrain: warning: empty class folder(s) skipped: 'c', 'd'"
    shutil.rmtree(images / "b")
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2 and err == [f"retrain: error: found 1 class(es) with images in {images} "
                                 "(a; empty: c, d); need at least 2: put images in "
                                 "<images>/<label>/<file>"]


@pytest.mark.parametrize("ch", ["\u2028", "\x85", "\x1c", "\v"])
def test_class_name_with_line_break_refused(tmp_path, capsys, ch):
    """A name splitlines() splits made a 6-label model of 5 classes: refused up front."""
    images = _folder(tmp_path / "images", {"a": 10, f"b{ch}c": 10})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2 and len(err) == 1, err
    assert f"class name 'b\\x" in err[0] or f"class name 'b\\u" in err[0]
    assert "line break" in err[0] and err[0].endswith("rename the folder")


def test_workdir_that_is_a_file(tmp_path, capsys):
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    (tmp_path / "w").write_text("not a folder")
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2 and err == [f"retrain: error: --workdir {tmp_path / 'w'} is a file, not a "
                                 "folder: give a folder (it is created when missing)"]


@pytest.mark.parametrize("flag,value", [
    ("--max-accuracy-drop", "nan"), ("--min-accuracy", "inf"), ("--max-class-share-change", "-inf"),
    ("--max-accuracy-drop", "NaN")])
def test_float_flags_refuse_nan_and_inf(tmp_path, capsys, flag, value):
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w", f"{flag}={value}")
    assert code == 2 and len(err) == 1 and f"{flag} must be a finite number" in err[0], err
    assert not (tmp_path / "w").exists()


def test_every_float_field_is_checked_for_finiteness():
    import dataclasses
    import math
    from pipeline.config import PipelineConfig
    floats = [f.name for f in dataclasses.fields(PipelineConfig) if f.type in ("float", float)]
    assert floats  # min_accuracy, max_accuracy_drop, ...
    for name in floats:
        config = PipelineConfig(images="i", workdir="w", **{name: math.nan})
        assert config.validate() == f"{name} must be a finite number, got nan"


def test_corrupt_store_is_one_line(tmp_path, capsys):
    """`retrain run`/`runs`/`report`/`bless` on a store that is not SQLite, or
    SQLite that MLMD cannot read: one line, exit 2, no SQL."""
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    work = tmp_path / "w"
    work.mkdir()
    store = work / "metadata.sqlite"
    store.write_text("this is not a database")
    code, err = _run(capsys, "--images", images, "--workdir", work)
    assert code == 2 and err == [f"retrain: error: {store} is not an SQLite database (corrupt or "
                                 "overwritten?): move it aside or use another --workdir"]
    for body in (b"this is not a database", b"SQLite format 3\x00" + bytes(range(256)) * 20):
        store.write_bytes(body)
        for argv in (["runs"], ["report"], ["bless", "--reset"]):
            assert cli.main([*argv, "--workdir", str(work)]) == 2, argv
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and str(store) in err[0] and "CREATE" not in err[0], err


def test_class_name_with_control_character(tmp_path, capsys):
    images = _folder(tmp_path / "images", {"a": 10, "b\tb": 10})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2 and len(err) == 1 and "control characters" in err[0]


def test_missing_manifest(tmp_path, capsys):
    code, err = _run(capsys, "--images", tmp_path / "list.csv", "--workdir", tmp_path / "w")
    assert code == 2 and err == [f"retrain: error: manifest not found: {tmp_path / 'list.csv'}"]


@pytest.mark.parametrize("flags,expected", [
    (["--tflite-variants", "float32,int4"], "int4"),
    (["--parity-bound", "int8"], "--parity-bound must look like int8=0.95"),
    (["--parity-bound", "int8=high"], "--parity-bound must look like int8=0.95"),
    (["--parity-bound", "int8=1.5"], "int8"),
    (["--calibration-images", "0"], "calibration_images"),
    (["--beam-workers", "0"], "--beam-workers must be >= 1"),
    (["--augment-views", "-1"], "augment_views"),
    (["--class-weights", "heavy"], "class_weights must be one of none, balanced, got 'heavy'"),
    (["--max-class-recall-drop", "1.5"], "max_class_recall_drop must be between 0 and 1, got 1.5"),
    (["--max-class-recall-drop", "nan"], "--max-class-recall-drop must be a finite number"),
])
def test_bad_tflite_and_feature_settings(tmp_path, capsys, flags, expected):
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w", *flags)
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "w").exists()


def _subparser(name):
    import argparse
    parser = cli._parser()
    cli._register_extensions(parser)
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


@pytest.mark.parametrize("command,fields", [
    ("run", cli.RUN_FLAGS), ("compile", ("pipeline_name", "backbone", "min_accuracy", "epochs",
                                          "seed", "enable_cache", "beam_workers"))])
def test_flag_defaults_are_the_config_defaults(command, fields):
    """One default per setting: the flags take PipelineConfig's and say it in --help."""
    from pipeline import config_flags
    from pipeline.config import DEFAULT_BEAM_WORKERS, PipelineConfig
    sub = _subparser(command)
    args = sub.parse_args(["--images", "i", "--workdir", "w"] if command == "run" else
                          ["--output", "o.yaml", "--image", "img", "--pipeline-root", "/r"])
    base = PipelineConfig(images="i", workdir="w")
    help_text = " ".join(sub.format_help().split())
    for field in fields:
        flag = config_flags.FLAGS[field].flag
        expected = DEFAULT_BEAM_WORKERS if field == "beam_workers" else getattr(base, field)
        if field == "tflite_variants":
            assert args.tflite_variants == ",".join(expected)
        elif field != "parity_bounds":  # overrides, none by default: compared as the config below
            assert getattr(args, field) == expected, flag
        assert flag in help_text
    assert "--epochs EPOCHS most epochs of head training (early stopping may end it sooner) " \
           "(default: 100)" in help_text
    config = PipelineConfig(images="i", workdir="w", **config_flags.values(
        args, [f for f in fields if command == "run" or f != "beam_workers"]))
    assert config == base


def test_run_flags_reach_the_config():
    from pipeline import config_flags
    args = _subparser("run").parse_args([
        "--images", "i", "--workdir", "w", "--tflite-variants", "fp16, int8,", "--epochs", "7",
        "--parity-bound", "int8=0.9", "--beam-workers", "2", "--allow-label-change",
        "--class-weights", "balanced", "--max-class-recall-drop", "0.05"])
    values = config_flags.values(args, cli.RUN_FLAGS)
    assert values["max_class_recall_drop"] == 0.05  # off (None) by default: the test above
    assert values["tflite_variants"] == ("fp16", "int8") and values["epochs"] == 7
    assert values["parity_bounds"] == {"int8": 0.9} and values["allow_label_change"] is True
    assert values["class_weights"] == "balanced"
    assert "--direct_num_workers=2" in values["beam_args"] and "beam_workers" not in values


def test_too_little_free_space_refused_before_a_run(tmp_path, capsys):
    """Images larger than the disk's free space (a sparse file: no disk used)."""
    import shutil as sh
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    free = sh.disk_usage(tmp_path).free
    with open(images / "a" / "huge.png", "wb") as f:
        f.truncate(free)
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w",
                     "--max-file-bytes", free + 1, "--weights", "random")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"retrain: error: not enough free space at {tmp_path}: ")
    assert not (tmp_path / "w").exists()


def test_full_disk_said_in_one_line(tmp_path, capsys, monkeypatch):
    """ENOSPC anywhere in a run (here a real one: a write to /dev/full, where the
    pipeline would run) is one line naming where, exit 1."""
    import errno
    import os
    from pipeline import local_runner
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")

    def fill_disk(config, show_progress=False, force=False):
        try:
            with open("/dev/full", "wb", buffering=0) as f:
                f.write(b"x")
        except OSError as e:  # re-raised as text, as Beam and MLMD do
            raise RuntimeError(f"WriteSplit[train] failed: {e}") from e

    monkeypatch.setattr(local_runner, "run", fill_disk)
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w", "--weights", "random")
    assert code == 1
    assert err == [f"retrain: error: no space left on device at {tmp_path / 'w' / 'pipeline_root'}"]
    from pipeline.config import PipelineConfig
    config = PipelineConfig(images="i", workdir=str(tmp_path / "w"))
    sqlite_full = RuntimeError("InternalError: Error when executing query: database or disk is full")
    assert cli._no_space_at(sqlite_full, config) == config.metadata_path
    named = OSError(errno.ENOSPC, "No space left on device", "/w/pipeline_root/x.gz")
    assert cli._no_space_at(RuntimeError("wrapped"), config) is None
    try:
        raise ValueError("component failed") from named
    except ValueError as e:
        assert cli._no_space_at(e, config) == "/w/pipeline_root/x.gz"
