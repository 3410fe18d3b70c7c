"""The pipeline's Evaluator: TFX's, on cached features when it can, recording its gate.

TFX's Evaluator runs TFMA over the eval split through each model's
``serving_default``: decode, resize, the whole backbone, then the head. The
backbone's features of exactly those images are already in BottleneckGen's
``bottlenecks`` (Split-eval holds the plain view only: augmented views are made
for train). When the candidate and the baseline both carry the Trainer's
``serving_features`` signature (the head alone on those tf.Examples) and were
trained on features of BottleneckGen's namespace (backbone, weights fingerprint,
preprocessing version: the features are only comparable then), TFMA reads the
bottlenecks' eval split through that signature instead: the same probabilities
up to float noise, without running the backbone again. Otherwise (an older
blessed model without the signature, another backbone or weights, random
weights, no ``features`` input) it evaluates the images as before.

Either way the outputs are TFX's (``evaluation``, ``blessing``) plus
``contracts.GATE_FILE``; the evaluation's custom property ``eval_input``
("features" or "images") and ``eval_input_reason`` say which path ran and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components import Evaluator as StockEvaluator
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils, proto_utils

from components import contracts, model_info
from components.previous_artifacts import as_resolved

FEATURES = "features"  # the Evaluator's extra input: BottleneckGen's bottlenecks
EVAL_INPUT = "eval_input"  # the evaluation's custom property: "features" or "images"
EVAL_INPUT_REASON = "eval_input_reason"
EVAL_SPLIT = "eval"
KERAS_METADATA = "keras_metadata.pb"


@dataclass(frozen=True)
class EvalInput:
    """Which examples TFMA reads: BottleneckGen's features or the images, and why."""
    features: bool
    reason: str


def _signatures(model_uri: str) -> List[str]:
    """Signature names of the SavedModel in a Model artifact (read from saved_model.pb)."""
    import tensorflow as tf
    from tensorflow.python.saved_model import loader_impl
    try:
        saved = loader_impl.parse_saved_model(contracts.join(model_uri, contracts.SERVING_MODEL_DIR))
    except (IOError, OSError, tf.errors.OpError, ValueError) as e:
        logging.info("Evaluator: cannot read the SavedModel of %s (%s)", model_uri, e)
        return []
    return [name for graph in saved.meta_graphs for name in graph.signature_def]


def choose_input(features: List[types.Artifact], models: Dict[str, types.Artifact]) -> EvalInput:
    """Features when every model in `models` (name -> Model artifact) has the features
    signature and was trained on features of the bottlenecks' namespace."""
    if not features:
        return EvalInput(False, "no features input")
    bottlenecks = features[0]
    namespace = bottlenecks.get_string_custom_property("namespace") \
        if bottlenecks.has_custom_property("namespace") else ""
    if not namespace:
        return EvalInput(False, "the features have no namespace (random weights or an older BottleneckGen)")
    if EVAL_SPLIT not in artifact_utils.decode_split_names(bottlenecks.split_names):
        return EvalInput(False, f"the features have no {EVAL_SPLIT} split")
    for name, model in models.items():
        if contracts.FEATURES_SIGNATURE not in _signatures(model.uri):
            return EvalInput(False, f"the {name} model has no {contracts.FEATURES_SIGNATURE} signature")
        if model_info.text_field(model_info.read_head_info(model.uri), "feature_namespace") != namespace:
            return EvalInput(False, f"the {name} model was trained on other features "
                                    f"(backbone, weights or preprocessing differ)")
    return EvalInput(True, "every model has the features signature and the features' namespace")


def features_eval_config(eval_config_json: str) -> str:
    """The Evaluator's eval config (JSON) with each model read through FEATURES_SIGNATURE."""
    import tensorflow_model_analysis as tfma
    config = tfma.EvalConfig()
    proto_utils.json_to_proto(eval_config_json, config)
    for spec in config.model_specs:
        spec.signature_name = contracts.FEATURES_SIGNATURE
    return proto_utils.proto_to_json(config)


def is_keras_saved_model(model_uri: str) -> bool:
    """Whether the Model artifact's SavedModel was written by Keras (``keras_metadata.pb``;
    the Trainer saves a tf.Module, which has none)."""
    import tensorflow as tf
    return tf.io.gfile.exists(contracts.join(model_uri, contracts.SERVING_MODEL_DIR, KERAS_METADATA))


def typed_eval_config(eval_config_json: str, models: Dict[str, types.Artifact]) -> str:
    """The eval config with each model spec that names no type typed TF_GENERIC when its
    model (``models``: "candidate"/"baseline" -> Model artifact) is not a Keras SavedModel.

    That is the type TFMA finds for those models itself, but to find it
    (tensorflow_model_analysis/utils/model_util.py ``get_model_type``) it first tries
    ``tf.keras.models.load_model`` on each one and fails: about 0.5 s per model per run."""
    import tensorflow_model_analysis as tfma
    config = tfma.EvalConfig()
    proto_utils.json_to_proto(eval_config_json, config)
    for spec in config.model_specs:
        model = models.get("baseline" if spec.is_baseline else "candidate")
        if not spec.model_type and model is not None and not is_keras_saved_model(model.uri):
            spec.model_type = tfma.TF_GENERIC
    return proto_utils.proto_to_json(config)


def eval_class_ids(examples: List[types.Artifact]) -> List[int]:
    """The labels present in the eval split of `examples` (ImageExampleGen's images or
    BottleneckGen's features: both carry contracts.LABEL_KEY)."""
    import tensorflow as tf

    from components import data_audit
    spec = {contracts.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    found = set()
    for batch in data_audit.split_records(examples[0].uri, EVAL_SPLIT):
        found.update(int(v) for v in tf.io.parse_example(batch, spec)[contracts.LABEL_KEY].numpy())
    return sorted(found)


def gate_present_classes(eval_config_json: str, examples: List[types.Artifact]) -> str:
    """The eval config with the per-class recall gate (if on) limited to the classes
    that have eval examples (components/evaluation.keep_class_recall_classes)."""
    import tensorflow_model_analysis as tfma

    from components import evaluation
    config = tfma.EvalConfig()
    proto_utils.json_to_proto(eval_config_json, config)
    if not any(evaluation.is_class_recall(m) for spec in config.metrics_specs for m in spec.metrics):
        return eval_config_json  # gate off: the config as given
    evaluation.keep_class_recall_classes(config, eval_class_ids(examples))
    return proto_utils.proto_to_json(config)


def eager_metrics(do):
    """``do`` with AutoGraph off for the eager calls it makes (tf.function tracing turns it
    back on: tensorflow/python/eager/polymorphic_function/tracing_compilation.py).

    TFMA updates Keras metrics (SparseCategoricalAccuracy) eagerly, batch by batch
    (tensorflow_model_analysis/metrics/tf_metric_wrapper.py ``_process_batch``), and
    Keras wraps every ``update_state`` in ``tf_convert`` (tf_keras/src/metrics/
    base_metric.py ``Metric.__new__``): with AutoGraph on, the first call converts the
    metric's Python source, about 2 s a run, for eager ops that compute the same values
    either way. The Beam runner runs in this thread (in-memory DirectRunner); other
    runners' workers convert as before."""
    import tensorflow as tf
    return tf.autograph.experimental.do_not_convert(do)


@as_resolved("baseline_model")
class EvaluatorExecutor(evaluator_executor.Executor):
    """TFX's Evaluator, but a lookup's "nothing found" baseline counts as none,
    and the eval split's cached features stand in for its images when they may.

    The stock executor decides ``has_baseline`` by the channel being non-empty
    and would try to load a SavedModel from the empty artifact (as_resolved drops
    it). Afterwards it records the gate it applied (components.evaluation.write_gate).
    """

    def Do(self, input_dict, output_dict, exec_properties):
        input_dict, exec_properties = dict(input_dict), dict(exec_properties)
        features = input_dict.pop(FEATURES, None) or []
        models = {"candidate": m for m in input_dict.get("model") or []}
        models.update({"baseline": m for m in input_dict.get("baseline_model") or []})
        chosen = EvalInput(False, "no eval config")
        if exec_properties.get("eval_config"):
            chosen = choose_input(features, models)
        logging.info("Evaluator: evaluating on the %s: %s",
                     "cached features" if chosen.features else "images", chosen.reason)
        if chosen.features:
            input_dict["examples"] = features
            exec_properties["eval_config"] = features_eval_config(exec_properties["eval_config"])
        if exec_properties.get("eval_config") and input_dict.get("examples"):
            exec_properties["eval_config"] = gate_present_classes(
                exec_properties["eval_config"], input_dict["examples"])
        if exec_properties.get("eval_config"):
            exec_properties["eval_config"] = typed_eval_config(exec_properties["eval_config"], models)
        result = eager_metrics(super().Do)(input_dict, output_dict, exec_properties)
        if output_dict.get("evaluation"):
            evaluation = artifact_utils.get_single_instance(output_dict["evaluation"])
            evaluation.set_string_custom_property(EVAL_INPUT, "features" if chosen.features else "images")
            evaluation.set_string_custom_property(EVAL_INPUT_REASON, chosen.reason)
            if exec_properties.get("eval_config"):
                from components import evaluation as gate
                gate.write_gate(evaluation.uri, exec_properties["eval_config"],
                                bool(input_dict.get("baseline_model")))
        return result


class EvaluatorSpec(standard_component_specs.EvaluatorSpec):
    """TFX's Evaluator spec plus the optional ``features`` input (BottleneckGen's bottlenecks)."""
    INPUTS = {**standard_component_specs.EvaluatorSpec.INPUTS,
              FEATURES: ChannelParameter(type=standard_artifacts.Examples, optional=True)}


class Evaluator(StockEvaluator):
    """TFX's Evaluator with :class:`EvaluatorExecutor` and a ``features`` input; same id
    (``Evaluator``), same outputs. Only the parameters this pipeline uses."""

    SPEC_CLASS = EvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(EvaluatorExecutor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel,
                 baseline_model: Optional[types.BaseChannel], eval_config,
                 example_splits: Optional[List[str]] = None,
                 features: Optional[types.BaseChannel] = None):
        # StockEvaluator.__init__ builds its own spec class: build ours the same way.
        base_beam_component.BaseBeamComponent.__init__(self, spec=EvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, features=features,
            feature_slicing_spec=None, fairness_indicator_thresholds=json_utils.dumps(None),
            example_splits=json_utils.dumps(example_splits), eval_config=eval_config,
            schema=None, module_file=None, module_path=None,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))

