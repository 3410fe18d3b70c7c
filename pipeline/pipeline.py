"""create_pipeline(config): the one pipeline definition, for every runner."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tfx import v1 as tfx  # noqa: E402

from components import evaluation  # noqa: E402
from components.image_example_gen import ImageExampleGen  # noqa: E402
from components.label_guard import LabelGuard  # noqa: E402
from components.tflite_pusher import TFLitePusher  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

PREPROCESSING_FN = "components.preprocessing.preprocessing_fn"
RUN_FN = "components.trainer.run_fn"


def create_components(config: PipelineConfig) -> list:
    if len(config.label_names) < 2:
        raise ValueError("config.label_names is not set: run pipeline.preflight.scan(config) first")

    example_gen = ImageExampleGen(
        images=config.images, label_names=config.label_names,
        eval_percent=config.eval_percent, max_pixels=config.max_pixels,
        extensions=config.extensions, exclude_label_conflicts=config.exclude_label_conflicts)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    baseline_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    # Stops the run before Transform when the classes differ from the baseline's.
    label_guard = LabelGuard(
        statistics=statistics_gen.outputs["statistics"],
        baseline_model=baseline_resolver.outputs["model"],
        allow_label_change=config.allow_label_change,
        max_class_share_change=config.max_class_share_change)
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN, custom_config=config.transform_config())
    transform.add_upstream_node(label_guard)
    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=config.trainer_config())
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline_resolver.outputs["model"],
        example_splits=["eval"],
        eval_config=evaluation.make_eval_config(
            config.label_names, config.min_accuracy, config.max_accuracy_drop))
    pusher = TFLitePusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"], serving_dir=config.serving_dir,
        label_names=config.label_names, min_accuracy=config.min_accuracy,
        max_accuracy_drop=config.max_accuracy_drop)
    return [example_gen, statistics_gen, schema_gen, example_validator, baseline_resolver,
            label_guard, transform, trainer, evaluator, pusher]


def create_pipeline(config: PipelineConfig,
                    metadata_connection_config=None) -> tfx.dsl.Pipeline:
    """The pipeline; runners add only their metadata store and orchestration."""
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=create_components(config),
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_args))
