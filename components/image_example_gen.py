"""Image ExampleGen: ``<images>/<label>/<file>`` folders to tf.Example TFRecords.

A FileBasedExampleGen with its own executor. Per image it writes:

  image          bytes   canonical encoded image (see image_io: JPEG/PNG)
  label          int64   index into the label vocabulary (sorted folder names)
  label_name     bytes   folder name
  relative_path  bytes   path under the images root
  height, width  int64   pixel size
  content_sha256 bytes   sha256 of the *original* file bytes

The train/eval split partitions on ``content_sha256`` (TFX's own hash split
with ``partition_feature_name``), so a split is a pure function of content and
identical files can never sit on both sides. Identical files under one label
are kept once; under different labels they are a conflict and left out.

Next to the splits, in the Examples artifact's folder, the executor writes
``labels.txt`` (the vocabulary, one per line, index = line number) and
``ingestion_report.jsonl`` (every file: used or skipped, with a reason) and
``image_checks.jsonl.gz`` (what the next run need not decode again:
components/ingest_checks.py), and records ``label_names``, ``skipped_files``,
per-split counts and ``images_decoded`` / ``images_reused_checks`` as custom
properties, so every later step and the TFLite labels agree.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import driver, utils, write_split
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import proto_utils

from components import beam_metrics, contracts, image_io, ingest_checks, ingest_passes, progress_counts, record_sink
from components.ingest_passes import CHECKS_TAG, DECODED, METRICS_NAMESPACE, PROGRESS_STAGE, REPORT_TAG, REUSED
from components.contracts import INGESTION_REPORT_FILE, LABELS_FILE, SPLIT_COUNT_PREFIX
from components.settings import IngestSettings

INGEST_CONFIG_KEY = "ingest_config"
CHECKS_LOCATION_KEY = "checks_location"  # where runs record their checks (ingest_checks.location; "": none kept)
_URI_KEY = "_examples_uri"
_TEMP_DIR = ".writing"  # in the Examples folder, beside the splits, until committed


class ImageExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        INGEST_CONFIG_KEY: ExecutionParameter(type=str),  # IngestSettings.to_json()
        CHECKS_LOCATION_KEY: ExecutionParameter(type=str, optional=True),  # components/ingest_checks.py
    }


def split_config(eval_percent: int) -> example_gen_pb2.Output:
    if not 0 < eval_percent < 100:
        raise ValueError(f"eval_percent must be between 1 and 99, got {eval_percent}")
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[
            example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=100 - eval_percent),
            example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=eval_percent),
        ],
        partition_feature_name=contracts.CONTENT_SHA256_KEY))


def _example(record: Dict[str, Any]) -> tf.train.Example:
    def b(v): return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
    def i(v): return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
    return tf.train.Example(features=tf.train.Features(feature={
        contracts.IMAGE_KEY: b(record["image"]),
        contracts.LABEL_KEY: i(record["label"]),
        contracts.LABEL_NAME_KEY: b(record["label_name"].encode()),
        contracts.RELATIVE_PATH_KEY: b(record["relpath"].encode()),
        contracts.HEIGHT_KEY: i(record["height"]),
        contracts.WIDTH_KEY: i(record["width"]),
        contracts.CONTENT_SHA256_KEY: b(record["sha256"].encode()),
        contracts.PIXEL_SIGNATURE_KEY: b(record["signature"]),
    }))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ImagesToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                     split_pattern: str) -> beam.pvalue.PCollection:
    """Two streaming passes over the files, so that no image's bytes are ever held
    for a shuffle (Beam's in-memory runner holds a shuffled collection whole: with
    the bytes in it, ingestion needed about 5 x the dataset's size in memory).
    Pass 1 hashes every file and groups the hashes (duplicates, label conflicts);
    pass 2 reads each kept file again, checks it and emits its Example, written
    without a shuffle (Executor.Do)."""
    del split_pattern  # we walk the tree ourselves: gfile.glob has no '**'
    settings = IngestSettings.from_json(exec_properties[INGEST_CONFIG_KEY])
    label_index = {name: i for i, name in enumerate(settings.label_names)}

    candidates, listing_skips = [], []
    for item in image_io.find_images(settings.source, settings.extensions,
                                     settings.follow_external_symlinks):
        if isinstance(item, image_io.Skipped):
            listing_skips.append(ingest_passes.row(item.relpath, item.label, item.reason))
        elif item.label not in label_index:
            listing_skips.append(ingest_passes.row(item.relpath, item.label,
                                      f"class '{item.label}' is not in the pipeline's label vocabulary"))
        else:
            candidates.append(item)

    progress_counts.set_total(PROGRESS_STAGE, len(candidates), "images read")
    hashed = (pipeline
              | "ListImages" >> beam.Create(candidates)
              | "Spread" >> beam.Reshuffle()
              | "Hash" >> beam.ParDo(ingest_passes.HashFn(settings)).with_outputs(REPORT_TAG, main="ok"))
    resolved = (hashed.ok
                | "GroupByContent" >> beam.GroupByKey()
                | "ResolveDuplicates" >> beam.ParDo(ingest_passes.ResolveFn(settings.exclude_label_conflicts))
                .with_outputs(REPORT_TAG, main="kept"))
    where = exec_properties.get(CHECKS_LOCATION_KEY) or ""
    checks = (where, checks_key(settings)) if where else None
    decoded = (resolved.kept
               | "Batch" >> beam.BatchElements(min_batch_size=ingest_passes.DECODE_BATCH, max_batch_size=ingest_passes.DECODE_BATCH)
               | "Decode" >> beam.ParDo(ingest_passes.DecodeFn(label_index, settings, checks=checks))
               .with_outputs(REPORT_TAG, CHECKS_TAG, main="ok"))

    report_uri = exec_properties[_URI_KEY]
    (decoded[CHECKS_TAG]
     | "WriteChecks" >> beam.io.WriteToText(
         os.path.join(report_uri, contracts.INGEST_CHECKS_FILE), shard_name_template="", num_shards=1,
         compression_type=beam.io.filesystem.CompressionTypes.GZIP))
    ((hashed.report, resolved.report, decoded.report, pipeline | "ListingSkips" >> beam.Create(listing_skips))
     | "MergeReport" >> beam.Flatten()
     | "WriteReport" >> beam.io.WriteToText(
         os.path.join(report_uri, INGESTION_REPORT_FILE), shard_name_template="", num_shards=1))
    return decoded.ok | "ToExample" >> beam.Map(_example)


def checks_key(settings: IngestSettings) -> str:
    """The key of the checks this ingestion writes and may reuse (ingest_checks.key)."""
    return ingest_checks.key(settings.max_pixels, settings.min_image_side)


def _serialized(split: str, example: tf.train.Example) -> List[Tuple[str, bytes]]:
    return [(split, example.SerializeToString())]


class Executor(BaseExampleGenExecutor):
    """Writes the splits, then the vocabulary, report and counts beside them."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ImagesToExample

    def GenerateExamplesByBeam(self, pipeline, exec_properties):
        splits = super().GenerateExamplesByBeam(pipeline, exec_properties)
        for name, pcoll in splits.items():
            (pcoll
             | f"Count[{name}]" >> beam.combiners.Count.Globally()
             | f"CountToStr[{name}]" >> beam.Map(str)
             | f"WriteCount[{name}]" >> beam.io.WriteToText(
                 os.path.join(exec_properties[_URI_KEY], f"{SPLIT_COUNT_PREFIX}_{name}.txt"),
                 shard_name_template="", num_shards=1))
        return splits

    def _write_examples(self, examples: types.Artifact, exec_properties: Dict[str, Any]) -> None:
        """TFX's BaseExampleGenExecutor.Do (tfx/components/example_gen/base_example_gen_executor.py)
        without the shuffle its WriteSplit puts before each split's writer (write_split.py,
        "TODO make shuffle optional"), which held every image's bytes on Beam's in-memory
        runner. Same files (``Split-<name>/data_tfrecord-*.gz``), split names and properties,
        in content-hash order; gzip at level 0 (record_sink): image bytes do not compress."""
        input_config, output_config = example_gen_pb2.Input(), example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        split_names = utils.generate_output_split_names(input_config, output_config)
        examples.split_names = artifact_utils.encode_split_names(split_names)
        sink = record_sink.Sink(os.path.join(examples.uri, _TEMP_DIR), {
            name: record_sink.Output(os.path.join(artifact_utils.get_split_uri([examples], name),
                                                  write_split.DEFAULT_FILE_NAME), ".gz", record_sink.GZIP_STORED)
            for name in split_names})
        sink.clear()
        pipeline = self._make_beam_pipeline()
        sink.commit_after([split | f"Write[{name}]" >> beam.ParDo(sink.writer(functools.partial(_serialized, name)))
                           for name, split in self.GenerateExamplesByBeam(pipeline, exec_properties).items()])
        result = pipeline.run()
        result.wait_until_finish()
        sink.finish()
        totals = beam_metrics.counters(result, METRICS_NAMESPACE)
        counts = {name: totals.get(name, 0) for name in (DECODED, REUSED)}
        for name, n in counts.items():  # images decoded and checked, images whose checks were reused
            examples.set_int_custom_property(f"images_{name}", n)
        where = exec_properties.get(CHECKS_LOCATION_KEY) or ""
        if where:
            ingest_checks.record(where, examples.uri, checks_key(IngestSettings.from_json(
                exec_properties[INGEST_CONFIG_KEY])), counts[DECODED])
        examples_utils.set_payload_format(examples, exec_properties[standard_component_specs.OUTPUT_DATA_FORMAT_KEY])
        examples_utils.set_file_format(examples, write_split.to_file_format_str(
            exec_properties[standard_component_specs.OUTPUT_FILE_FORMAT_KEY]))

    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        exec_properties = dict(exec_properties)
        exec_properties[_URI_KEY] = examples.uri
        self._log_startup(input_dict, output_dict, exec_properties)
        self._write_examples(examples, exec_properties)

        label_names = list(IngestSettings.from_json(exec_properties[INGEST_CONFIG_KEY]).label_names)
        with tf.io.gfile.GFile(os.path.join(examples.uri, LABELS_FILE), "w") as f:
            f.write("".join(f"{name}\n" for name in label_names))
        examples.set_string_custom_property("label_names", json.dumps(label_names))
        report = read_report(examples.uri)
        examples.set_int_custom_property(
            "skipped_files", sum(1 for r in report if r["status"] == "skipped"))
        for split in artifact_utils.decode_split_names(examples.split_names):
            examples.set_int_custom_property(f"{SPLIT_COUNT_PREFIX}_{split}",
                                             split_count(examples.uri, split))


def read_report(examples_uri: str) -> List[Dict[str, Any]]:
    with tf.io.gfile.GFile(os.path.join(examples_uri, INGESTION_REPORT_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def split_count(examples_uri: str, split: str) -> int:
    with tf.io.gfile.GFile(os.path.join(examples_uri, f"{SPLIT_COUNT_PREFIX}_{split}.txt")) as f:
        text = f.read().strip()
    return int(text or 0)


def read_labels(examples_uri: str) -> List[str]:
    with tf.io.gfile.GFile(os.path.join(examples_uri, LABELS_FILE)) as f:
        return contracts.read_labels(f.read())


class ImageExampleGen(FileBasedExampleGen):
    """ExampleGen for ``<images>/<label>/<file>`` trees or a ``uri,label`` CSV manifest.

    `images` is the folder, or the manifest's path (ending in .csv).
    """

    SPEC_CLASS = ImageExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    DRIVER_CLASS = driver.FileBasedDriver

    def __init__(self, images: str, label_names: Sequence[str], eval_percent: int,
                 exclude_label_conflicts: bool,
                 max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
                 extensions: Iterable[str] = image_io.DEFAULT_EXTENSIONS,
                 max_file_bytes: int = image_io.DEFAULT_MAX_FILE_BYTES,
                 min_image_side: int = image_io.DEFAULT_MIN_IMAGE_SIDE,
                 follow_external_symlinks: bool = False, checks_location: str = ""):
        """``checks_location``: where runs record their ingestion checks, so that the next
        one need not decode again what they accepted (components/ingest_checks.py);
        empty: every image is decoded."""
        if len(label_names) < 2:
            raise ValueError(f"need at least 2 classes, got {list(label_names)}")
        ingest = IngestSettings(
            source=images, label_names=tuple(label_names), max_pixels=int(max_pixels),
            extensions=tuple(e.lower() for e in extensions),
            exclude_label_conflicts=bool(exclude_label_conflicts),
            max_file_bytes=int(max_file_bytes), min_image_side=int(min_image_side),
            follow_external_symlinks=bool(follow_external_symlinks))
        # input_base + pattern only feed the driver's input fingerprint (used by
        # the cache); the executor walks the tree or reads the manifest itself.
        if images.lower().endswith(".csv"):
            input_base, pattern = os.path.dirname(images), os.path.basename(images)
        else:
            input_base, pattern = images, "*/*"
        input_config = example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="images", pattern=pattern)])
        spec = ImageExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=split_config(eval_percent),
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            ingest_config=ingest.to_json(),
            checks_location=checks_location or None,
            examples=types.Channel(type=standard_artifacts.Examples))
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)
