"""components/change_check.py: the Kubeflow early exit's verdict, on hand-made
Examples (gzipped TFRecords as ImageExampleGen writes them) and a registry folder.
The whole pipeline path is in tests/e2e/test_kubeflow_e2e.py."""

import json
import os

import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from components import change_check, contracts
from components.change_check import CHANGED, REASON, SINCE_RUN

SETTINGS = "settings-digest"


def _example(label, path, sha):
    def b(v): return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
    return tf.train.Example(features=tf.train.Features(feature={
        contracts.LABEL_NAME_KEY: b(label), contracts.RELATIVE_PATH_KEY: b(path),
        contracts.CONTENT_SHA256_KEY: b(sha), contracts.IMAGE_KEY: b("pixels")})).SerializeToString()


def _examples(root, run, rows, shards=1):
    """An Examples artifact at <root>/<pipeline>/<run>/ImageExampleGen/<uuid>/examples."""
    examples = standard_artifacts.Examples()
    examples.uri = os.path.join(root, "image-retrain", run, "ImageExampleGen", "0f", "examples")
    examples.split_names = '["train", "eval"]'
    examples.set_string_custom_property("label_names", '["cat", "dog"]')
    for split in ("train", "eval"):
        folder = os.path.join(examples.uri, f"Split-{split}")
        os.makedirs(folder)
        mine = [r for r in rows if r[0] == split]
        for shard in range(shards):
            with tf.io.TFRecordWriter(os.path.join(folder, f"data-{shard}.gz"), "GZIP") as w:
                for _, label, path, sha in mine[shard::shards]:
                    w.write(_example(label, path, sha))
    return examples


ROWS = [("train", "cat", "cat/1.png", "a1"), ("train", "dog", "dog/1.png", "b1"),
        ("eval", "cat", "cat/2.png", "a2"), ("train", "dog", "dog/2.png", "b2")]


def _check(tmp, examples, registry, serving=""):
    out = change_check.ChangeCheck()
    out.uri = str(tmp / f"check-{len(os.listdir(tmp))}")
    change_check.Executor().Do({"examples": [examples]}, {"result": [out]},
                               {"registry": registry, "serving_dir": serving, "settings": SETTINGS})
    return out


def _record(out, registry, serving=""):
    change_check.RecordExecutor().Do({"change_check": [out]}, {},
                                     {"registry": registry, "serving_dir": serving})


def test_examples_digest_is_the_content_not_the_files(tmp_path):
    one = change_check.examples_digest(_examples(str(tmp_path / "a"), "r1", ROWS))
    sharded = change_check.examples_digest(_examples(str(tmp_path / "b"), "r2", ROWS[::-1], shards=2))
    assert one == sharded and one[1] == 4
    edited = [r if r[2] != "dog/2.png" else r[:3] + ("c9",) for r in ROWS]
    moved = [r if r[2] != "cat/2.png" else ("train",) + r[1:] for r in ROWS]
    relabelled = [r if r[2] != "cat/1.png" else (r[0], "dog") + r[2:] for r in ROWS]
    added = ROWS + [("eval", "dog", "dog/3.png", "b3")]
    digests = {change_check.examples_digest(_examples(str(tmp_path / f"x{i}"), "r", rows))[0]
               for i, rows in enumerate([edited, moved, relabelled, added])}
    assert len(digests) == 4 and one[0] not in digests


def test_same_inputs_end_early_and_any_change_runs_in_full(tmp_path):
    registry, serving = str(tmp_path / "registry"), str(tmp_path / "serving")
    first = _check(tmp_path, _examples(str(tmp_path / "root"), "run-1", ROWS), registry, serving)
    assert first.get_int_custom_property(CHANGED) == 1
    assert "no completed run recorded" in first.get_string_custom_property(REASON)
    # The run completed: it blessed a model and pushed version 1, then recorded its inputs.
    os.makedirs(os.path.join(registry, "blessed_model"))
    open(os.path.join(registry, "blessed_model", "20261130T000000.000001Z-a.json"), "w").write("{}")
    os.makedirs(os.path.join(serving, "1"))
    open(os.path.join(serving, "1", contracts.COMPLETE_MARKER), "w").close()
    _record(first, registry, serving)

    again = _check(tmp_path, _examples(str(tmp_path / "root"), "run-2", ROWS), registry, serving)
    assert again.get_int_custom_property(CHANGED) == 0
    assert again.get_string_custom_property(SINCE_RUN) == "run-1"
    assert again.get_string_custom_property(REASON).startswith("no new images since run run-1: same 4 images")
    with open(os.path.join(again.uri, change_check.CHECK_FILE)) as f:
        assert json.load(f)[CHANGED] is False

    new_image = _check(tmp_path, _examples(str(tmp_path / "root"), "run-3", ROWS[:3]), registry, serving)
    assert new_image.get_string_custom_property(REASON) == "images changed since run run-1"
    # `retrain bless --pipeline-root` (or a reset) writes a newer blessed_model record.
    open(os.path.join(registry, "blessed_model", "20261130T010000.000001Z-b.json"), "w").write("{}")
    blessed = _check(tmp_path, _examples(str(tmp_path / "root"), "run-4", ROWS), registry, serving)
    assert blessed.get_int_custom_property(CHANGED) == 1
    assert "baseline (a blessing or reset) changed" in blessed.get_string_custom_property(REASON)


def test_settings_code_and_unreadable_records_mean_a_full_run(tmp_path, monkeypatch):
    registry = str(tmp_path / "registry")
    first = _check(tmp_path, _examples(str(tmp_path / "root"), "run-1", ROWS), registry)
    _record(first, registry)
    from pipeline import unchanged
    monkeypatch.setattr(unchanged, "code_digest", lambda: "another image")
    out = _check(tmp_path, _examples(str(tmp_path / "root"), "run-2", ROWS), registry)
    assert out.get_string_custom_property(REASON) == "code version changed since run run-1"
    monkeypatch.undo()
    last = change_check.latest_record(registry)
    assert change_check.compare(last, last, registry)[0] is False
    other = change_check.RunFingerprint(**{**vars(last), "settings": "x"})
    assert change_check.compare(other, last, registry)[1] == "settings changed since run run-1"
    # A newest record that is not one (corrupt, oversized, other format): a full run.
    folder = os.path.join(registry, change_check.RUN_FINGERPRINT)
    for i, text in enumerate(["{not json", json.dumps({**vars(last), "format": 9}),
                              json.dumps({**vars(last), "served": "1"}), " " * 70_000]):
        open(os.path.join(folder, f"2099010{i}T000000.000000Z-z.json"), "w").write(text)
        assert change_check.latest_record(registry) is None
        out = _check(tmp_path, _examples(str(tmp_path / f"root{i}"), "run-x", ROWS), registry)
        assert out.get_int_custom_property(CHANGED) == 1


def test_an_error_while_checking_runs_in_full_and_records_nothing(tmp_path):
    registry = str(tmp_path / "registry")
    examples = _examples(str(tmp_path / "root"), "run-1", ROWS)
    examples.split_names = '["missing"]'
    os.makedirs(os.path.join(examples.uri, "Split-missing"))
    open(os.path.join(examples.uri, "Split-missing", "bad.gz"), "wb").write(b"not gzip")
    out = _check(tmp_path, examples, registry)
    assert out.get_int_custom_property(CHANGED) == 1
    assert out.get_string_custom_property(REASON).startswith("could not compare with the last run")
    _record(out, registry)
    assert change_check.record_names(registry, change_check.RUN_FINGERPRINT) == []


@pytest.mark.parametrize("uri, run", [
    ("minio://b/v2/artifacts/image-retrain/run-7/ImageExampleGen/5f0a/examples", "run-7"),
    ("/r/image-retrain/run-8/ImageExampleGen/examples", "run-8"),  # KFP 2.0: no uuid folder
    ("/elsewhere/examples", "/elsewhere/examples"),
])
def test_the_run_is_named_from_the_examples_uri(uri, run):
    assert change_check.run_of(uri) == run


def test_force_runs_in_full_although_the_record_matches_and_says_so(tmp_path):
    """The pipeline parameter force=1 (`retrain submit --force`); 0 or absent: the check decides."""
    registry = str(tmp_path / "registry")
    first = _check(tmp_path, _examples(str(tmp_path / "root"), "run-1", ROWS), registry)
    _record(first, registry)

    def check(run, **force):
        out = change_check.ChangeCheck()
        out.uri = str(tmp_path / f"check-{run}")
        change_check.Executor().Do({"examples": [_examples(str(tmp_path / "root"), run, ROWS)]},
                                   {"result": [out]},
                                   {"registry": registry, "serving_dir": "", "settings": SETTINGS, **force})
        return out

    assert check("run-2", force=0).get_int_custom_property(CHANGED) == 0
    forced = check("run-3", force=1)
    assert forced.get_int_custom_property(CHANGED) == 1
    assert forced.get_string_custom_property(REASON).startswith(
        "forced by the run parameter force=1 (no new images since run run-1: same 4 images")
    assert forced.get_string_custom_property(SINCE_RUN) == "run-1"
    # Its fingerprint is kept: the recorder records the forced run like any other.
    with open(os.path.join(forced.uri, change_check.CHECK_FILE)) as f:
        assert json.load(f)["fingerprint"]["run"] == "run-3"
    _record(forced, registry)
    assert change_check.latest_record(registry).run == "run-3"
