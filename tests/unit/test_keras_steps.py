"""keras_steps.fit: the weights, history and step counts of Keras' own fit, without AutoGraph."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorflow.python.autograph.impl import api as autograph_api

from components import keras_steps

FEATURES, CLASSES = 24, 3


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, n)


def _head(steps_per_execution):
    tf_keras.utils.set_random_seed(7)
    inputs = tf_keras.Input([FEATURES])
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(CLASSES, activation="softmax")(inputs))
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    return model


class _TwoOptimizers(tf_keras.Model):
    """A custom train_step with a second optimizer (as fine_tune.TwoRateModel)."""

    def __init__(self):
        super().__init__()
        self.hidden = tf_keras.layers.Dense(8, activation="relu")
        self.out = tf_keras.layers.Dense(CLASSES, activation="softmax")
        self.second = tf_keras.optimizers.Adam(0.001)

    def call(self, x, training=None):
        return self.out(self.hidden(x))

    def train_step(self, data):
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            predicted = self(x, training=True)
            loss = self.compiled_loss(y, predicted, sample_weight)
        first, second = self.hidden.trainable_weights, self.out.trainable_weights
        grads = tape.gradient(loss, first + second)
        self.second.apply_gradients(zip(grads[:len(first)], first))
        self.optimizer.apply_gradients(zip(grads[len(first):], second))
        return self.compute_metrics(x, y, predicted, sample_weight)


def _two_optimizers(steps_per_execution):
    tf_keras.utils.set_random_seed(7)
    model = _TwoOptimizers()
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    return model


def _fit(build, steps_per_execution, ours, conversions):
    x, y = _data(150, 1)  # 10 batches of 16 (the last of 6): executions of 4, 4, 2 steps
    xe, ye = _data(40, 2)
    model = build(steps_per_execution)
    before = conversions[0]
    tf_keras.utils.set_random_seed(11)  # the same shuffles for both
    args = (x, y)
    kwargs = dict(validation_data=(xe, ye), epochs=6, batch_size=16, shuffle=True, verbose=0,
                  class_weight={0: 0.5, 1: 1.0, 2: 2.0},
                  callbacks=[tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=2,
                                                              restore_best_weights=True)])
    history = keras_steps.fit(model, *args, **kwargs) if ours else model.fit(*args, **kwargs)
    return model, history.history, conversions[0] - before


@pytest.fixture
def conversions(monkeypatch):
    """How many functions AutoGraph converted (every conversion goes through converted_call)."""
    count = [0]
    original = autograph_api.converted_call

    def counting(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(autograph_api, "converted_call", counting)
    return count


@pytest.mark.parametrize("build,steps_per_execution", [(_head, 4), (_head, 1), (_two_optimizers, 4)])
def test_same_weights_history_and_counts_as_keras_fit_without_autograph(build, steps_per_execution,
                                                                        conversions):
    reference, reference_history, reference_conversions = _fit(build, steps_per_execution, False, conversions)
    model, history, ours_conversions = _fit(build, steps_per_execution, True, conversions)
    for ours, theirs in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(ours, theirs)  # bit for bit
    assert history == reference_history
    assert int(model._train_counter.numpy()) == int(reference._train_counter.numpy()) > 0
    assert int(model._test_counter.numpy()) == int(reference._test_counter.numpy()) > 0
    assert reference_conversions > 0  # Keras' own path converts its loop and steps
    assert ours_conversions == 0


def test_a_model_keras_runs_eagerly_keeps_keras_functions(conversions):
    model = _head(4)
    model.run_eagerly = True
    x, y = _data(32, 3)
    keras_steps.fit(model, x, y, epochs=1, batch_size=16, verbose=0)
    assert int(model._train_counter.numpy()) == 2
    assert not hasattr(model.train_function, "function_spec")  # Keras' eager function, not ours
