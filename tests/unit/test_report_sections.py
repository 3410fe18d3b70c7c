"""The report's sections, plots and page from hand-made RunRecords: no pipeline run."""

import base64
import dataclasses
import json
import os
import re

import pytest

from pipeline import report, run_summary
from pipeline.config import PipelineConfig
from pipeline.report import page, plots, sections, sources
from pipeline.run_record import (ArtifactUris, Baseline, ClassMetrics, Evaluation, Gate, Push,
                                 RunRecord, SkippedFile, Step)

LABELS = ("cat", "dog", "fox")


def _record(**changes) -> RunRecord:
    """A second run: blessed against a baseline, pushed as version 2, fox got worse."""
    base = RunRecord(
        run_id="2024-05-01T10:00:00.5", created_ms=1714557600000, pipeline_name="image-retrain",
        steps=(Step("ImageExampleGen", "COMPLETE", 1.5), Step("Trainer", "COMPLETE", 7.25),
               Step("Evaluator", "COMPLETE", 4.5), Step("TFLitePusher", "COMPLETE", 0.1)),
        label_names=LABELS, examples={"train": 24, "eval": 6}, skipped_files=2,
        ingestion_report="/w/examples/ingestion_report.jsonl",
        skipped=(SkippedFile("cat/broken.png", "cat", "not a recognised image format"),
                 SkippedFile("dog/big.jpg", "dog", "too large: 9000x9000 (max 40000000 pixels)")),
        evaluation=Evaluation(
            accuracy=0.8, baseline_accuracy=0.75, example_count=6,
            per_class={"cat": ClassMetrics(1.0, 1.0, 0.5, 1.0), "dog": ClassMetrics(0.5, 1.0, 0.5, 0.5),
                       "fox": ClassMetrics(1.0, 0.5, 1.0, 1.0)},
            confusion_matrix=[[2, 0, 0], [0, 2, 0], [0, 1, 1]], validation_ok=True),
        blessed=True, gate=Gate(0.6, 0.1, True, "the Evaluator's record (gate.json)"),
        baseline=Baseline(7, "/w/Trainer/model/7"),
        push=Push(pushed=True, version=2, destination="/w/serving/2", variants=("float32",),
                  not_pushed={"int8": "agreement 0.90 < bound 0.97"}),
        trainer_settings={"backbone": "mobilenet_v1", "weights": "imagenet", "epochs": 40})
    return dataclasses.replace(base, **changes)


def _config(tmp_path) -> PipelineConfig:
    return PipelineConfig(images=str(tmp_path), workdir=str(tmp_path / "work"))


def _png_bytes(data_uri: str) -> bytes:
    assert data_uri.startswith("data:image/png;base64,")
    data = base64.b64decode(data_uri.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_verdict_shows_each_threshold_against_the_candidate():
    html = sections.section_verdict(_record(), {1: "/w/Trainer/model/7"})
    assert "0.8000 &ge; 0.6000" in html  # min_accuracy
    assert "0.8000 &ge; 0.7500 &minus; 0.1000 (change +0.0500)" in html  # max drop vs baseline
    assert html.count('<span class="good">yes</span>') == 2
    assert "Thresholds from the Evaluator&#x27;s record (gate.json)" in html
    assert "Model artifact 7" in html and "served as version 1" in html
    assert "int8: agreement 0.90 &lt; bound 0.97" in html


def test_verdict_failed_change_threshold_and_failed_steps():
    record = _record(evaluation=dataclasses.replace(_record().evaluation, accuracy=0.6,
                                                    failures=("accuracy (change vs baseline): x",)),
                     steps=(Step("Trainer", "COMPLETE", 1.0), Step("Evaluator", "FAILED", 2.0)),
                     push=Push(reason="the Evaluator did not bless the model"))
    html = sections.section_verdict(record, {})
    assert '<span class="bad">no</span>' in html and "(change -0.1500)" in html
    assert "The Evaluator's validation failed" in html
    assert "Not pushed: the Evaluator did not bless the model" in html
    assert "Failed step(s): Evaluator" in html
    assert "served as" not in html


def test_verdict_names_the_class_the_per_class_gate_refused():
    failure = "recall of class 'fox' dropped 0.50 > 0.05 against the baseline"
    record = _record(gate=Gate(0.6, 0.1, True, "x", max_class_recall_drop=0.05), blessed=False,
                     evaluation=dataclasses.replace(_record().evaluation, validation_ok=False,
                                                    failures=(failure,)))
    html = sections.section_verdict(record, {})
    assert "each class's recall &ge; baseline's &minus; max_class_recall_drop" in html
    assert "recall of class &#x27;fox&#x27; dropped 0.50 &gt; 0.05" in html
    assert html.count('<span class="bad">no</span>') == 1  # accuracy passed, the class did not
    passed = sections.section_verdict(_record(gate=Gate(0.6, 0.1, True, "x", max_class_recall_drop=0.05)), {})
    assert "no class dropped more than 0.0500" in passed
    assert "max_class_recall_drop" not in sections.section_verdict(_record(), {})  # off: no row


def test_verdict_without_baseline_and_manual_bless():
    no_base = _record(baseline=None, gate=Gate(0.6, 0.1, False, "x"),
                      evaluation=dataclasses.replace(_record().evaluation, baseline_accuracy=None))
    html = sections.section_verdict(no_base, {})
    assert "no baseline: not applied (max drop 0.1000)" in html
    assert "none &mdash; no model was blessed yet" in html
    manual = _record(baseline=Baseline(9, "/w/Trainer/model/3", blessed_from_version=1,
                                       manual_operation="bless-20240501T100000Z-abc"))
    html = sections.section_verdict(manual, {1: "/w/Trainer/model/3/"})
    assert "made the baseline by hand from pushed version 1" in html
    assert "bless-20240501T100000Z-abc" in html and "served as version 1" in html
    # A record with no gate at all (no Evaluator) renders no thresholds.
    assert "min_accuracy" not in sections.section_verdict(_record(gate=None), {})


def test_data_section_counts_skipped_files_and_label_check():
    counts = sources.ClassCounts(("train", "eval"), {"dog": {"train": 8, "eval": 2},
                                                    "cat": {"train": 8, "eval": 2},
                                                    "zebra": {"train": 1}})
    html = sections.section_data(_record(), counts, sources.LabelCheck(True, ("class 'zebra' is new",)))
    rows = re.findall(r"<tr><td>(\w+)</td>", html)
    assert rows[:3] == ["cat", "dog", "zebra"]  # the run's label order, then the rest
    assert "<b>17</b></td><td><b>4</b></td><td><b>21</b>" in html  # the "all" row
    _png_bytes(re.search(r'id="class-counts" src="([^"]+)"', html).group(1))
    assert "Skipped files:</b> 2 (not a recognised image format: 1, too large: 1)" in html
    assert "cat/broken.png" in html and "/w/examples/ingestion_report.jsonl" in html
    assert "class &#x27;zebra&#x27; is new" in html
    html = sections.section_data(_record(skipped=(), skipped_files=0), None, sources.LabelCheck(False, ()))
    assert "Examples per split: eval 6, train 24" in html and "Skipped files:</b> none" in html
    assert "no baseline to compare with" in html


def test_training_section_marks_the_best_epoch(tmp_path):
    history = {"loss": [1.0, 0.5, 0.4], "val_loss": [0.9, 0.6, 0.7],
               "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.8, 0.7]}
    html = sections.section_training(sources.TrainingLog("/w/run/training", history, 2))
    assert "3 epoch(s); best eval loss at epoch 2" in html
    assert "<td>val_accuracy</td><td>0.8000</td>" in html  # values of the best epoch
    _png_bytes(re.search(r'id="training-curves" src="([^"]+)"', html).group(1))
    assert "tensorboard --logdir /w/run/training" in html and "(2 event file(s))" in html
    assert "No training history" in sections.section_training(sources.TrainingLog("/x", {}, 0))
    assert "No Trainer output" in sections.section_training(None)


def test_evaluation_section_marks_classes_that_got_worse():
    counts = sources.ClassCounts(("train", "eval"), {"cat": {"eval": 2}, "dog": {"eval": 3}})
    html = sections.section_evaluation(_record(), counts)
    assert "Eval accuracy <b>0.8000</b> on 6 eval images" in html
    assert "worse than the baseline: <b>fox</b>" in html
    assert 'fox <span class="bad">&#9660; worse</span>' in html
    assert "<td>dog</td><td>3</td>" in html and "worse</span></td><td>&ndash;</td>" in html
    _png_bytes(re.search(r'id="confusion-matrix" src="([^"]+)"', html).group(1))
    no_base = _record(evaluation=Evaluation(accuracy=0.8, per_class={"cat": ClassMetrics(1.0, 1.0)}))
    html = sections.section_evaluation(no_base, None)
    assert "No baseline: nothing to compare per class" in html
    assert "No confusion matrix recorded" in html
    assert "No evaluation" in sections.section_evaluation(_record(evaluation=None), None)
    # _record's matrix: one fox image taken for a dog, the only confusion.
    assert ("<tbody><tr><td>fox</td><td>dog</td><td>1</td><td>0.50</td></tr></tbody>"
            in sections.section_evaluation(_record(), counts))


def test_most_confused_lists_the_largest_off_diagonal_cells_first():
    labels = ["ant", "bee", "cat", "dog"]
    matrix = [[5, 3, 0, 0],
              [1, 6, 0, 0],
              [0, 0, 4, 4],
              [0, 0, 0, 9]]
    html = sections._most_confused(matrix, labels)
    rows = re.findall(r"<tr><td>(\w+)</td><td>(\w+)</td><td>(\d+)</td><td>([\d.]+)</td></tr>", html)
    assert rows == [("cat", "dog", "4", "0.50"), ("ant", "bee", "3", "0.38"), ("bee", "ant", "1", "0.14")]
    assert "No eval image was misclassified" in sections._most_confused([[2, 0], [0, 3]], ["a", "b"])


def _png_size(data_uri: str):
    import struct
    return struct.unpack(">II", _png_bytes(data_uri)[16:24])  # IHDR width, height


def test_charts_stay_bounded_with_many_classes():
    # 89 classes once made a 5,760 px square confusion matrix: 19 s and 1.4 GB of a report.
    n = 120
    labels = [f"breed_{i:03d}" for i in range(n)]
    matrix = [[10 if i == j else (1 if j == (i + 1) % n else 0) for j in range(n)] for i in range(n)]
    limit = (plots.MAX_INCHES + 1.5) * 96
    width, height = _png_size(plots.plot_confusion(matrix, labels))
    assert width <= limit and height <= limit
    width, height = _png_size(plots.plot_class_counts(labels, ["train"], {c: {"train": 3} for c in labels}))
    assert width <= limit and height <= limit


def test_tflite_section():
    files = sources.TFLiteFiles("pushed version 2", "/w/serving/2", (
        sources.TFLiteFile("model.tflite", 3 * 1024 * 1024,
                           sources.Parity("float32", agreement=1.0, bound=0.99, accuracy=0.8),
                           12.34, "recorded"),
        sources.TFLiteFile("model_int8.tflite", 900, None, None, "not measured")))
    html = sections.section_tflite(files)
    assert "From the pushed version 2: <code>/w/serving/2</code>" in html
    assert "3.0 MiB" in html and "12.3 ms" in html and "100.0% (bound 99.0%)" in html
    assert '<span class="good">yes</span>' in html  # passed from agreement >= bound
    assert "900 B" in html and "not recorded" in html
    assert "No TFLite files" in sections.section_tflite(None)


def test_backbone_section_sources(tmp_path):
    config = _config(tmp_path)
    html = sections.section_backbone(_record(), None, config)
    assert "mobilenet_v1" in html and "the Trainer&#x27;s settings" in html
    assert "1024 floats" in html and "<td>epochs</td><td>40</td>" in html
    html = sections.section_backbone(_record(trainer_settings={}), "efficientnet_lite0", config)
    assert "efficientnet_lite0" in html and "the TFLite export" in html
    html = sections.section_backbone(_record(trainer_settings={"backbone": "gone_net"}), None, config)
    assert "unavailable" in html


def test_backbone_section_says_which_top_model_a_fine_tuned_run_kept(tmp_path):
    config = _config(tmp_path)
    record = _record(trainer_settings={"backbone": "mobilenet_v1", "trainable_blocks": 2,
                                       "activation_dtype": "float16"})
    kept = sections.section_backbone(record, None, config, {
        "kept": "fine-tuned", "fine_tuned_eval_loss": 0.41, "head_only_eval_loss": 0.5})
    assert "<td>kept</td><td>the fine-tuned blocks (best eval loss 0.4100 fine-tuned, 0.5000 for " \
           "the head alone)</td>" in kept
    fell_back = sections.section_backbone(record, None, config, {
        "kept": "head only", "fine_tuned_eval_loss": 0.6, "head_only_eval_loss": None})
    assert '<span class="bad">the head alone on the ImageNet blocks: fine-tuning did not lower the eval ' \
           'loss (best eval loss 0.6000 fine-tuned, n/a for the head alone)</span>' in fell_back
    assert "<td>kept</td>" not in sections.section_backbone(record, None, config)


def test_backbone_section_says_how_fine_tuning_started(tmp_path):
    """A continued run (components/continuation.py): where it started, and the served
    weights kept when no epoch beat them; a cold start says why."""
    config = _config(tmp_path)
    record = _record(trainer_settings={"backbone": "mobilenet_v1", "trainable_blocks": 1,
                                       "activation_dtype": "float16"})
    continued = sections.section_backbone(record, None, config, {
        "kept": "served", "fine_tuned_eval_loss": 0.52, "head_only_eval_loss": 0.7, "served_eval_loss": 0.5,
        "start": {"source": "/root/Trainer/model/7", "epochs": 2, "new_rows": 10, "rows": 100,
                  "reason": "continued from the served model: 10 of 100 train rows new"}})
    assert "<td>start</td><td>continued from the served model: 10 of 100 train rows new; 2 epochs at " \
           "0.1 x the step sizes</td>" in continued
    assert "<td>kept</td><td>the served model&#x27;s blocks and head: no epoch lowered their eval loss " \
           "0.5000 (best eval loss 0.5200 fine-tuned, 0.7000 for the head alone)</td>" in continued
    cold = sections.section_backbone(record, None, config, {
        "kept": "fine-tuned", "fine_tuned_eval_loss": 0.4, "head_only_eval_loss": 0.5,
        "start": {"source": None, "reason": "--cold-start: from the ImageNet weights"}})
    assert "<td>start</td><td>--cold-start: from the ImageNet weights</td>" in cold


def test_timing_section():
    html = sections.section_timing(_record())
    assert "<td>Trainer</td><td>COMPLETE</td><td>7.2</td>" in html  # 7.25 rounded half-even
    assert html.count("<tr>") == 1 + 4


def test_plots_are_png_data_uris():
    for uri in (plots.plot_class_counts(["a", "b"], ["train"], {"a": {"train": 2}, "b": {}}),
                plots.plot_history({"loss": [1.0, 0.5], "accuracy": [0.5, 0.7]}, 2),
                plots.plot_confusion([[1, 0], [0, 0]], ["a", "b"])):
        assert len(_png_bytes(uri)) > 1000


def test_page_and_build_report_latest_only_when_asked(tmp_path):
    config = _config(tmp_path)
    html = page.render(_record(), config, measure_latency=False)
    for key in report.SECTIONS:
        assert f'<section id="{key}">' in html
    assert "Blessed and shipped as version 2" in html and 'class="shipped"' in html
    assert "eval accuracy 0.8000 vs baseline 0.7500" in html
    reports = tmp_path / "work" / "reports"
    old = report.build_report(config, _record(run_id="old"), latest=False, measure_latency=False)
    assert os.path.basename(old) == "old.html" and not (reports / report.LATEST).exists()
    new = report.build_report(config, _record(), latest=True, measure_latency=False)
    assert (reports / report.LATEST).read_text() == open(new).read()
    report.build_report(config, _record(run_id="old"), latest=False, measure_latency=False)
    assert (reports / report.LATEST).read_text() == open(new).read()  # not replaced


def test_a_section_whose_data_is_unreadable_shows_its_error(tmp_path):
    run = tmp_path / "model_run" / "training"
    run.mkdir(parents=True)
    (run / "history.json").write_text("{not json")
    record = _record(uris=ArtifactUris(model_run=str(tmp_path / "model_run")), blessed=False,
                     push=None)
    html = page.render(record, _config(tmp_path), measure_latency=False)
    training = re.search(r'<section id="training">(.*?)</section>', html).group(1)
    assert 'class="error">This section could not be built: JSONDecodeError' in training
    assert html.count('class="error"') == 1 and "Not blessed: nothing shipped" in html


def test_tflite_files_read_parity_and_measure_latency_when_asked(tmp_path):
    import tensorflow as tf

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            return {"y": x * 2.0}

    module = Double()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module)
    folder = tmp_path / "serving" / "1"
    folder.mkdir(parents=True)
    (folder / "a.tflite").write_bytes(converter.convert())
    (folder / "model.tflite").write_bytes((folder / "a.tflite").read_bytes())
    from components.tflite.parity import Agreement, ParityReport, VariantParity
    ParityReport(variants=(VariantParity.judged("float32", 0.99, None, Agreement(10, 1.0, 0.8, 10, 0.0, 0.0)),),
                 passed=("float32",), backbone="mobilenet_v1", label_names=("a", "b"),
                 calibration_examples=0, eval_examples=10, reference_accuracy=0.8).write(str(folder))
    found = sources.tflite_files([("gone", str(tmp_path / "nowhere")), ("v1", str(folder))])
    a, b = found.files
    assert found.origin == "v1" and a.parity is None and b.parity.variant == "float32"
    assert (b.parity.agreement, b.parity.bound, b.parity.passed, b.parity.accuracy) == (1.0, 0.99, True, 0.8)
    assert a.latency_source.startswith("measured here") and a.latency_ms > 0
    unmeasured = sources.tflite_files([("v1", str(folder))], measure=False).files[0]
    assert (unmeasured.latency_ms, unmeasured.latency_source) == (None, "not measured")


def test_summary_derives_from_the_record():
    s = run_summary.summarize(_record())
    assert (s["run_id"], s["blessed"], s["pushed_version"], s["pushed_dir"]) == \
        ("2024-05-01T10:00:00.5", True, 2, "/w/serving/2")
    assert s["per_class"]["fox"] == {"precision": 1.0, "recall": 0.5, "baseline_precision": 1.0,
                                     "baseline_recall": 1.0}
    assert s["skipped"][0] == {"path": "cat/broken.png", "reason": "not a recognised image format"}
    assert s["seconds"]["Trainer"] == 7.25 and s["states"]["Evaluator"] == "COMPLETE"
    assert s["not_pushed"] == {"int8": "agreement 0.90 < bound 0.97"} and s["pushed_variants"] == ["float32"]
    first = run_summary.summarize(_record(
        baseline=None, push=Push(reason="not blessed"),
        evaluation=Evaluation(accuracy=0.5, per_class={"cat": ClassMetrics(None, 0.5)})))
    assert first["per_class"] == {"cat": {"precision": None, "recall": 0.5}}  # no baseline_* keys
    assert first["pushed_version"] is None and first["not_pushed_reason"] == "not blessed"
    assert json.loads(json.dumps(first)) == first


@pytest.mark.parametrize("state,live,status", [
    ("FAILED", False, "failed"), ("RUNNING", True, "running"),
    ("RUNNING", False, "interrupted"),  # its process is gone (issue 17; tests/unit/test_run_status.py)
    ("CACHED", False, "complete")])
def test_record_status(state, live, status):
    steps = (Step("A", "COMPLETE", 1.0), Step("TFLitePusher", state, 1.0))
    assert _record(steps=steps, live=live).status == status
