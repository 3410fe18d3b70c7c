"""`retrain` bad-input handling: one line on stderr, exit code 2, nothing run."""

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


def test_empty_class_folder_named(tmp_path, capsys):
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    (images / "c").mkdir()
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w")
    assert code == 2 and err == ["retrain: error: class 'c' has 0 images, the minimum is 10"]


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
])
def test_bad_tflite_and_feature_settings(tmp_path, capsys, flags, expected):
    images = _folder(tmp_path / "images", {"a": 10, "b": 10})
    code, err = _run(capsys, "--images", images, "--workdir", tmp_path / "w", *flags)
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "w").exists()
