"""docs/kubeflow.md says TFX 1.16 drops RuntimeParameter defaults from a KFP v2
spec, which is why every setting is compiled in. This checks the claim against
the pinned TFX: should an upgrade start writing the default, the test fails and
the runtime-parameter design can be reconsidered."""

import json

from tfx import v1 as tfx
from tfx.orchestration import data_types


def test_tfx_drops_runtime_parameter_defaults_from_the_v2_spec(tmp_path):
    param = data_types.RuntimeParameter(name="input-base", default="/data/in", ptype=str)
    pipeline = tfx.dsl.Pipeline(pipeline_name="rp", pipeline_root=str(tmp_path / "root"),
                                components=[tfx.components.ImportExampleGen(input_base=param)])
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image="image"),
        output_dir=str(tmp_path), output_filename="pipeline.json")
    runner.run(pipeline, write_out=True)
    text = (tmp_path / "pipeline.json").read_text()
    doc = json.loads(text)
    # The parameter is declared, typed, with no default anywhere in the document.
    assert doc["pipelineSpec"]["root"]["inputDefinitions"]["parameters"] == {"input-base": {"type": "STRING"}}
    assert "/data/in" not in text
    assert "parameters" not in doc.get("runtimeConfig", {})
