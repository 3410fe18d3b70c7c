"""BottleneckGen: backbone features per image, computed once and cached.

The expensive step of transfer learning is the backbone's forward pass. This
component runs it in fixed-size batches (``batch_size``; tf.Transform exposes
none) and keeps every result in a FeatureCache artifact keyed by

    sha256(image content) | view | backbone | weights fingerprint | preprocessing version
    | cache format [| cut layer | activation dtype]

so a rerun after adding images computes features only for the new ones, and a
change of backbone, weights or decoding code invalidates the cache by itself.
The previous cache arrives as a Resolver passes it (on open-source KFP a
registry lookup stands in: previous_artifacts.as_resolved makes it look the same).

With ``trainable_blocks`` N > 0 the vector is the flattened activation at the cut
below the top N blocks (components/fine_tune.py), cached as ``activation_dtype``.

Outputs:
  bottlenecks    Examples (Split-train, Split-eval): ``features`` [D] float,
                 ``label`` int64, ``content_sha256``, ``view`` (0 = the image;
                 1..K = augmented views, train split only).
  feature_cache  FeatureCache: every (key, features) this run used, old and new, in
                 ``features-*.tfrecord``: uncompressed TFRecords (components/feature_records.py).

The features are those of the Transform graph the serving model embeds: same
decode_and_resize, same backbone builder (components.preprocessing).
Augmented views (flip, crop, colour jitter, deterministic per image and view)
let a linear head see more variety without giving up the cache, unlike
retrain.py whose distortions disabled its bottleneck cache.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import (backbones, beam_metrics, contracts, feature_records, fine_tune, image_example_gen,
                        preprocessing, previous_artifacts, progress_counts, record_sink)
from components.augmentation import augment
from components.previous_artifacts import FeatureCache
from components.settings import ACTIVATION_DTYPES

CACHE_FILE_PREFIX = "features"
CACHE_FILE_SUFFIX = ".tfrecord"
# Bump when the cache record layout changes: older caches then miss, never misparse.
CACHE_FORMAT_VERSION = 2
PROGRESS_STAGE = "BottleneckGen"


class BottleneckGenSpec(ComponentSpec):
    PARAMETERS = {
        "backbone": ExecutionParameter(type=str),
        "weights": ExecutionParameter(type=str),
        "batch_size": ExecutionParameter(type=int),
        "augment_views": ExecutionParameter(type=int),
        "trainable_blocks": ExecutionParameter(type=int, optional=True),  # only for N > 0
        "activation_dtype": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "previous_cache": ChannelParameter(type=FeatureCache, optional=True),
    }
    OUTPUTS = {
        "bottlenecks": ChannelParameter(type=standard_artifacts.Examples),
        "feature_cache": ChannelParameter(type=FeatureCache),
    }


def cache_namespace(backbone: str, weights: str, trainable_blocks: int = 0,
                    activation_dtype: str = ACTIVATION_DTYPES[0]) -> str:
    """What a cached vector depends on besides the image (random weights: never cached)."""
    backbones.ensure_weights(backbone, weights)  # weights="keras": downloaded on first use
    fingerprint = backbones.weights_fingerprint(backbone, weights)
    if fingerprint == "random":
        return ""
    return (f"{backbone}|{fingerprint}|p{preprocessing.PREPROCESSING_VERSION}|c{CACHE_FORMAT_VERSION}"
            + fine_tune.namespace_suffix(backbone, trainable_blocks, activation_dtype))


def entry_key(namespace: str, sha: str, view: int) -> bytes:
    return hashlib.sha256(f"{namespace}|{sha}|{view}".encode()).hexdigest().encode()


def _seed(sha: str, view: int) -> Tuple[int, int]:
    return int(sha[:15], 16), view


def _features_fn(backbone: str, weights: str, augmenting: bool, trainable_blocks: int = 0):
    """(encoded images [N], seeds [N, 2]: (image, view)) -> features [N, D], as one graph.

    Decoding, augmentation (views > 0) and the backbone in a tf.function: called
    eagerly, the Keras model and tf.map_fn ran at about half the speed
    (benchmarks/speed.py measures both). Without ``augmenting`` the graph has no
    augmentation branch (its tracing and first call cost about 0.1 s).
    """
    model = preprocessing.shared_extractor(backbone, weights, trainable_blocks)
    size = backbones.get_spec(backbone).input_size

    def one_view(args):
        pixels, seed = args
        return tf.cond(seed[1] > 0, lambda: augment(pixels, seed), lambda: pixels)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, 2], tf.int64)],
                 autograph=False)
    def features(images, seeds):
        pixels = preprocessing.decode_and_resize(images, size)
        if not augmenting:
            return model(pixels, training=False)
        pixels = tf.cond(tf.reduce_any(seeds[:, 1] > 0),
                         lambda: tf.map_fn(one_view, (pixels, seeds), fn_output_signature=tf.float32),
                         lambda: pixels)
        return model(pixels, training=False)

    return features


class _ComputeFeatures(beam.DoFn):
    """A batch of (key, record) -> (key, record sans image, features); one backbone per worker.

    Features travel as float32 little-endian bytes, the cache's and the packed
    FloatList's layout: no per-value conversion, and Beam's bytes coder moves them.
    """

    def __init__(self, backbone: str, weights: str, augmenting: bool, trainable_blocks: int, dtype: str):
        self._backbone, self._weights, self._augmenting = backbone, weights, augmenting
        self._blocks, self._dtype = trainable_blocks, dtype
        self._computed = beam.metrics.Metrics.counter("bottleneck_gen", "computed")

    def setup(self):
        self._features = None  # built on the first miss: a rerun without new images needs no backbone
        self._progress = progress_counts.Counter(PROGRESS_STAGE)

    def finish_bundle(self):
        self._progress.close()

    def process(self, batch: List[Tuple[bytes, Dict]]):
        if self._features is None:
            self._features = _features_fn(self._backbone, self._weights, self._augmenting, self._blocks)
        features = self._features(
            tf.constant([r["image"] for _, r in batch]),
            tf.constant([_seed(r["sha"], r["view"]) for _, r in batch], tf.int64)).numpy()
        features = features.astype(self._dtype, copy=False)
        self._computed.inc(len(batch))
        self._progress.add(len(batch))
        for (key, record), vec in zip(batch, features):
            yield key, _meta(record), vec.tobytes()


def _wanted(serialized: bytes, split: str, views: int, namespace: str) -> Iterable[Tuple[bytes, Dict]]:
    """An ImageExampleGen record -> (cache key, record) for the image and each augmented view."""
    f = tf.train.Example.FromString(serialized).features.feature
    record = {"image": f[contracts.IMAGE_KEY].bytes_list.value[0],
              "label": f[contracts.LABEL_KEY].int64_list.value[0],
              "sha": f[contracts.CONTENT_SHA256_KEY].bytes_list.value[0].decode(), "split": split}
    for view in range(views + 1):
        yield entry_key(namespace, record["sha"], view), dict(record, view=view)


class _Route(beam.DoFn):
    """(key, record) -> main: (key, record sans image) when cached, 'miss': (key, record).

    Only the cache's keys travel as a side input; image bytes never go through
    a shuffle (a CoGroupByKey over full records would move every photo).
    """

    def setup(self):
        self._progress = progress_counts.Counter(PROGRESS_STAGE)  # cache hits count as done

    def finish_bundle(self):
        self._progress.close()

    def process(self, item, cached_keys):
        key, record = item
        if key in cached_keys:
            self._progress.add()
            yield key, _meta(record)
        else:
            yield beam.pvalue.TaggedOutput("miss", item)


def _meta(record: Dict) -> Dict:
    return {k: v for k, v in record.items() if k != "image"}


def _join(item, hits_counter):
    """(key, {'want': [meta...], 'cached': [vec...]}) -> (key, meta, vec)."""
    key, groups = item
    cached = list(groups["cached"])
    for meta in groups["want"]:  # routed here only because its key is cached
        hits_counter.inc()
        yield key, meta, cached[0]


_CACHE_OUTPUT = "cache"
_TEMP_DIR = ".writing"


# Bottlenecks: gzip, as TFX Examples are, at level 1 (half the time of the default
# level here, 3 % larger). The cache: uncompressed, as it is read whole every run.
_SPLIT_COMPRESSION: record_sink.Compression = ("GZIP", 1)


def _records(dtype: str, cache: bool, row) -> Iterator[Tuple[str, bytes]]:
    """A (key, record, features) row -> its bottleneck Example (in its split's output)
    and, when caching, its cache record."""
    key, record, vec = row
    yield record["split"], feature_records.bottleneck_example(record, feature_records.as_float32(vec, dtype))
    if cache:
        yield _CACHE_OUTPUT, feature_records.cache_record(key, vec)


def _report_total(examples, splits: List[str], augment_views: int) -> None:
    """Vectors this run will produce, for the progress bar: from ImageExampleGen's counts."""
    try:
        total = sum(image_example_gen.split_count(examples.uri, split)
                    * (1 + (augment_views if split == "train" else 0)) for split in splits)
    except (OSError, ValueError, tf.errors.OpError):  # other Examples producers: no total
        return
    progress_counts.set_total(PROGRESS_STAGE, total, "images embedded")


@previous_artifacts.as_resolved("previous_cache")
class Executor(base_beam_executor.BaseBeamExecutor):

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        out = artifact_utils.get_single_instance(output_dict["bottlenecks"])
        cache_out = artifact_utils.get_single_instance(output_dict["feature_cache"])
        backbone, weights = exec_properties["backbone"], exec_properties["weights"]
        batch_size = int(exec_properties["batch_size"])
        augment_views = int(exec_properties["augment_views"])
        blocks, activation_dtype = fine_tune.from_exec_properties(backbone, exec_properties)
        dtype = feature_records.cache_dtype(activation_dtype, blocks)
        namespace = cache_namespace(backbone, weights, blocks, activation_dtype)
        previous = (input_dict.get("previous_cache") or [None])[0]
        reuse = bool(namespace) and previous is not None and \
            previous.get_string_custom_property("namespace") == namespace
        splits = artifact_utils.decode_split_names(examples.split_names)
        out.split_names = artifact_utils.encode_split_names(splits)

        hits = beam.metrics.Metrics.counter("bottleneck_gen", "cache_hits")
        _report_total(examples, splits, augment_views)
        p = self._make_beam_pipeline()
        if reuse:
            cached = (p | "ReadCache" >> beam.io.ReadFromTFRecord(
                os.path.join(previous.uri, CACHE_FILE_PREFIX + "*" + CACHE_FILE_SUFFIX),
                compression_type=CompressionTypes.UNCOMPRESSED)
                | "ParseCache" >> beam.Map(feature_records.parse_cache_record, dtype))
        else:
            cached = p | "NoCache" >> beam.Create([])
        cached_keys = beam.pvalue.AsDict(cached | "CachedKeys" >> beam.Map(lambda kv: (kv[0], None)))
        wanted = []
        for split in splits:
            views = augment_views if split == "train" else 0
            wanted.append(
                p | f"Read[{split}]" >> beam.io.ReadFromTFRecord(
                    os.path.join(examples.uri, f"Split-{split}", "*"), compression_type="gzip")
                | f"Keyed[{split}]" >> beam.FlatMap(_wanted, split, views, namespace))
        routed = (wanted | "AllWanted" >> beam.Flatten()
                  | "Route" >> beam.ParDo(_Route(), cached_keys).with_outputs("miss", main="hit"))
        found = ({"want": routed.hit, "cached": cached}
                 | "Join" >> beam.CoGroupByKey()
                 | "Match" >> beam.FlatMap(_join, hits))
        computed = (routed.miss
                    | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
                    | "Features" >> beam.ParDo(
                        _ComputeFeatures(backbone, weights, augment_views > 0, blocks, dtype)))
        outputs = {split: record_sink.Output(os.path.join(out.uri, f"Split-{split}", "bottlenecks"), ".gz",
                                             _SPLIT_COMPRESSION) for split in splits}
        if namespace:  # random weights are never cached
            outputs[_CACHE_OUTPUT] = record_sink.Output(os.path.join(cache_out.uri, CACHE_FILE_PREFIX),
                                                        CACHE_FILE_SUFFIX, record_sink.UNCOMPRESSED)
        sink = record_sink.Sink(os.path.join(cache_out.uri, _TEMP_DIR), outputs)
        sink.clear()
        # Each branch writes where it is produced: a Flatten of the two would make
        # the runner buffer every row (and pickle its features) for one more stage.
        write = sink.writer(functools.partial(_records, dtype, bool(namespace)))
        sink.commit_after((found | "WriteCached" >> beam.ParDo(write),
                           computed | "WriteComputed" >> beam.ParDo(write)))
        result = p.run()
        result.wait_until_finish()
        sink.finish()

        counters = beam_metrics.counters(result, "bottleneck_gen")
        out.set_int_custom_property("cache_hits", int(counters.get("cache_hits", 0)))
        out.set_int_custom_property("computed", int(counters.get("computed", 0)))
        out.set_int_custom_property("reused_cache", int(reuse))
        out.set_string_custom_property("namespace", namespace)  # what the Evaluator's features path checks
        if blocks:  # DataAudit audits the cut activations' channel means
            out.set_int_custom_property("cut_channels", fine_tune.cut_channels(backbone, blocks))
        cache_out.set_string_custom_property("namespace", namespace)


class BottleneckGen(base_beam_component.BaseBeamComponent):
    """Backbone features for every image, reusing a previous FeatureCache."""

    SPEC_CLASS = BottleneckGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples: types.BaseChannel, previous_cache: Optional[types.BaseChannel],
                 backbone: str, weights: str, batch_size: int, augment_views: int,
                 trainable_blocks: int = 0, activation_dtype: str = ACTIVATION_DTYPES[0]):
        fine_tuning = {}
        if trainable_blocks:  # checked at definition: a bad N fails before any step runs
            fine_tune.check(backbone, int(trainable_blocks), activation_dtype)
            fine_tuning = dict(trainable_blocks=int(trainable_blocks), activation_dtype=activation_dtype)
        super().__init__(spec=BottleneckGenSpec(
            examples=examples, previous_cache=previous_cache, backbone=backbone,
            weights=weights, batch_size=int(batch_size), augment_views=int(augment_views), **fine_tuning,
            bottlenecks=types.Channel(type=standard_artifacts.Examples),
            feature_cache=types.Channel(type=FeatureCache)))
