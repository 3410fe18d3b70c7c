"""Publishing a version folder: numbered, complete or absent."""

import json
import os

import pytest

from components.tflite_pusher import list_versions, publish_version


def _sources(tmp_path):
    (tmp_path / "m.tflite").write_bytes(b"tflite-bytes")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    return {"model.tflite": str(tmp_path / "m.tflite"), "labels.txt": str(tmp_path / "labels.txt")}


def test_versions_count_up_and_are_complete(tmp_path):
    serving = tmp_path / "serving"
    files = _sources(tmp_path)
    assert publish_version(str(serving), files, {"accuracy": 0.9}) == 1
    assert publish_version(str(serving), files, {"accuracy": 0.95}) == 2
    assert list_versions(str(serving)) == [1, 2]
    assert sorted(os.listdir(serving)) == ["1", "2"]  # no staging left behind
    v2 = serving / "2"
    assert sorted(os.listdir(v2)) == ["labels.txt", "metrics.json", "model.tflite"]
    assert json.loads((v2 / "metrics.json").read_text()) == {"accuracy": 0.95, "version": 2}
    assert (v2 / "model.tflite").read_bytes() == b"tflite-bytes"


def test_failed_copy_leaves_no_version(tmp_path):
    serving = tmp_path / "serving"
    files = _sources(tmp_path)
    files["model.tflite"] = str(tmp_path / "missing.tflite")
    with pytest.raises(Exception):
        publish_version(str(serving), files, {})
    assert list_versions(str(serving)) == [] and os.listdir(serving) == []


def test_taken_version_number_is_skipped(tmp_path):
    serving = tmp_path / "serving"
    (serving / "1").mkdir(parents=True)
    (serving / "1" / "model.tflite").write_bytes(b"old")
    (serving / "not-a-version").mkdir()
    assert publish_version(str(serving), _sources(tmp_path), {}) == 2
    assert (serving / "1" / "model.tflite").read_bytes() == b"old"
