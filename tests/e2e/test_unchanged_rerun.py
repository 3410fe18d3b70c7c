"""A rerun with the same images, settings and code ends early (pipeline/unchanged.py).

One real run of the local pipeline on 20 emoji (2 classes, 20 epochs, minimum
accuracy 0, float32 TFLite only: a small run that blesses and pushes), then the
same command again through `retrain run`: it ends early, pushes nothing, says
why, is listed by `retrain runs`, and `retrain report` still shows the real
run. Budget: one small pipeline run, about 2-3 min on 2 loaded cores.

The images come through a `uri,label` CSV manifest (`--images` takes a folder or
a manifest), with labels of its own, not the folders' names, beside a third
class's folder it does not list: the run trains on the manifest's rows only.
"""

import contextlib
import dataclasses
import glob
import io
import json
import os
from collections import Counter

import pytest

from conftest import copy_subset
from components.contracts import list_versions
from components.image_example_gen import read_report
from pipeline import cli, run_record, unchanged
from pipeline.config import PipelineConfig

pytestmark = pytest.mark.slow

CLASSES = ["flags", "food_and_drink"]
MANIFEST_LABELS = {"flags": "banners", "food_and_drink": "meals"}  # not the folders' names
UNLISTED = "smileys_and_emotion"  # a class folder beside them that the manifest leaves out


@pytest.fixture(scope="module")
def reruns(tmp_path_factory, emoji_root, imagenet_weights):
    root = tmp_path_factory.mktemp("unchanged")
    images = copy_subset(emoji_root, root / "images", CLASSES + [UNLISTED], per_class=10)
    rows = {f"images/{c}/{f.name}": MANIFEST_LABELS[c]
            for c in CLASSES for f in sorted((images / c).iterdir())}
    manifest = root / "images.csv"
    manifest.write_text("uri,label\n" + "".join(f"{uri},{label}\n" for uri, label in rows.items()))
    workdir = root / "work"
    argv = ["run", "--images", str(manifest), "--workdir", str(workdir), "--epochs", "20",
            "--min-accuracy", "0", "--tflite-variants", "float32", "--json", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = cli.main(argv)
    first = json.loads(out.getvalue().strip().splitlines()[-1])
    return {"argv": argv, "images": images, "manifest": manifest, "rows": rows, "workdir": workdir,
            "first": (code, first)}


def _run(capsys, argv):
    code = cli.main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_same_input_rerun_pushes_nothing_and_says_why(reruns, capsys):
    code, first = reruns["first"]
    assert code == 0 and first["blessed"] and first["pushed_version"] == 1
    assert not first.get("unchanged")
    # Trained on the manifest's rows with its labels; the unlisted folder was not read.
    assert first["label_names"] == ["banners", "meals"] and set(first["per_class"]) == {"banners", "meals"}
    assert sum(first["examples"].values()) == 20 and first["skipped_files"] == 0
    used = {r["path"]: r["label"] for r in read_report(os.path.dirname(first["ingestion_report"]))}
    assert used == reruns["rows"]
    assert Counter(used.values()) == {"banners": 10, "meals": 10}
    serving = os.path.join(reruns["workdir"], "serving")

    code, again = _run(capsys, reruns["argv"])
    assert code == 0 and again["unchanged"] is True
    assert again["unchanged_since"] == first["run_id"] and again["pushed_version"] is None
    assert again["not_pushed_reason"].startswith(f"no new images since run {first['run_id']}")
    assert list_versions(serving) == [1]

    assert cli.main(["runs", "--workdir", str(reruns["workdir"]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["id"], r["status"]) for r in rows] == [(again["run_id"], "unchanged"),
                                                     (first["run_id"], "complete")]
    assert rows[0]["reason"] == again["not_pushed_reason"]
    # Its report page says why and links the real run's; `retrain report` still builds that one.
    page = open(again["report"], encoding="utf-8").read()
    assert "ended early" in page and os.path.basename(first["report"]) in page
    assert cli.main(["report", "--workdir", str(reruns["workdir"]), "--no-latency"]) == 0
    assert capsys.readouterr().out.strip().endswith(os.path.basename(first["report"]))

    # A changed image or setting means a full run (checked, not run: the unit tests cover each).
    config = PipelineConfig(images=str(reruns["manifest"]), workdir=str(reruns["workdir"]),
                            epochs=20, min_accuracy=0.0, tflite_variants=("float32",))
    assert unchanged.check(config, *unchanged.fingerprint(config)).unchanged
    unlisted = sorted((reruns["images"] / UNLISTED).iterdir())[0]  # not an input of the run
    unlisted.write_bytes(unlisted.read_bytes() + b"\0")
    assert unchanged.check(config, *unchanged.fingerprint(config)).unchanged
    more_epochs = dataclasses.replace(config, epochs=21)
    assert not unchanged.check(more_epochs, *unchanged.fingerprint(more_epochs)).unchanged
    image = sorted((reruns["images"] / "flags").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")
    assert not unchanged.check(config, *unchanged.fingerprint(config)).unchanged


def _artifacts_with(workdir, marked_by):
    """The artifacts with custom property ``marked_by``, oldest first (MLMD, read directly):
    "computed" marks BottleneckGen's bottlenecks, "images_reused_checks" ImageExampleGen's Examples."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(workdir / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    found = [a for a in metadata_store.MetadataStore(config).get_artifacts()
             if marked_by in a.custom_properties]
    return sorted(found, key=lambda a: a.id)


def _read_records(uri, pattern):
    import tensorflow as tf
    return [r.numpy() for r in tf.data.TFRecordDataset(
        sorted(glob.glob(os.path.join(uri, pattern))), compression_type="GZIP")]


def test_other_backbone_with_two_workers_recomputes_every_feature_and_runs_whole(reruns, capsys,
                                                                            lite0_weights):
    """README: `--backbone efficientnet_lite0`, `--beam-workers N`, and a backbone
    change invalidating the feature cache. The same manifest and workdir, after the
    MobileNet run: a full run (the setting changed), every feature computed again
    by BottleneckGen in 2 worker processes (their counts reach MLMD), the same
    vectors as the backbone gives in this process, and a pushed TFLite file that
    predicts what the SavedModel does."""
    import numpy as np
    import tensorflow as tf

    from components import backbones, contracts, preprocessing
    from conftest import tflite_probabilities
    code = cli.main(reruns["argv"] + [
        "--backbone", "efficientnet_lite0", "--beam-workers", "2", "--epochs", "2",
        "--max-accuracy-drop", "1"])  # whatever 2 epochs score: blessed, so pushed
    out, err = capsys.readouterr()
    # The MobileNet run's cache was there and was not used: all 20 computed anew.
    runs = _artifacts_with(reruns["workdir"], "computed")
    counts = [{k: a.custom_properties[k].int_value for k in ("computed", "cache_hits", "reused_cache")}
              for a in runs]
    assert len(runs) == 2 and counts[0] == {"computed": 20, "cache_hits": 0, "reused_cache": 0}
    assert counts[1] == {"computed": 20, "cache_hits": 0, "reused_cache": 0}, counts
    assert code == 0, err[-2000:]
    # Ingestion took the first run's checks (ingest_checks.py) for the 19 images it had
    # accepted and decoded only the one the test above appended a byte to.
    ingested = [{k: a.custom_properties[k].int_value for k in ("images_decoded", "images_reused_checks")}
                for a in _artifacts_with(reruns["workdir"], "images_reused_checks")]
    assert ingested == [{"images_decoded": 20, "images_reused_checks": 0},
                        {"images_decoded": 1, "images_reused_checks": 19}], ingested
    lite = json.loads(out.strip().splitlines()[-1])
    assert not lite.get("unchanged") and lite["pushed_version"] == 2, lite
    assert lite["label_names"] == ["banners", "meals"] and sum(lite["examples"].values()) == 20

    # BottleneckGen's vectors (2 workers, batched) = the backbone's, built here, on
    # the same decoded pixels. Tolerance: float32 sums in another batch order.
    examples = os.path.dirname(lite["ingestion_report"])
    images = {}
    for rec in _read_records(examples, "Split-*/*.gz"):
        f = tf.train.Example.FromString(rec).features.feature
        images[f[contracts.CONTENT_SHA256_KEY].bytes_list.value[0].decode()] = (
            rec, f[contracts.IMAGE_KEY].bytes_list.value[0])
    vectors = {}
    for rec in _read_records(runs[-1].uri, "Split-*/*.gz"):
        f = tf.train.Example.FromString(rec).features.feature
        vectors[f[contracts.CONTENT_SHA256_KEY].bytes_list.value[0].decode()] = np.array(
            f[contracts.FEATURES_KEY].float_list.value, np.float32)
    assert sorted(vectors) == sorted(images) and len(vectors) == 20
    shas = sorted(images)
    spec = backbones.get_spec("efficientnet_lite0")
    pixels = preprocessing.decode_and_resize(tf.constant([images[s][1] for s in shas]), spec.input_size)
    direct = backbones.build_feature_extractor("efficientnet_lite0", "imagenet")(pixels).numpy()
    got = np.stack([vectors[s] for s in shas])
    assert got.shape == direct.shape == (20, spec.feature_dim)
    np.testing.assert_allclose(got, direct, atol=1e-4)

    # The pushed version: built on EfficientNet-Lite0; its float32 file predicts
    # what the run's SavedModel does, on every image of the run.
    version = reruns["workdir"] / "serving" / "2"
    parity = json.loads((version / "parity.json").read_text())
    assert parity["backbone"] == "efficientnet_lite0" and parity["passed"] == ["float32"]
    record = run_record.by_id(PipelineConfig(images=str(reruns["manifest"]), workdir=str(reruns["workdir"])),
                              lite["run_id"])
    serve = tf.saved_model.load(os.path.join(record.uris.model, "Format-Serving")).signatures["serving_default"]
    diffs = []
    for sha in shas:
        rec, image = images[sha]
        reference = serve(examples=tf.constant([rec]))["probabilities"].numpy()[0]
        probs = tflite_probabilities(str(version / "model.tflite"), image)
        assert probs.argmax() == reference.argmax()
        diffs.append(np.abs(probs - reference).max())
    print(f"lite0 float32 TFLite vs SavedModel: max abs diff {max(diffs):.2e}")
    assert max(diffs) < 1e-4  # observed 9.2e-07 (2026-11-30); float32 parity allows the same 1e-4
