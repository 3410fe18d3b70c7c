"""The reference probabilities each TFLite variant is compared with, on the eval split.

Two sources, the same probabilities up to float noise:

* ``features``: the Trainer's saved head (with N > 0 the top model,
  components/fine_tune.py) on BottleneckGen's cached eval features, joined to the
  raw eval Examples by content hash (``content_sha256``, as the Evaluator's
  features path and DataAudit read them).  No backbone pass, no SavedModel load.
  The serving model is decode + backbone + this head (components/trainer.py
  ServingModule; its equality with backbone + head on the same pixels is tested in
  tests/integration/test_trainer.py), and the Evaluator's features path runs the
  same head on the same records, so the reference accuracy is the Evaluator's.
* ``saved_model``: the SavedModel's ``serving_default`` over the raw eval Examples
  (the whole backbone again): the fallback.

The features are used only when every eval example joins: same (content hash,
label) multiset on both sides, only the plain view, the features' namespace
(backbone, weights fingerprint, preprocessing, cut layer, activation dtype) the
one the head was trained on, and vectors of the head's input width.  Anything
else falls back to the SavedModel with the reason: never a partial reference.
The pixels the variants see come from the raw eval Examples either way.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from components import contracts, model_info
from components.tflite import convert
from components.tflite.export import EvalBatch, PartSeconds

FEATURES = "features"
SAVED_MODEL = "saved_model"
EVAL_SPLIT = "eval"
READ_BATCH = 256
# parity.json's ``reference`` for the features path (the fallback keeps parity.REFERENCE).
FEATURES_REFERENCE = (f"the Trainer's head on BottleneckGen's cached eval features "
                      f"(= SavedModel serving_default ({contracts.SERVING_MODEL_DIR}) on the images)")

@dataclasses.dataclass(frozen=True)
class Choice:
    """Which reference parity uses and why; ``probabilities``: content hash -> [C]
    (features path only)."""
    source: str  # FEATURES or SAVED_MODEL
    reason: str
    probabilities: Optional[Dict[str, np.ndarray]] = None


def _fallback(reason: str) -> Choice:
    return Choice(SAVED_MODEL, reason)


def split_files(artifact, split: str) -> List[str]:
    from tfx.types import artifact_utils
    return convert.examples_files(artifact_utils.get_split_uri([artifact], split))


def _parse(files: List[str], spec: Dict) -> Iterator[Dict[str, np.ndarray]]:
    """Batches of parsed tf.Examples (gzipped TFRecords) as NumPy arrays."""
    import tensorflow as tf
    if not files:
        return
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(READ_BATCH):
        yield {k: v.numpy() for k, v in tf.io.parse_example(batch, spec).items()}


def _raw_keys(eval_files: List[str]) -> Optional[collections.Counter]:
    """(content hash, label) multiset of the raw eval Examples; None when one has no hash."""
    import tensorflow as tf
    spec = {contracts.CONTENT_SHA256_KEY: tf.io.FixedLenFeature([], tf.string, default_value=b""),
            contracts.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64)}
    keys: collections.Counter = collections.Counter()
    for parsed in _parse(eval_files, spec):
        shas = parsed[contracts.CONTENT_SHA256_KEY]
        if (shas == b"").any():
            return None
        keys.update(zip((s.decode() for s in shas), parsed[contracts.LABEL_KEY].tolist()))
    return keys


def choose(head, info: Dict, bottlenecks, eval_files: List[str]) -> Choice:
    """The features reference when every raw eval example joins its cached features
    (module docstring), else the SavedModel fallback with the reason.

    ``bottlenecks``: BottleneckGen's Examples artifact or None; ``info``: head.json.
    """
    import tensorflow as tf
    from tfx.types import artifact_utils
    if bottlenecks is None:
        return _fallback("no bottlenecks input")
    namespace = bottlenecks.get_string_custom_property("namespace") \
        if bottlenecks.has_custom_property("namespace") else ""
    if not namespace:
        return _fallback("the features have no namespace (random weights or an older BottleneckGen)")
    if model_info.text_field(info, "feature_namespace") != namespace:
        return _fallback("the model was trained on other features (backbone, weights, preprocessing, "
                         "cut or activation dtype differ)")
    if EVAL_SPLIT not in artifact_utils.decode_split_names(bottlenecks.split_names):
        return _fallback(f"the features have no {EVAL_SPLIT} split")
    raw = _raw_keys(eval_files)
    if raw is None:
        return _fallback(f"an eval example has no {contracts.CONTENT_SHA256_KEY}")
    dim = int(head.input_shape[-1])
    spec = {contracts.FEATURES_KEY: tf.io.FixedLenFeature([dim], tf.float32),
            contracts.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
            contracts.CONTENT_SHA256_KEY: tf.io.FixedLenFeature([], tf.string),
            "view": tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    probabilities: Dict[str, np.ndarray] = {}
    cached: collections.Counter = collections.Counter()
    try:
        for parsed in _parse(split_files(bottlenecks, EVAL_SPLIT), spec):
            if (parsed["view"] != 0).any():
                return _fallback("the eval features hold a view other than the plain image")
            shas = [s.decode() for s in parsed[contracts.CONTENT_SHA256_KEY]]
            cached.update(zip(shas, parsed[contracts.LABEL_KEY].tolist()))
            # As the serving signatures call it (components/trainer.py ServingModule._outputs).
            probs = head(tf.constant(parsed[contracts.FEATURES_KEY]), training=False).numpy()
            probabilities.update(zip(shas, probs.astype(np.float32)))
    except tf.errors.InvalidArgumentError:  # a vector of another width (or a malformed record)
        return _fallback(f"the eval features are not {dim}-float vectors (the head's input)")
    missing, extra = raw - cached, cached - raw
    if missing or extra:
        return _fallback(
            f"{sum(missing.values())} eval examples have no cached features and "
            f"{sum(extra.values())} cached eval features match no eval example"
            + (f" (e.g. {next(iter(missing))[0][:12]})" if missing else ""))
    return Choice(FEATURES, f"all {sum(raw.values())} eval examples joined their cached features "
                            "(same namespace, plain view)", probabilities)


def _timed(batches: Iterator[list], timer: PartSeconds) -> Iterator[list]:
    """`batches`, their reading counted as the ``read_eval`` part."""
    while True:
        with timer.part("read_eval"):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def _image_label_sha(record: bytes) -> Tuple[bytes, int, str]:
    import tensorflow as tf
    f = tf.train.Example.FromString(record).features.feature
    return (f[contracts.IMAGE_KEY].bytes_list.value[0], int(f[contracts.LABEL_KEY].int64_list.value[0]),
            f[contracts.CONTENT_SHA256_KEY].bytes_list.value[0].decode())


def feature_batches(eval_files: List[str], probabilities: Dict[str, np.ndarray], size: int,
                    timer: PartSeconds, batch_size: int = 32) -> Iterator[EvalBatch]:
    """(pixels, the head's probabilities on the cached features, labels) of the raw
    eval examples; ``probabilities`` from a FEATURES :func:`choose` (every hash in it)."""
    from components.image_decode import decode_batch
    for batch in _timed(convert.batches(convert.records(eval_files), batch_size), timer):
        with timer.part("read_eval"):
            images, labels, shas = zip(*(_image_label_sha(r) for r in batch))
        reference = np.stack([probabilities[s] for s in shas])
        with timer.part("decode"):
            pixels = decode_batch(images, size).numpy()
        yield pixels, reference, np.asarray(labels, np.int64)


def saved_model_batches(eval_files: List[str], serving_dir: str, size: int, timer: PartSeconds,
                        batch_size: int = 32) -> Iterator[EvalBatch]:
    """(pixels, SavedModel probabilities, labels) for the raw eval examples."""
    import tensorflow as tf
    from components.image_decode import decode_batch
    with timer.part("saved_model_load"):
        serve = tf.saved_model.load(serving_dir).signatures["serving_default"]
    for batch in _timed(convert.batches(convert.records(eval_files), batch_size), timer):
        with timer.part("read_eval"):
            images, labels = zip(*(convert.image_and_label(r) for r in batch))
        with timer.part("reference"):
            reference = serve(examples=tf.constant(batch))["probabilities"].numpy()
        with timer.part("decode"):
            pixels = decode_batch(images, size).numpy()
        yield pixels, reference, np.asarray(labels, np.int64)
