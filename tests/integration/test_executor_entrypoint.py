"""kubeflow/executor_entrypoint.py: the ExecutorInput the open-source KFP driver
builds (backend/src/v2/driver/driver.go, metadata/client.go and converter.go:
untyped inputs, wrapped metadata, an executor-logs output) repaired into the one
TFX's kubeflow_v2_run_executor needs; then a real TFX executor run through it."""

import json
import subprocess
import sys

import pytest

from kubeflow import executor_entrypoint as entry

EXAMPLES = {"instanceSchema": "title: tfx.Examples\ntype: object\n"}
STATS = {"instanceSchema": "title: tfx.ExampleStatistics\ntype: object\n"}
INPUTS_SPEC = {"artifacts": {"examples": {"artifactType": EXAMPLES}},
               "parameters": {"exclude_splits": {"parameterType": "STRING"}}}
OUTPUTS_SPEC = {"artifacts": {"statistics": {"artifactType": STATS}}}


def _driver_input(examples_type):
    """What the open-source driver sends a StatisticsGen task (KFP 2.5+)."""
    return {
        "inputs": {"parameterValues": {"exclude_splits": "[]"}, "artifacts": {"examples": {"artifacts": [{
            "name": "12", "type": examples_type, "uri": "/root/ImageExampleGen/u1/examples",
            "metadata": {"display_name": "examples", "store_session_info": "{}",
                         "split_names": "[\"train\", \"eval\"]", "span": 0.0,
                         "label_names": {"list": ["a", "b"]}, "conf": {"struct": {"k": 1.0}},
                         "plain": {"k": 1.0, "j": 2.0}}}]}}},
        "outputs": {"artifacts": {
            "statistics": {"artifacts": [{"type": STATS, "uri": "/root/StatisticsGen/u2/statistics"}]},
            "executor-logs": {"artifacts": [{"type": {"schemaTitle": "system.Artifact"},
                                             "uri": "/root/StatisticsGen/u2/executor-logs"}]}},
            "outputFile": "/tmp/kfp_outputs/output_metadata.json"},
    }


def test_untyped_inputs_get_the_declared_type_and_metadata_is_unwrapped():
    fixed = entry.repair(_driver_input({"instanceSchema": ""}), INPUTS_SPEC, OUTPUTS_SPEC)
    (examples,) = fixed["inputs"]["artifacts"]["examples"]["artifacts"]
    assert examples["type"] == EXAMPLES
    assert examples["metadata"] == {"split_names": "[\"train\", \"eval\"]", "span": 0.0,
                                    "label_names": ["a", "b"], "conf": {"k": 1.0},
                                    "plain": {"k": 1.0, "j": 2.0}}
    assert set(fixed["outputs"]["artifacts"]) == {"statistics"}  # executor-logs dropped


def test_typed_inputs_and_declared_outputs_are_left_alone():
    given = _driver_input(EXAMPLES)
    del given["outputs"]["artifacts"]["executor-logs"]
    fixed = entry.repair(given, INPUTS_SPEC, OUTPUTS_SPEC)
    assert fixed["inputs"]["artifacts"]["examples"]["artifacts"][0]["type"] == EXAMPLES
    assert fixed["outputs"] == given["outputs"]


def test_a_type_missing_from_both_is_a_named_error():
    given = _driver_input({"instanceSchema": ""})
    with pytest.raises(entry.EntrypointError, match="input artifact 'examples' arrived without a type"):
        entry.repair(given, {"artifacts": {}}, OUTPUTS_SPEC)
    no_type = _driver_input(None)
    del no_type["inputs"]["artifacts"]["examples"]["artifacts"][0]["type"]
    assert entry.repair(no_type, INPUTS_SPEC, None)["inputs"]["artifacts"]["examples"][
        "artifacts"][0]["type"] == EXAMPLES


def test_stock_tfx_entry_point_fails_on_what_the_shim_repairs(tmp_path):
    """The failures the issue reports, reproduced with TFX's own entry point, then
    the same ExecutorInput through the shim: a real StatisticsGen run."""
    import tensorflow as tf
    examples = tmp_path / "examples"
    for split in ("train", "eval"):
        (examples / f"Split-{split}").mkdir(parents=True)
        with tf.io.TFRecordWriter(str(examples / f"Split-{split}" / "data.tfrecord")) as w:
            for i in range(4):
                w.write(tf.train.Example(features=tf.train.Features(feature={
                    "x": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))})).SerializeToString())
    given = _driver_input({"instanceSchema": ""})
    given["inputs"]["artifacts"]["examples"]["artifacts"][0]["uri"] = str(examples)
    given["outputs"]["artifacts"]["statistics"]["artifacts"][0]["uri"] = str(tmp_path / "statistics")
    given["outputs"]["artifacts"]["executor-logs"]["artifacts"][0]["uri"] = str(tmp_path / "logs")
    given["outputs"]["outputFile"] = str(tmp_path / "pod" / "output_metadata.json")
    args = ["--executor_class_path", "tfx.components.statistics_gen.executor.Executor",
            "--json_serialized_invocation_args", json.dumps(given),
            "--json_serialized_inputs_spec_args", json.dumps(INPUTS_SPEC)]
    stock = subprocess.run([sys.executable, "-m", entry.TFX_ENTRYPOINT, *args],
                           capture_output=True, text=True, timeout=300)
    assert stock.returncode != 0 and "AttributeError" in stock.stderr
    shim = subprocess.run([sys.executable, "-m", "kubeflow.executor_entrypoint", *args,
                           "--json_serialized_outputs_spec_args", json.dumps(OUTPUTS_SPEC)],
                          capture_output=True, text=True, timeout=300)
    assert shim.returncode == 0, shim.stderr[-2000:]
    assert tf.io.gfile.glob(str(tmp_path / "statistics" / "Split-train" / "*"))
    with open(tmp_path / "pod" / "output_metadata.json") as f:
        assert set(json.load(f)["artifacts"]) == {"statistics"}


def test_driver_metadata_is_merged_under_the_executors():
    driver = {"parameterValues": {"span": 0}, "artifacts": {"examples": {"artifacts": [
        {"uri": "/e", "metadata": {"input_fingerprint": "split:images,num_files:3", "span": 0.0,
                                   "tfx_version": "1.16.0"}}]}}}
    executor = {"artifacts": {"examples": {"artifacts": [
        {"uri": "/e", "metadata": {"span": 1.0, "split_names": "[\"train\"]"}}]}}}
    merged = entry.merge_driver_metadata(executor, driver)
    assert merged["artifacts"]["examples"]["artifacts"][0]["metadata"] == {
        "input_fingerprint": "split:images,num_files:3", "span": 1.0, "tfx_version": "1.16.0",
        "split_names": "[\"train\"]"}
    assert executor["artifacts"]["examples"]["artifacts"][0]["metadata"]["span"] == 1.0  # not mutated
