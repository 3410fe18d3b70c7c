"""A rerun with the same images, settings and code ends early (pipeline/unchanged.py).

One real run of the local pipeline on 20 emoji (2 classes, 20 epochs, minimum
accuracy 0, float32 TFLite only: a small run that blesses and pushes), then the
same command again through `retrain run`: it ends early, pushes nothing, says
why, is listed by `retrain runs`, and `retrain report` still shows the real
run. Budget: one small pipeline run, about 2-3 min on 2 loaded cores.
"""

import dataclasses
import json
import os

import pytest

from conftest import copy_subset
from components.contracts import list_versions
from pipeline import cli, unchanged
from pipeline.config import PipelineConfig

pytestmark = pytest.mark.slow

CLASSES = ["flags", "food_and_drink"]


@pytest.fixture(scope="module")
def reruns(tmp_path_factory, emoji_root, imagenet_weights):
    root = tmp_path_factory.mktemp("unchanged")
    images = copy_subset(emoji_root, root / "images", CLASSES, per_class=10)
    workdir = root / "work"
    argv = ["run", "--images", str(images), "--workdir", str(workdir), "--epochs", "20",
            "--min-accuracy", "0", "--tflite-variants", "float32", "--json", "--quiet"]
    return {"argv": argv, "images": images, "workdir": workdir}


def _run(capsys, argv):
    code = cli.main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_same_input_rerun_pushes_nothing_and_says_why(reruns, capsys):
    code, first = _run(capsys, reruns["argv"])
    assert code == 0 and first["blessed"] and first["pushed_version"] == 1
    assert not first.get("unchanged")
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
    config = PipelineConfig(images=str(reruns["images"]), workdir=str(reruns["workdir"]),
                            epochs=20, min_accuracy=0.0, tflite_variants=("float32",))
    assert unchanged.check(config, *unchanged.fingerprint(config)).unchanged
    more_epochs = dataclasses.replace(config, epochs=21)
    assert not unchanged.check(more_epochs, *unchanged.fingerprint(more_epochs)).unchanged
    image = sorted((reruns["images"] / "flags").iterdir())[0]
    image.write_bytes(image.read_bytes() + b"\0")
    assert not unchanged.check(config, *unchanged.fingerprint(config)).unchanged
