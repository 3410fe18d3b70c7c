"""create_pipeline(config): the one pipeline definition, for every runner."""

from __future__ import annotations

# Not `from tfx import v1`: that package also imports TFX's Google Cloud extensions
# (Vertex AI, BigQuery clients), which no step uses: ~1/5 of every run's and every
# pod's start-up (python -X importtime). tests/unit/test_local_runner.py checks.
from tfx.components import ExampleValidator, SchemaGen, StatisticsGen, Transform
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import trainer_pb2

from components import evaluation, ingest_checks, statistics_options
from components.bottleneck_gen import BottleneckGen
from components.data_audit import DataAudit
from components.evaluator import Evaluator
from components.image_example_gen import ImageExampleGen
from components.label_guard import LabelGuard
from components.tflite.component import TFLiteExport
from components.tflite_pusher import TFLitePusher
from components.trainer_component import Trainer
from kubeflow import change_gate
from pipeline import previous_runs, unchanged
from pipeline.config import PipelineConfig

PREPROCESSING_FN = "components.preprocessing.preprocessing_fn"
RUN_FN = "components.trainer.run_fn"


def create_components(config: PipelineConfig) -> list:
    if len(config.label_names) < 2:
        raise ValueError("config.label_names is not set: run pipeline.preflight.scan(config) first")

    example_gen = ImageExampleGen(
        images=config.images, label_names=config.label_names,
        eval_percent=config.eval_percent, max_pixels=config.max_pixels,
        extensions=config.extensions, exclude_label_conflicts=config.exclude_label_conflicts,
        max_file_bytes=config.max_file_bytes, min_image_side=config.min_image_side,
        follow_external_symlinks=config.follow_external_symlinks,
        checks_location=ingest_checks.location(config.pipeline_root, config.pipeline_name))
    # On open-source Kubeflow the rest runs only when ChangeCheck finds new
    # inputs (kubeflow/change_gate.py); elsewhere the gate adds nothing.
    with change_gate.gate(config, example_gen) as gate:
        rest = gate.add(_after_example_gen(config, example_gen))
    return [example_gen, *gate.nodes, *rest]


def _after_example_gen(config: PipelineConfig, example_gen: ImageExampleGen) -> list:
    # The image is bytes, not a categorical string: no top-k sketch of every image.
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"],
                                   stats_options=statistics_options.stats_options(len(config.label_names)))
    schema_gen = SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    # The latest blessed model (the Evaluator's baseline, LabelGuard's label
    # space) and the latest FeatureCache, from earlier runs: see previous_runs.
    baseline_nodes, baseline = previous_runs.previous_baseline(config)
    cache_nodes, previous_cache = previous_runs.previous_feature_cache(config)
    # Stops the run before Transform when the classes differ from the baseline's.
    label_guard = LabelGuard(
        statistics=statistics_gen.outputs["statistics"],
        baseline_model=baseline,
        allow_label_change=config.allow_label_change,
        max_class_share_change=config.max_class_share_change)
    # The backbone's features, computed only for images the last FeatureCache
    # doesn't hold (same content, backbone, weights and decoding).
    bottleneck_gen = BottleneckGen(
        examples=example_gen.outputs["examples"],
        previous_cache=previous_cache,
        backbone=config.backbone, weights=config.weights,
        batch_size=config.feature_batch_size, augment_views=config.augment_views,
        trainable_blocks=config.trainable_blocks, activation_dtype=config.activation_dtype)
    bottleneck_gen.add_upstream_node(label_guard)
    # Transform only builds the graph the serving model embeds (decode, resize,
    # backbone): with no analyzers it never reads the data, and BottleneckGen
    # has already materialised the features.
    transform = Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN, custom_config=config.transform_settings().to_config(),
        materialize=False, disable_statistics=True)
    transform.add_upstream_node(label_guard)
    # base_model: the served model, which a fine-tuning rerun (N > 0) continues when it
    # was trained with the same settings (components/continuation.py).
    trainer = Trainer(
        run_fn=RUN_FN,
        examples=bottleneck_gen.outputs["bottlenecks"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        base_model=baseline,
        train_args=trainer_pb2.TrainArgs(splits=["train"]),
        eval_args=trainer_pb2.EvalArgs(splits=["eval"]),
        custom_config=config.trainer_settings().to_config())
    # TFX's Evaluator that records its gate (gate.json), reads a registry lookup's
    # "nothing found" baseline as none, and evaluates on the cached features when
    # both models can (components/evaluator.py), else on the images.
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"], features=bottleneck_gen.outputs["bottlenecks"],
        model=trainer.outputs["model"],
        baseline_model=baseline,
        example_splits=["eval"],
        eval_config=evaluation.make_eval_config(
            config.label_names, config.min_accuracy, config.max_accuracy_drop,
            config.max_class_recall_drop))
    # TFLite variants of a blessed model, built from raw pixels (backbone + the
    # Trainer's head), int8-calibrated on train images, with their top-1 agreement
    # with the SavedModel on the eval split (the parity gate the Pusher applies);
    # the reference is the head on the cached eval features when every eval image
    # joins them (components/tflite/reference.py), else a SavedModel pass.
    tflite_export = TFLiteExport(
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
        model_blessing=evaluator.outputs["blessing"], bottlenecks=bottleneck_gen.outputs["bottlenecks"],
        variants=config.tflite_variants,
        parity_bounds=config.parity_bounds, calibration_images=config.calibration_images)
    pusher = TFLitePusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        evaluation=evaluator.outputs["evaluation"], serving_dir=config.serving_dir,
        label_names=config.label_names, min_accuracy=config.min_accuracy,
        max_accuracy_drop=config.max_accuracy_drop,
        tflite_models=tflite_export.outputs["tflite_models"],
        # Settings and code: with the training data, the Pusher refuses a candidate
        # identical to the served version (a --force rerun, a scheduled run).
        candidate_config=unchanged.settings_digest(config) + ":" + unchanged.code_digest())
    return [statistics_gen, schema_gen, example_validator, *baseline_nodes,
            label_guard, *cache_nodes, bottleneck_gen, transform, trainer, evaluator,
            tflite_export, pusher,
            DataAudit(bottlenecks=bottleneck_gen.outputs["bottlenecks"], examples=example_gen.outputs["examples"]),
            *previous_runs.recorders(config, model=trainer.outputs["model"],
                                     model_blessing=evaluator.outputs["blessing"],
                                     feature_cache=bottleneck_gen.outputs["feature_cache"],
                                     last_step=pusher)]


def create_pipeline(config: PipelineConfig,
                    metadata_connection_config=None) -> Pipeline:
    """The pipeline; runners add only their metadata store and orchestration."""
    return Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=create_components(config),
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=config.pipeline_beam_args())
