"""Fitting on in-memory features: the head alone (N = 0), or the backbone's top N blocks
and the head on cached cut activations (N > 0, components/fine_tune.py), with early
stopping on eval loss; a fine-tuning rerun may continue the served model's top blocks
and head (components/continuation.py). components/trainer.py reads the data and saves
what this returns."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np
import tf_keras
from absl import logging

from components import fine_tune, keras_steps, progress_counts, continuation
from components.contracts import FEATURES_KEY
from components.settings import TrainerSettings

# Batches per call of Keras' train function: the same batches, order and weights
# (checked bit-identical), a third less of the head's fit time spent in Python.
STEPS_PER_EXECUTION = 64
PROGRESS_STAGE = "Trainer"  # the live bar counts epochs (components.progress_counts)


def build_head(feature_dim: int, num_classes: int, learning_rate: float) -> tf_keras.Model:
    """The only trainable part: one dense softmax layer, as in retrain.py."""
    inputs = tf_keras.Input([feature_dim], name=FEATURES_KEY)
    outputs = tf_keras.layers.Dense(num_classes, activation="softmax", name="head")(inputs)
    model = tf_keras.Model(inputs, outputs, name="head")
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=STEPS_PER_EXECUTION)
    return model


class _EpochProgress(tf_keras.callbacks.Callback):
    """Epochs for the live progress bar (early stopping may end before the total)."""

    def __init__(self, epochs: int):
        super().__init__()
        self._epochs = epochs

    def on_train_begin(self, logs=None):
        progress_counts.set_total(PROGRESS_STAGE, self._epochs, "epochs")
        self._counter = progress_counts.Counter(PROGRESS_STAGE, interval=0.0)

    def on_epoch_end(self, epoch, logs=None):
        self._counter.add()


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> Dict[int, float]:
    """class -> images / (classes x its images) (sklearn's "balanced"); absent classes 1.0."""
    counts = np.bincount(labels, minlength=num_classes)
    return {c: float(len(labels) / (num_classes * n)) if n else 1.0 for c, n in enumerate(counts)}


def _fit(fit: tf_keras.Model, x_train, y_train, x_eval, y_eval, num_classes: int, settings: TrainerSettings,
         callbacks: List[tf_keras.callbacks.Callback]):
    # Without AutoGraph (keras_steps.py): Keras' steps run eagerly too, so they need
    # no conversion, and a step that did would fail loudly at trace time.
    return keras_steps.fit(
        fit, 
        x_train, y_train, validation_data=(x_eval, y_eval),
        epochs=settings.epochs, batch_size=settings.batch_size,
        class_weight=balanced_class_weights(y_train, num_classes)
        if settings.class_weights == "balanced" else None,
        shuffle=True, callbacks=callbacks, verbose=0)


def _early_stopping(settings: TrainerSettings) -> tf_keras.callbacks.EarlyStopping:
    return tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience,
                                            restore_best_weights=True)


def _frozen_top_head(top: tf_keras.Model, x_train, y_train, x_eval, y_eval, num_classes: int,
                     settings: TrainerSettings, epochs: int,
                     pooled: Optional[Tuple[np.ndarray, np.ndarray]] = None
                     ) -> Tuple[tf_keras.Model, Optional[float]]:
    """(head, its best eval loss): a head trained alone on the frozen top blocks' pooled
    output (cheap: the blocks run once), as the head-only path trains it. ``pooled``:
    that output for (x_train, x_eval), when computed before the blocks trained."""
    pooled_train, pooled_eval = pooled or (fine_tune.frozen_top_features(top, x_train),
                                           fine_tune.frozen_top_features(top, x_eval))
    # Seeded as the head-only path seeds its head: the same start and batches as the
    # N = 0 model on these features (else a head from another draw: 1.3 points apart
    # on Fashion-MNIST-2000's 376 eval images, by chance alone).
    tf_keras.utils.set_random_seed(settings.seed)
    head = build_head(pooled_train.shape[1], num_classes, settings.learning_rate)
    history = _fit(head, pooled_train, y_train, pooled_eval, y_eval, num_classes,
                   dataclasses.replace(settings, epochs=epochs), [_early_stopping(settings)])
    return head, _best_eval_loss(history.history)


def _best_eval_loss(history: Dict[str, List[float]]) -> Optional[float]:
    losses = [v for v in history.get("val_loss") or [] if np.isfinite(v)]
    return float(min(losses)) if losses else None


@dataclasses.dataclass(frozen=True)
class FineTuneChoice:
    """With N > 0, which top model the Trainer kept (head.json ``fine_tune``): the
    fine-tuned blocks, or the head alone on the frozen top blocks when fine-tuning did
    not lower the best eval loss (its blocks then keep their ImageNet weights: the
    same predictions as a head-only model, so N > 0 never serves a worse model by
    the loss early stopping itself judges by). A continued run (components/continuation.py)
    keeps the served weights ("served") when no epoch lowered their eval loss."""
    kept: str                          # "fine-tuned", "head only" or "served"
    fine_tuned_eval_loss: Optional[float]
    head_only_eval_loss: Optional[float]
    served_eval_loss: Optional[float] = None  # a continued run: the served weights' before training

    def to_json(self) -> Dict:
        out = dataclasses.asdict(self)
        if self.served_eval_loss is None:  # a cold start's record stays as it was
            del out["served_eval_loss"]
        return out


def eval_loss(top: tf_keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Keras' sparse categorical cross-entropy of ``top`` on (x, y), as fit reports val_loss,
    computed eagerly: Model.evaluate would trace a test function first, seconds on a
    fine-tuning top model, for one pass."""
    return cross_entropy(predict_eagerly(top, x, batch_size), y)


def predict_eagerly(top: tf_keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``top``'s outputs on ``x`` in inference mode, batch by batch, without tracing."""
    return np.concatenate([top(x[i:i + batch_size], training=False).numpy() for i in range(0, len(x), batch_size)])


def cross_entropy(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy of probabilities, with Keras' epsilon clip."""
    picked = np.clip(probs[np.arange(len(y)), y], 1e-7, 1 - 1e-7)
    return float(-np.log(picked).mean())


def _fitting_weights(served: Optional[tf_keras.Model], top: tf_keras.Model) -> Optional[List[np.ndarray]]:
    """The served top model's weights when they fit ``top`` (same shapes, same order), else None."""
    if served is None:
        return None
    weights = served.get_weights()
    shapes = [tuple(w.shape) for w in top.get_weights()]
    if [tuple(w.shape) for w in weights] != shapes:
        logging.warning("The served top model's weights do not fit this run's top blocks: "
                        "fine-tuning from the ImageNet weights")
        return None
    return weights


def train(x_train, y_train, x_eval, y_eval, num_classes: int, settings: TrainerSettings,
          log_dir: str | None = None, recipe: fine_tune.Recipe = fine_tune.DEFAULT_RECIPE,
          served: Optional[tf_keras.Model] = None, served_epochs: int = 0
          ) -> Tuple[tf_keras.Model, Dict[str, List[float]], Optional[FineTuneChoice]]:
    """Fits the head (N > 0: the top blocks and the head) with early stopping on eval
    loss; returns (head, history, the fine-tuning choice: None for N = 0).
    ``recipe``: how top blocks train when ``settings.trainable_blocks`` > 0.
    ``served`` (N > 0): the served top model to continue (components/continuation.py):
    its weights start the fit, at continuation.LEARNING_RATE_FACTOR of the step sizes,
    for ``served_epochs``; when its weights do not fit this run's top model (other code),
    the fit starts from ImageNet weights as without it (the choice's served_eval_loss is None)."""
    tf_keras.utils.set_random_seed(settings.seed)
    alone = alone_loss = start = pooled = served_loss = None
    if settings.trainable_blocks:  # the top blocks + the head, two learning rates
        def build(factor: float):
            return fine_tune.build_trainable(settings.backbone, settings.weights, settings.trainable_blocks,
                                             num_classes, settings.learning_rate * factor, recipe)
        fit, head = build(1.0 if served is None else continuation.LEARNING_RATE_FACTOR)
        served_weights = _fitting_weights(served, head)
        if served_weights is not None:
            settings = dataclasses.replace(settings, epochs=served_epochs)
        elif served is not None:  # rare (other code): a cold start at the full step sizes
            fit, head = build(1.0)
        if recipe.warm_start:
            alone, alone_loss = _frozen_top_head(head, x_train, y_train, x_eval, y_eval, num_classes,
                                                 settings, recipe.warm_start_epochs)
            head.get_layer("head").set_weights(alone.get_layer("head").get_weights())
        else:  # the head-alone candidate trains after the fine-tuning, whose run is unchanged
            pooled = (fine_tune.frozen_top_features(head, x_train), fine_tune.frozen_top_features(head, x_eval))
        start = head.get_weights()  # ImageNet blocks (BatchNorm statistics included)
        if served_weights is not None:
            head.set_weights(served_weights)
            served_loss = eval_loss(head, x_eval, y_eval)
    else:
        fit = head = build_head(x_train.shape[1], num_classes, settings.learning_rate)
    callbacks = [_early_stopping(settings)]
    if log_dir:
        callbacks.append(tf_keras.callbacks.TensorBoard(log_dir=log_dir, histogram_freq=0))
    callbacks.append(_EpochProgress(settings.epochs))
    history = {k: [float(v) for v in vals] for k, vals in
               _fit(fit, x_train, y_train, x_eval, y_eval, num_classes, settings, callbacks).history.items()}
    if start is None:
        return head, history, None
    if alone is None:
        alone, alone_loss = _frozen_top_head(head, x_train, y_train, x_eval, y_eval, num_classes,
                                             settings, recipe.warm_start_epochs, pooled)
    tuned_loss, kept = _best_eval_loss(history), "fine-tuned"
    if served_loss is not None and (tuned_loss is None or served_loss <= tuned_loss):
        head.set_weights(served_weights)  # no epoch did better than where it started
        tuned_loss, kept = served_loss, "served"
    if tuned_loss is None or alone_loss is None or tuned_loss < alone_loss:
        return head, history, FineTuneChoice(kept, _best_eval_loss(history), alone_loss, served_loss)
    head.set_weights(start)
    head.get_layer("head").set_weights(alone.get_layer("head").get_weights())
    logging.warning("Fine-tuning %d blocks did not lower the best eval loss (%.4f against %.4f for "
                    "the head alone on the frozen blocks): keeping the head alone",
                    settings.trainable_blocks, tuned_loss, alone_loss)
    return head, history, FineTuneChoice("head only", _best_eval_loss(history), alone_loss, served_loss)


def train_head(x_train, y_train, x_eval, y_eval, num_classes: int, settings: TrainerSettings,
               log_dir: str | None = None, recipe: fine_tune.Recipe = fine_tune.DEFAULT_RECIPE
               ) -> Tuple[tf_keras.Model, Dict[str, List[float]]]:
    """(head, history) of :func:`train`."""
    head, history, _ = train(x_train, y_train, x_eval, y_eval, num_classes, settings, log_dir, recipe)
    return head, history

