"""The TFLiteExport component: blessed model -> TFLite variants with their parity.

After the Trainer (and the Evaluator's blessing), builds the pixel model from the
backbone and the head the Trainer saved, converts the configured variants, measures
each one's top-1 agreement with the SavedModel's probabilities on the eval split
of the raw Examples, and writes the files, ``labels.txt`` and ``parity.json`` into
its ``TFLiteModels`` artifact (components/tflite/export.py).  The Pusher pushes
only the variants that met their bound; ``parity.json`` says why the others did not.

The reference probabilities come from the head on BottleneckGen's cached eval
features when the optional ``bottlenecks`` input is given and every eval example
joins it (components/tflite/reference.py), else from a SavedModel pass over the
images; the artifact's ``parity_reference`` / ``parity_reference_reason`` say
which and why, ``part_seconds`` what each part of the export cost.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import contracts
from components.settings import TFLiteExportSettings
from components.tflite import convert, export, parity, reference
from components.tflite.variants import DEFAULT_CALIBRATION_IMAGES, DEFAULT_VARIANTS, check_variants
from components.tflite.variants import parity_bounds as _bounds  # the argument of that name shadows it


BOTTLENECKS = "bottlenecks"  # the optional input
PARITY_REFERENCE = "parity_reference"  # custom properties: reference.FEATURES or reference.SAVED_MODEL,
PARITY_REFERENCE_REASON = "parity_reference_reason"  # why,
PART_SECONDS = "part_seconds"  # and JSON {part: seconds}


class TFLiteModels(types.Artifact):
    """TFLite variants, labels.txt and parity.json of one trained model."""
    # Kubeflow V2 writes TYPE_NAME as the schema title (pattern '<module>.<Class>')
    # and imports it back as a class path: the components package must expose
    # TFLiteModels (a lazy ``__getattr__`` in components/__init__.py).
    TYPE_NAME = contracts.TFLITE_MODELS_TYPE


class TFLiteExportSpec(ComponentSpec):
    PARAMETERS = {  # TFLiteExportSettings.to_exec_properties()
        "variants": ExecutionParameter(type=str),  # JSON list
        "parity_bounds": ExecutionParameter(type=str),  # JSON {variant: min agreement}
        "calibration_images": ExecutionParameter(type=int),
        "num_threads": ExecutionParameter(type=int),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        # BottleneckGen's bottlenecks: the parity reference without a backbone pass.
        BOTTLENECKS: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {"tflite_models": ChannelParameter(type=TFLiteModels)}


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        from components import backbones, trainer  # trainer needs tf.Transform: only here
        out = artifact_utils.get_single_instance(output_dict["tflite_models"])
        blessings = input_dict.get("model_blessing") or []
        if blessings and not artifact_utils.get_single_instance(blessings).get_int_custom_property("blessed"):
            logging.info("Model not blessed: no TFLite conversion.")
            out.set_int_custom_property("converted", 0)
            return
        settings = TFLiteExportSettings.from_exec_properties(exec_properties)
        variants = list(settings.variants)
        bounds = _bounds(settings.parity_bounds)
        model = artifact_utils.get_single_instance(input_dict["model"])
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        timer = export.PartSeconds()
        with timer.part("load_head"):
            head, info = trainer.load_head(model.uri)
        current = _fingerprint(info["backbone"], info["weights"])
        if info.get("weights_fingerprint") and current != info["weights_fingerprint"]:
            raise RuntimeError(f"the {info['backbone']} weights changed since the head was trained "
                               f"({info['weights_fingerprint'][:12]} -> {str(current)[:12]}); retrain")
        blocks = trainer.trainable_blocks_of(info)  # fine-tuned top blocks (components/fine_tune.py)
        with timer.part("pixel_model"):
            pixel_model = trainer.build_pixel_model(info["backbone"], info["weights"], head, blocks)
        with timer.part("calibration_read"):
            calib = convert.calibration_images(reference.split_files(examples, "train"),
                                               settings.calibration_images) if "int8" in variants else []
        size = backbones.get_spec(info["backbone"]).input_size
        eval_files = reference.split_files(examples, "eval")
        with timer.part("reference"):
            choice = reference.choose(head, info, (input_dict.get(BOTTLENECKS) or [None])[0], eval_files)
        logging.info("TFLiteExport: parity reference from the %s: %s",
                     "cached features" if choice.source == reference.FEATURES else "SavedModel", choice.reason)
        if choice.source == reference.FEATURES:
            batches = reference.feature_batches(eval_files, choice.probabilities, size, timer)
        else:
            batches = reference.saved_model_batches(
                eval_files, os.path.join(model.uri, contracts.SERVING_MODEL_DIR), size, timer)
        report = export.export_variants(
            pixel_model, variants, bounds, info["label_names"], info["backbone"], out.uri, calib, batches,
            version=str(model.id), num_threads=settings.num_threads,
            # The cached plan is per backbone weights: fine-tuned blocks have their own.
            plan_cache=convert.PlanCache(info["backbone"], current) if current and not blocks else None,
            reference_name=reference.FEATURES_REFERENCE if choice.source == reference.FEATURES else parity.REFERENCE,
            timer=timer)
        seconds = timer.rounded()
        seconds.update({f"convert[{v.variant}]": v.conversion.convert_seconds
                        for v in report.variants if v.conversion})
        logging.info("TFLiteExport seconds per part: %s", json.dumps(seconds, sort_keys=True))
        out.set_string_custom_property(PARITY_REFERENCE, choice.source)
        out.set_string_custom_property(PARITY_REFERENCE_REASON, choice.reason)
        out.set_string_custom_property(PART_SECONDS, json.dumps(seconds, sort_keys=True))
        for variant, reason in report.failed.items():
            logging.warning("TFLite %s will not be pushed: %s", variant, reason)
        out.set_int_custom_property("converted", 1)
        out.set_string_custom_property("passed_variants", json.dumps(list(report.passed)))
        out.set_string_custom_property("failed_variants", json.dumps(report.failed))


class TFLiteExport(base_component.BaseComponent):
    """Converts the trained model to TFLite variants and measures their parity.

    Inputs: the Trainer's ``model`` (Format-Serving + the saved head), the raw
    ``examples`` (train split: int8 calibration; eval split: parity), and optionally
    the Evaluator's ``model_blessing`` (nothing is converted for an unblessed model)
    and BottleneckGen's ``bottlenecks`` (the parity reference from cached features).
    """

    SPEC_CLASS = TFLiteExportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel,
                 model_blessing: Optional[types.BaseChannel] = None,
                 bottlenecks: Optional[types.BaseChannel] = None,
                 variants: Sequence[str] = DEFAULT_VARIANTS,
                 parity_bounds: Optional[Mapping[str, float]] = None,
                 calibration_images: int = DEFAULT_CALIBRATION_IMAGES, num_threads: int = 2):
        variants = check_variants(variants)
        bounds = _bounds(parity_bounds)
        settings = TFLiteExportSettings(
            variants=tuple(variants), parity_bounds={v: bounds[v] for v in variants},
            calibration_images=int(calibration_images), num_threads=int(num_threads))
        super().__init__(spec=TFLiteExportSpec(
            model=model, examples=examples, model_blessing=model_blessing, bottlenecks=bottlenecks,
            **settings.to_exec_properties(), tflite_models=types.Channel(type=TFLiteModels)))


def _fingerprint(backbone: str, weights: str) -> Optional[str]:
    from components import backbones
    if weights == "random":
        return None
    try:
        return backbones.weights_fingerprint(backbone, weights)
    except backbones.BackboneWeightsError:
        return None
