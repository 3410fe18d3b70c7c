"""The gate's thresholds as data: the Evaluator records them (gate.json), the
RunRecord and the report read them back; runs made before gate.json existed
get them from the Evaluator's eval config, as before."""

import dataclasses
import json

import pytest
import tensorflow_model_analysis as tfma
from google.protobuf import json_format
from tensorflow_model_analysis.proto import config_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components import contracts, evaluation
from components import previous_artifacts as pa
from pipeline.config import PipelineConfig
from pipeline.report import sections
from pipeline.run_record import RunRecord, read_gate
from conftest import tfx_artifact as _artifact

LABELS = ["a", "b", "c"]


def _eval_config(min_accuracy, max_accuracy_drop):
    return evaluation.make_eval_config(LABELS, min_accuracy, max_accuracy_drop)


def _write_tfma_eval_config(folder, eval_config):
    """eval_config.json as TFMA's Evaluator writes it (tfma.writers.eval_config_writer)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = config_pb2.EvalRun(eval_config=eval_config, version=tfma.version.VERSION)
    (folder / "eval_config.json").write_text(json_format.MessageToJson(run))


def test_gate_thresholds_invert_make_eval_config():
    for lo, drop in ((0.5, 0.01), (0.8, 0.0), (0.0, 1.0), (0.73, 0.125)):
        assert evaluation.gate_thresholds(_eval_config(lo, drop)) == \
            {"min_accuracy": lo, "max_accuracy_drop": drop}
    dropped = tfma.utils.update_eval_config_with_defaults(
        _eval_config(0.7, 0.02), has_baseline=False, rubber_stamp=True)
    assert evaluation.gate_thresholds(dropped) == {"min_accuracy": 0.7}


def test_evaluator_executor_writes_gate_json(tmp_path, monkeypatch):
    from tfx.components.evaluator import executor as stock
    monkeypatch.setattr(stock.Executor, "Do", lambda self, i, o, e: None)
    props = {"eval_config": proto_utils.proto_to_json(_eval_config(0.6, 0.05))}
    model = _artifact(standard_artifacts.Model, tmp_path / "m")

    def run(name, baseline):
        out = _artifact(standard_artifacts.ModelEvaluation, tmp_path / name)
        (tmp_path / name).mkdir()
        pa.EvaluatorExecutor().Do({"model": [model], "baseline_model": baseline},
                                  {"evaluation": [out]}, props)
        return json.loads((tmp_path / name / contracts.GATE_FILE).read_text())

    none = _artifact(standard_artifacts.Model, tmp_path / "none", found=0)
    assert run("first", [none]) == {"min_accuracy": 0.6, "max_accuracy_drop": 0.05,
                                    "baseline_compared": False}
    found = _artifact(standard_artifacts.Model, tmp_path / "b")
    assert run("second", [found])["baseline_compared"] is True
    assert run("third", [])["baseline_compared"] is False


def test_thresholds_come_from_gate_json(tmp_path):
    config = PipelineConfig(images="", workdir=str(tmp_path), min_accuracy=0.5)
    ev = tmp_path / "evaluation"
    # TFMA's config without a baseline lost the change threshold; gate.json has it.
    _write_tfma_eval_config(ev, tfma.utils.update_eval_config_with_defaults(
        _eval_config(0.9, 0.2), has_baseline=False, rubber_stamp=True))
    evaluation.write_gate(str(ev), _eval_config(0.7, 0.03), baseline_compared=False)
    gate = read_gate(str(ev), json.dumps({"min_accuracy": 0.1, "max_accuracy_drop": 0.4}), config)
    assert (gate.min_accuracy, gate.max_accuracy_drop, gate.baseline_compared) == (0.7, 0.03, False)
    assert gate.source == "the Evaluator's record (gate.json)"
    html = sections.section_verdict(RunRecord(run_id="r", gate=gate), {})
    assert "&ge; 0.7000" in html and "no baseline: not applied (max drop 0.0300)" in html
    assert "Thresholds from the Evaluator&#x27;s record (gate.json)" in html


def test_runs_without_gate_json_fall_back_to_the_eval_config(tmp_path):
    config = PipelineConfig(images="", workdir=str(tmp_path), min_accuracy=0.5, max_accuracy_drop=0.01)
    with_baseline = tmp_path / "second"
    _write_tfma_eval_config(with_baseline, _eval_config(0.8, 0.02))
    gate = read_gate(str(with_baseline), None, config)
    assert (gate.min_accuracy, gate.max_accuracy_drop, gate.baseline_compared) == (0.8, 0.02, None)
    assert gate.source == "the Evaluator's eval config"
    # First run: TFX dropped the change threshold; the Pusher's gate setting has it.
    first = tmp_path / "first"
    _write_tfma_eval_config(first, tfma.utils.update_eval_config_with_defaults(
        _eval_config(0.8, 0.02), has_baseline=False, rubber_stamp=True))
    gate = read_gate(str(first), json.dumps({"min_accuracy": 0.8, "max_accuracy_drop": 0.02}), config)
    assert (gate.min_accuracy, gate.max_accuracy_drop) == (0.8, 0.02)
    assert gate.source == "the Evaluator's eval config (max_accuracy_drop: the Pusher's gate setting)"
    # Nothing recorded at all: the run settings.
    gate = read_gate(None, None, config)
    assert (gate.min_accuracy, gate.max_accuracy_drop, gate.source) == (0.5, 0.01, "the run settings")
    html = sections.section_verdict(RunRecord(run_id="r", gate=dataclasses.replace(gate)), {})
    assert "min_accuracy" in html and "Thresholds from the run settings" in html


@pytest.mark.parametrize("text", ["{broken", '{"min_accuracy": "high", "max_accuracy_drop": 0.1}',
                                  '["min_accuracy"]'])
def test_a_malformed_gate_json_is_ignored(tmp_path, text):
    ev = tmp_path / "evaluation"
    _write_tfma_eval_config(ev, _eval_config(0.8, 0.02))
    (ev / contracts.GATE_FILE).write_text(text)
    gate = read_gate(str(ev), None, PipelineConfig(images="", workdir=str(tmp_path)))
    assert (gate.min_accuracy, gate.max_accuracy_drop) == (0.8, 0.02)
    assert gate.source == "the Evaluator's eval config"
