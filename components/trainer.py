"""Trainer module: a new softmax head on precomputed backbone features.

Referenced by the pipeline as ``components.trainer.run_fn``. The backbone never
runs here during training: the inputs are Transform's feature vectors. This module
reads the data and writes the model; the fit itself is components/head_training.py. The
head is saved on its own too: the TFLiteExport component
(components/tflite/) puts it on top of the backbone to map pixels to
probabilities on a phone.

Exports, under the Model artifact:
  Format-Serving/   SavedModel; ``serving_default`` takes serialized
                    tf.Examples with raw image bytes (feature ``image``) and
                    returns ``probabilities`` [N, C], ``classes`` [N, C] (the
                    label names, in probability order) and ``predicted_class``.
                    ``serving_features`` (FEATURES_SIGNATURE): the same outputs
                    from BottleneckGen's serialized tf.Examples (``features``
                    [D]), the head alone: the Evaluator's path on cached
                    features (components/evaluator.py).
  head/head.h5      the trained head alone (Keras, features [N, D] -> [N, C]); with
                    trainable_blocks N > 0 the top model (components/fine_tune.py):
                    the flattened cut activation -> the top N blocks -> the head.
  head/head.json    what it was trained on: backbone, weights (and their
                    fingerprint), feature_dim, label_names (line i = output i),
                    feature_namespace (BottleneckGen's: backbone, weights
                    fingerprint, preprocessing; None for random weights);
                    trainable_blocks, activation_dtype, fine_tune (what was kept) and
                    start (from the served model or ImageNet weights, and why) when N > 0.
  head/train_rows.sha256  N > 0: the sorted digests of the train rows, what a rerun
                    continuing this model counts as new (components/continuation.py).
  training/history.json and TensorBoard logs (in the model-run artifact).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform.saved import saved_transform_io_v2
import tf_keras
from absl import logging

from components import backbones, continuation, fine_tune, model_info
# The fitting (head_training.py), re-exported: what the tests and benchmarks call.
from components.head_training import (FineTuneChoice, STEPS_PER_EXECUTION, build_head,  # noqa: F401
                                      train, train_head)
from components.contracts import (FEATURES_KEY, FEATURES_SIGNATURE, HEAD_DIR, HEAD_FILE,
                                  HEAD_INFO_FILE, LABEL_KEY, LABEL_SPACE_FILE,
                                  NON_INPUT_KEYS, SERVING_SIGNATURE, TRAINING_DIR,
                                  TRAINING_HISTORY_FILE)
from components.settings import ACTIVATION_DTYPES, TrainerSettings


def head_dir(model_uri: str) -> str:
    """Where the head lives in the Model artifact (beside Format-Serving)."""
    return os.path.join(model_uri.rstrip("/"), HEAD_DIR)


def load_features(file_patterns: List[str], tf_transform_output: tft.TFTransformOutput
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Reads a transformed split into memory: (features [N, D] float32, labels [N])."""
    spec = tf_transform_output.transformed_feature_spec()
    files = sorted(f for p in file_patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise ValueError(f"no transformed examples match {file_patterns}")
    feats, labels = [], []
    # Parsed eagerly: a Dataset.map would trace (and AutoGraph convert) the parser, ~0.8 s.
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024):
        batch = tf.io.parse_example(records, spec)
        feats.append(batch[FEATURES_KEY].numpy())
        labels.append(np.reshape(batch[LABEL_KEY].numpy(), [-1]))
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int64)


def load_split(file_patterns: List[str], tf_transform_output: tft.TFTransformOutput
               ) -> Tuple[np.ndarray, np.ndarray, List[bytes]]:
    """load_features in the rows' digest order, not Beam's, with the digests: the
    same rows give the same model (continuation.in_digest_order)."""
    return continuation.in_digest_order(*load_features(file_patterns, tf_transform_output))


def training_data_fingerprint(splits: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> str:
    """sha256 of what the head is trained and validated on: per split, every
    (label, feature vector) row, in any order (Beam's output order varies)."""
    return rows_fingerprint({split: continuation.row_digests(x, y) for split, (x, y) in splits.items()})


def rows_fingerprint(rows: Dict[str, List[bytes]]) -> str:
    """:func:`training_data_fingerprint` from each split's sorted row digests."""
    digest = hashlib.sha256()
    for split in sorted(rows):
        digest.update(f"{split}:{len(rows[split])}\n".encode() + b"".join(rows[split]))
    return digest.hexdigest()


class ServingModule(tf.Module):
    """serving_default: serialized tf.Examples with raw image bytes -> probabilities."""

    def __init__(self, tf_transform_output: tft.TFTransformOutput, head: tf_keras.Model,
                 label_names: List[str]):
        super().__init__()
        # The transform graph's loader, not tft's TransformFeaturesLayer: that layer
        # is a Keras Model, and saving a module that tracks it serialises it the
        # Keras way, tracing the backbone again with AutoGraph (3.5 of the 5 s the
        # save took at 2,000 images). The loader's attributes are tracked as the
        # layer itself tracks them, so its variables and assets are saved.
        loader = saved_transform_io_v2.SavedModelLoader(tf_transform_output.transform_savedmodel_dir)
        self.transform_state = loader.__dict__
        self._transform = loader.apply_transform_model  # bound method: untracked
        # The head's variables, not the Keras model: tracking the model made the
        # save serialise its layers and trace it again with AutoGraph (~3 s).
        self.head_variables = list(head.weights)
        self._head = lambda features: head(features, training=False)  # plain callable: untracked
        self._label_names = tf.constant(label_names)
        self._raw_spec = {k: v for k, v in tf_transform_output.raw_feature_spec().items()
                          if k not in NON_INPUT_KEYS}

        self._features_spec = {FEATURES_KEY: tf.io.FixedLenFeature([int(head.input_shape[-1])],
                                                                   tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
                 autograph=False)
    def serve(self, examples):
        raw = tf.io.parse_example(examples, self._raw_spec)
        return self._outputs(self._transform(raw)[FEATURES_KEY])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")],
                 autograph=False)
    def serve_features(self, examples):
        """BottleneckGen's tf.Examples (the backbone already applied) -> the same outputs."""
        return self._outputs(tf.io.parse_example(examples, self._features_spec)[FEATURES_KEY])

    def _outputs(self, features):
        probabilities = self._head(features)
        batch = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "classes": tf.tile(self._label_names[tf.newaxis, :], [batch, 1]),
            "predicted_class": tf.gather(self._label_names, tf.argmax(probabilities, axis=1)),
        }


def export_serving(path: str, tf_transform_output, head, label_names: List[str]) -> None:
    module = ServingModule(tf_transform_output, head, label_names)
    tf.saved_model.save(module, path, signatures={SERVING_SIGNATURE: module.serve,
                                                  FEATURES_SIGNATURE: module.serve_features})


def build_pixel_model(backbone: str, weights: str, head: tf_keras.Model,
                      trainable_blocks: int = 0) -> tf_keras.Model:
    """float32 [1, H, W, 3] RGB 0..255 -> probabilities: backbone + trained head (with
    N > 0: the frozen part below the cut + the trained top model)."""
    spec = backbones.get_spec(backbone)
    pixels = tf_keras.Input([spec.input_size, spec.input_size, 3], batch_size=1,
                            dtype=tf.float32, name="image")
    extractor = (fine_tune.lower_extractor(backbone, weights, trainable_blocks) if trainable_blocks
                 else backbones.build_feature_extractor(backbone, weights))
    return tf_keras.Model(pixels, head(extractor(pixels)), name=f"{backbone}_classifier")


def trainable_blocks_of(info: Dict) -> int:
    """N of a head.json (a model from before fine-tuning existed: 0)."""
    blocks = info.get("trainable_blocks", 0)
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 0:
        raise ValueError(f"head.json: trainable_blocks must be an integer >= 0, got {blocks!r}")
    return blocks


def feature_namespace(backbone: str, weights: str, trainable_blocks: int = 0,
                      activation_dtype: str = ACTIVATION_DTYPES[0]):
    """BottleneckGen's cache namespace for (backbone, weights): the Evaluator feeds this
    model's FEATURES_SIGNATURE only features of the same namespace. None when the
    weights are random or unavailable (the Evaluator then uses the images)."""
    from components import bottleneck_gen  # Beam: only in the Trainer's process
    try:
        return bottleneck_gen.cache_namespace(backbone, weights, trainable_blocks, activation_dtype) or None
    except backbones.BackboneWeightsError:
        return None


def save_head(model_uri: str, head: tf_keras.Model, backbone: str, weights: str,
              label_names: List[str], training: Optional[Dict[str, str]] = None,
              trainable_blocks: int = 0, activation_dtype: str = ACTIVATION_DTYPES[0],
              fine_tune_choice: Optional[FineTuneChoice] = None,
              start: Optional[continuation.Plan] = None) -> str:
    """Writes head/head.h5 and head/head.json into the Model artifact; returns the dir.
    `training`: {"data": training_data_fingerprint, "settings": TrainerSettings JSON},
    what the Pusher compares with the served version's (components/tflite_pusher.py)."""
    out = head_dir(model_uri)
    tf.io.gfile.makedirs(out)
    with tempfile.TemporaryDirectory(prefix="head-") as tmp:  # h5py writes local files only
        local = os.path.join(tmp, HEAD_FILE)
        head.save(local, save_format="h5", include_optimizer=False)
        tf.io.gfile.copy(local, os.path.join(out, HEAD_FILE), overwrite=True)
    try:
        fingerprint = None if weights == "random" else backbones.weights_fingerprint(backbone, weights)
    except backbones.BackboneWeightsError:
        fingerprint = None
    info = {"backbone": backbone, "weights": weights, "weights_fingerprint": fingerprint,
            "feature_dim": int(head.input_shape[-1]), "label_names": list(label_names),
            "feature_namespace": feature_namespace(backbone, weights, trainable_blocks, activation_dtype)
            if fingerprint else None,
            "training": dict(training) if training else None}
    if trainable_blocks:  # head-only models' head.json stays as it was
        info.update(trainable_blocks=trainable_blocks, activation_dtype=activation_dtype)
        if fine_tune_choice is not None:
            info["fine_tune"] = fine_tune_choice.to_json()
        if start is not None:  # from the served model or ImageNet weights, and why
            info["start"] = start.to_json()
    with tf.io.gfile.GFile(os.path.join(out, HEAD_INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return out


def load_head(model_uri: str) -> Tuple[tf_keras.Model, Dict]:
    """(head, info) saved by :func:`save_head` in the Model artifact at ``model_uri``."""
    src = head_dir(model_uri)
    with tf.io.gfile.GFile(os.path.join(src, HEAD_INFO_FILE)) as f:
        info = json.load(f)
    with tempfile.TemporaryDirectory(prefix="head-") as tmp:
        local = os.path.join(tmp, HEAD_FILE)
        tf.io.gfile.copy(os.path.join(src, HEAD_FILE), local, overwrite=True)
        head = tf_keras.models.load_model(local, compile=False)
    if int(head.output_shape[-1]) != len(info["label_names"]):
        raise ValueError(f"head in {src} has {head.output_shape[-1]} outputs for "
                         f"{len(info['label_names'])} labels")
    return head, info


def run_fn(fn_args) -> None:
    """TFX Trainer entry point; custom_config: TrainerSettings.to_config()."""
    settings = TrainerSettings.from_config(fn_args.custom_config or {})
    label_names: List[str] = list(settings.label_names)
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)

    x_train, y_train, train_rows = load_split(fn_args.train_files, tf_transform_output)
    x_eval, y_eval, eval_rows = load_split(fn_args.eval_files, tf_transform_output)
    rows = {"train": train_rows, "eval": eval_rows}
    training = {"data": rows_fingerprint(rows), "settings": settings.to_json()}
    if y_train.size and int(y_train.max()) >= len(label_names):
        raise ValueError(f"label {int(y_train.max())} outside the vocabulary {label_names}")
    if settings.corrupt_train_labels:
        # Fault injection for testing the Evaluator gate: break the label/feature link.
        logging.warning("corrupt_train_labels is set: training on shuffled labels")
        y_train = np.random.default_rng(settings.seed).permutation(y_train)
    logging.info("Training head on %d examples (%d eval), %d classes, %d features",
                 len(y_train), len(y_eval), len(label_names), x_train.shape[1])

    start, served = _start(fn_args.base_model, settings, rows["train"])
    training_dir = os.path.join(fn_args.model_run_dir, TRAINING_DIR)
    head, history, choice = train(x_train, y_train, x_eval, y_eval, len(label_names), settings,
                                  log_dir=training_dir, served=served, served_epochs=start.epochs)
    if start.warm and (choice is None or choice.served_eval_loss is None):
        start = continuation.Plan(None, "the served model's top blocks do not fit this run's: "
                                        "from the ImageNet weights")
    tf.io.gfile.makedirs(training_dir)
    with tf.io.gfile.GFile(os.path.join(training_dir, TRAINING_HISTORY_FILE), "w") as f:
        json.dump(history, f)

    export_serving(fn_args.serving_model_dir, tf_transform_output, head, label_names)
    # What LabelGuard compares the next runs with, once this model is blessed.
    model_uri = os.path.dirname(fn_args.serving_model_dir.rstrip("/"))
    counts = np.bincount(np.concatenate([y_train, y_eval]), minlength=len(label_names))
    with tf.io.gfile.GFile(os.path.join(model_uri, LABEL_SPACE_FILE), "w") as f:
        json.dump({"label_names": label_names,
                   "class_counts": {n: int(c) for n, c in zip(label_names, counts)}}, f)
    save_head(model_uri, head, settings.backbone, settings.weights, label_names, training,
              settings.trainable_blocks, settings.activation_dtype, choice,
              start if settings.trainable_blocks else None)
    if settings.trainable_blocks:  # what the next run continuing this model counts as new
        continuation.write_rows(model_uri, rows["train"])


def _start(base_model: Optional[str], settings: TrainerSettings, train_rows: List[bytes]
           ) -> Tuple[continuation.Plan, Optional[tf_keras.Model]]:
    """(how fine-tuning starts, the served top model to continue or None). ``base_model``:
    fn_args.base_model, the served model's Format-Serving (TFX's path_utils) or None."""
    if not settings.trainable_blocks:
        return continuation.Plan(None, "head only: trained from scratch"), None
    base_uri = os.path.dirname(base_model.rstrip("/")) if base_model else None
    start = continuation.plan(
        base_uri, model_info.read_head_info(base_uri) if base_uri else None, settings.to_json(),
        feature_namespace(settings.backbone, settings.weights, settings.trainable_blocks, settings.activation_dtype),
        train_rows, settings.epochs, settings.cold_start)
    logging.info("Fine-tuning start: %s", start.reason)
    if not start.warm:
        return start, None
    try:
        served, _ = load_head(base_uri)
    except (OSError, ValueError, tf.errors.OpError) as e:  # a damaged served head: start cold
        logging.warning("The served model's head could not be read (%s): fine-tuning from ImageNet weights", e)
        return continuation.Plan(None, f"the served model's head could not be read ({type(e).__name__}): "
                                       "from the ImageNet weights"), None
    return start, served
