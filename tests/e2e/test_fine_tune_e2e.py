"""A whole local run with `--trainable-blocks 1` (issue 19): MobileNet v1, 3 emoji
classes x 10 images, 1 epoch, the float32 TFLite variant only. The pushed model is the
whole network (frozen lower part + trained top block + head): its TFLite predictions
match the SavedModel's, the Evaluator's accuracy is the SavedModel's on the eval
images, TFLiteExport's parity reference comes from the cached cut activations, and N
shows in head.json, the run record and `retrain runs`. A rerun with two new images a
class continues the served model (components/continuation.py)."""

import glob
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from components import contracts
from conftest import copy_subset, eval_split, tflite_probabilities
from pipeline import history, local_runner
from pipeline.config import PipelineConfig

pytestmark = pytest.mark.slow

CLASSES = ["flags", "food_and_drink", "smileys_and_emotion"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, emoji_root, imagenet_weights):
    root = tmp_path_factory.mktemp("fine-tune")
    images = copy_subset(emoji_root, root / "images", CLASSES, per_class=10)
    config = PipelineConfig(images=str(images), workdir=str(root / "work"), epochs=1,
                            min_accuracy=0.0, tflite_variants=("float32",), trainable_blocks=1)
    summary = local_runner.run(config)
    (model,) = glob.glob(str(root / "work" / "pipeline_root" / "Trainer" / "model" / "*"))
    return config, summary, model


@pytest.fixture(scope="module")
def rerun(run, emoji_root):
    """The same settings after two more images a class: a second run in the same workdir."""
    config, first, first_model = run
    copy_subset(emoji_root, pathlib.Path(config.images), CLASSES, per_class=12)
    summary = local_runner.run(config)
    models = set(glob.glob(str(pathlib.Path(config.pipeline_root) / "Trainer" / "model" / "*")))
    (model,) = models - {first_model}
    return first, first_model, summary, model


def _head_info(model):
    with open(os.path.join(model, contracts.HEAD_DIR, contracts.HEAD_INFO_FILE)) as f:
        return json.load(f)


def _saved_model_probabilities(model_uri, images):
    serving = tf.saved_model.load(os.path.join(model_uri, contracts.SERVING_MODEL_DIR))
    examples = [tf.train.Example(features=tf.train.Features(feature={
        contracts.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))}))
        .SerializeToString() for data in images]
    out = serving.signatures[contracts.SERVING_SIGNATURE](examples=tf.constant(examples))
    return out[contracts.PROBABILITIES_KEY].numpy()


def test_pushed_tflite_matches_the_saved_model_of_the_whole_network(run):
    config, summary, model = run
    assert summary["blessed"] is True and summary["pushed_version"] == 1
    evals = eval_split(os.path.dirname(summary["ingestion_report"]))
    saved = _saved_model_probabilities(model, [data for data, _ in evals])
    tflite = np.stack([tflite_probabilities(os.path.join(config.serving_dir, "1", "model.tflite"), data)
                       for data, _ in evals])
    np.testing.assert_allclose(tflite, saved, atol=1e-3)
    assert (tflite.argmax(1) == saved.argmax(1)).all()
    # The gate's accuracy (on the cached cut activations) is the served model's on the images.
    labels = np.array([label for _, label in evals])
    assert summary["accuracy"] == pytest.approx(float((saved.argmax(1) == labels).mean()))


def test_n_is_recorded_in_head_json_the_run_record_and_runs(run):
    config, summary, model = run
    with open(os.path.join(model, contracts.HEAD_DIR, contracts.HEAD_INFO_FILE)) as f:
        info = json.load(f)
    assert info["trainable_blocks"] == 1 and info["activation_dtype"] == "float16"
    assert info["feature_namespace"].endswith("|cut=conv_dw_13|float16")
    # Which top model the Trainer kept, by the best eval losses it compared (trainer.FineTuneChoice).
    choice = info["fine_tune"]
    assert choice["kept"] == ("fine-tuned" if choice["fine_tuned_eval_loss"] < choice["head_only_eval_loss"]
                              else "head only")
    (row,) = [r for r in history.list_runs(config) if r["kind"] == "run"]
    assert row["trainable_blocks"] == 1 and row["id"] == summary["run_id"]
    # How the Trainer started, as the report words it: nothing to continue yet.
    assert row["start"] == _head_info(model)["start"]["reason"] and "no served model" in row["start"]
    assert f"(top 1 blocks fine-tuned; {row['start']})" in history.format_runs([row])


def test_parity_reference_is_the_top_model_on_the_cached_cut_activations(run):
    """TFLiteExport took its reference from BottleneckGen's cached cut activations through
    the saved top model (no backbone pass): the SavedModel's probabilities on the same
    eval images to float noise (both round the activation to float16), and its accuracy
    is the Evaluator's. Observed max abs difference 1.2e-07 (2026-11-30); allowed 1e-5."""
    from benchmarks.evaluator_paths import last_evaluator_io
    from components import trainer
    from components.tflite import component, export, reference
    from components.tflite.parity import ParityReport
    config, summary, model = run
    _, inputs, outputs = last_evaluator_io(config.workdir, "TFLiteExport")
    (out,) = outputs["tflite_models"]
    assert out.get_string_custom_property(component.PARITY_REFERENCE) == reference.FEATURES, \
        out.get_string_custom_property(component.PARITY_REFERENCE_REASON)
    parity = ParityReport.read(out.uri)
    assert parity.reference == reference.FEATURES_REFERENCE and parity.eval_examples > 0
    assert parity.reference_accuracy == pytest.approx(summary["accuracy"], abs=1e-6)  # TFMA: float32
    head, info = trainer.load_head(model)
    eval_files = reference.split_files(inputs["examples"][0], "eval")
    choice = reference.choose(head, info, inputs[component.BOTTLENECKS][0], eval_files)
    assert choice.source == reference.FEATURES, choice.reason
    timer = export.PartSeconds()
    saved = np.concatenate([ref for _, ref, _ in reference.saved_model_batches(
        eval_files, os.path.join(model, contracts.SERVING_MODEL_DIR), 224, timer)])
    cached = np.concatenate([ref for _, ref, _ in reference.feature_batches(
        eval_files, choice.probabilities, 224, timer)])
    print("max abs difference", float(np.abs(saved - cached).max()))
    np.testing.assert_allclose(cached, saved, atol=1e-5, rtol=0)


def test_a_rerun_with_new_images_continues_the_served_model(rerun):
    """The second run's Trainer started from the first run's (served) top model, counted
    as new the train rows the first did not train on, and trained the epochs they owe."""
    from components import continuation
    first, first_model, summary, model = rerun
    assert first["pushed_version"] == 1 and summary["blessed"] is not None
    start = _head_info(model)["start"]
    assert start["source"] == first_model, start
    assert start["rows"] == summary["examples"]["train"]
    assert start["new_rows"] == summary["examples"]["train"] - first["examples"]["train"] > 0
    assert start["epochs"] == continuation.warm_epochs(1, start["new_rows"], start["rows"]) == 1
    choice = _head_info(model)["fine_tune"]
    assert isinstance(choice["served_eval_loss"], float)
    assert choice["kept"] in ("served", "fine-tuned", "head only")
    # What the next run compares against: this run's train rows, 32 bytes each.
    assert os.path.getsize(continuation.rows_path(model)) == 32 * summary["examples"]["train"]
    # The first run had nothing to continue.
    first_start = _head_info(first_model)["start"]
    assert first_start["source"] is None and "no served model" in first_start["reason"]


def test_runs_shows_the_rerun_continued(run, rerun):
    from components import continuation
    first, _, summary, model = rerun
    rows = {r["id"]: r for r in history.list_runs(run[0]) if r["kind"] == "run"}
    assert rows[summary["run_id"]]["start"] == continuation.describe(_head_info(model)["start"])
    assert rows[summary["run_id"]]["start"].startswith("continued from the served model: ")
    assert rows[summary["run_id"]]["start"].endswith("; 1 epoch at 0.1 x the step sizes")  # start["epochs"] == 1
    assert "no served model" in rows[first["run_id"]]["start"]
