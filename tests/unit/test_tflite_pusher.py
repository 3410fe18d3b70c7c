"""Publishing a version folder: numbered, complete or absent."""

import json
import os
import uuid

import pytest
import tensorflow as tf

from components.contracts import STAGING_PREFIX, list_versions
from components.tflite_pusher import publish_version


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
    assert sorted(os.listdir(v2)) == ["_SUCCESS", "labels.txt", "metrics.json", "model.tflite"]
    assert json.loads((v2 / "metrics.json").read_text()) == {"accuracy": 0.95, "version": 2}
    assert (v2 / "model.tflite").read_bytes() == b"tflite-bytes"


def test_failed_copy_leaves_no_version(tmp_path):
    serving = tmp_path / "serving"
    files = _sources(tmp_path)
    files["model.tflite"] = str(tmp_path / "missing.tflite")
    with pytest.raises(tf.errors.NotFoundError, match="missing.tflite"):
        publish_version(str(serving), files, {})
    assert list_versions(str(serving)) == [] and os.listdir(serving) == []


def test_taken_version_number_is_skipped(tmp_path):
    serving = tmp_path / "serving"
    (serving / "1").mkdir(parents=True)
    (serving / "1" / "model.tflite").write_bytes(b"old")
    (serving / "not-a-version").mkdir()
    assert publish_version(str(serving), _sources(tmp_path), {}) == 2
    assert (serving / "1" / "model.tflite").read_bytes() == b"old"
    # Folder 1 has no completion marker: not a version readers may use.
    assert list_versions(str(serving)) == [2]


def test_object_store_versions_are_marked_complete_last():
    """No atomic folder rename on gs:// or s3://: TF's ram:// filesystem stands in."""
    serving = f"ram://serving-{uuid.uuid4().hex}"
    files = {"model.tflite": f"{serving}-src/m.tflite", "labels.txt": f"{serving}-src/labels.txt"}
    tf.io.gfile.makedirs(f"{serving}-src")
    for path, data in zip(files.values(), (b"tflite-bytes", b"a\nb\n")):
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
    assert publish_version(serving, files, {"accuracy": 0.9}) == 1
    assert sorted(tf.io.gfile.listdir(f"{serving}/1")) == [
        "_SUCCESS", "labels.txt", "metrics.json", "model.tflite"]
    # A push that died halfway (no marker) is invisible and its number is not reused.
    tf.io.gfile.makedirs(f"{serving}/2")
    assert list_versions(serving) == [1]
    assert publish_version(serving, files, {"accuracy": 0.95}) == 3
    assert list_versions(serving) == [1, 3]
    with tf.io.gfile.GFile(f"{serving}/3/metrics.json") as f:
        assert json.load(f) == {"accuracy": 0.95, "version": 3}
    # A failed copy removes what it wrote.
    with pytest.raises(tf.errors.NotFoundError):  # ram:// gives no message
        publish_version(serving, dict(files, **{"model.tflite": f"{serving}-src/missing"}), {})
    assert list_versions(serving) == [1, 3] and not tf.io.gfile.exists(f"{serving}/4")


def test_pusher_settings_are_written_as_before():
    """The execution properties a compiled spec holds: same keys, same JSON text."""
    from tfx import types
    from tfx.types import standard_artifacts as std

    from components.tflite.component import TFLiteModels
    from components.tflite_pusher import TFLitePusher
    pusher = TFLitePusher(
        model=types.Channel(type=std.Model), model_blessing=types.Channel(type=std.ModelBlessing),
        evaluation=types.Channel(type=std.ModelEvaluation), serving_dir="s3://b/serving",
        label_names=("a", "b"), min_accuracy=0.5, max_accuracy_drop=0.01,
        tflite_models=types.Channel(type=TFLiteModels))
    assert pusher.exec_properties == {
        "serving_dir": "s3://b/serving", "label_names": '["a", "b"]',
        "gate": '{"min_accuracy": 0.5, "max_accuracy_drop": 0.01}',
        "candidate_config": ""}  # added later (PushSettings.ADDED_LATER): a spec without it still runs


def test_only_staging_without_a_live_owner_is_removed(tmp_path):
    import subprocess
    import sys
    import time

    from components import tflite_pusher
    from components.process_owner import Owner
    serving = tmp_path / "serving"
    serving.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = tflite_pusher._host_tag(Owner.current().host)
    names = {
        "dead": f".incoming-{host}-{dead.pid}-1-{uuid.uuid4().hex}",
        "mine": tflite_pusher._staging_name(),  # this live process
        "other_host": f".incoming-elsewhere-{dead.pid}-1-{uuid.uuid4().hex}",
        "legacy_old": f".incoming-{uuid.uuid4().hex}",
        "legacy_new": f".incoming-{uuid.uuid4().hex}",
    }
    for name in names.values():
        (serving / name).mkdir()
    old = time.time() - tflite_pusher.LEGACY_STAGING_MAX_AGE_S - 60
    os.utime(serving / names["legacy_old"], (old, old))
    removed = tflite_pusher.remove_stale_staging(str(serving))
    assert sorted(removed) == sorted([names["dead"], names["legacy_old"]])
    assert sorted(os.listdir(serving)) == sorted(
        [names["mine"], names["other_host"], names["legacy_new"]])


class _FailingSection(dict):
    """A metrics section whose serialization fails halfway through writing metrics.json
    (a full disk, say); just before failing it records which files the version held."""

    def __init__(self, folder_pattern):
        super().__init__(accuracy=0.9)
        self.pattern, self.seen = folder_pattern, None

    def items(self):  # json.dump(indent=..., sort_keys=True) asks for the items once
        [folder] = tf.io.gfile.glob(self.pattern)
        self.seen = sorted(tf.io.gfile.listdir(folder))
        raise OSError("no space left on device")


@pytest.mark.parametrize("kind", ["local", "object store"])
def test_success_marker_is_written_last(tmp_path, kind):
    """`_SUCCESS` comes after every other file: while metrics.json is being written the
    folder holds the copied files and no marker, and a write that fails there leaves
    no version (docs/operations.md, "What a pushed version contains")."""
    if kind == "local":
        serving, files = str(tmp_path / "serving"), _sources(tmp_path)
        pattern = f"{serving}/{STAGING_PREFIX}*"  # assembled aside, then renamed
    else:
        serving = f"ram://serving-{uuid.uuid4().hex}"  # written in place, as on gs:// or s3://
        files = {"model.tflite": f"{serving}-src/m.tflite", "labels.txt": f"{serving}-src/labels.txt"}
        for path, data in zip(files.values(), (b"tflite-bytes", b"a\nb\n")):
            with tf.io.gfile.GFile(path, "wb") as f:
                f.write(data)
        pattern = f"{serving}/1"
    section = _FailingSection(pattern)
    with pytest.raises(OSError, match="no space left on device"):
        publish_version(serving, files, {"evaluation": section})
    assert section.seen == ["labels.txt", "metrics.json", "model.tflite"]  # no _SUCCESS yet
    assert list_versions(serving) == [] and tf.io.gfile.listdir(serving) == []
