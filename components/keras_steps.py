"""Keras' ``fit`` without AutoGraph: the same steps, in the same order, traced as plain Python.

With ``steps_per_execution`` > 1, tf_keras builds its train and test functions as
``for _ in tf.range(model._steps_per_execution): outputs = step_function(...)``
inside a ``tf.function`` (tf_keras/src/engine/training.py, ``make_train_function``
and ``make_test_function``). AutoGraph then converts that loop and Keras' own
``step_function``, ``run_step`` and ``reduce_per_replica`` from source, and traces the
step twice (once to learn the type of ``outputs``, undefined before the loop); its
tf.data input pipeline's map functions are converted too (``structured_function``).
That was about 0.7 s of every head fit, for a loop that is written out here as a
``tf.while_loop``.

:func:`fit` installs functions with Keras' contract (``model.train_function(iterator)``
runs ``model._steps_per_execution`` steps, read when the function runs, since Keras
shortens the last execution of an epoch; it returns the last step's logs and counts
each step in ``_train_counter``) and runs ``model.fit`` with AutoGraph off. Each step
is the model's own ``train_step`` / ``test_step`` on the next batch, so the weights
are the same to the bit (tests/unit/test_keras_steps.py). Single-device only, as
the Trainer runs: under a distribution strategy Keras' own functions are kept.
"""

from __future__ import annotations

import tensorflow as tf


def _first_tensor(outputs):
    """A control dependency that makes the counter follow the step (Keras counts a
    step only once it ran): the first output that is not a variable."""
    return [t for t in tf.nest.flatten(outputs, expand_composites=True)
            if not isinstance(t, tf.Variable)][:1]


def steps_function(model, step_name: str, counter_name: str):
    """``model.<step_name>`` run ``model._steps_per_execution`` times per call, traced once
    without AutoGraph; each step adds 1 to ``model.<counter_name>``."""
    counter = getattr(model, counter_name)

    def one_step(iterator):
        outputs = getattr(model, step_name)(iterator.get_next())
        with tf.control_dependencies(_first_tensor(outputs)):
            counter.assign_add(1)
        return outputs

    @tf.function(autograph=False, reduce_retracing=True)
    def run(iterator):
        # The first step outside the loop gives the logs' structure (Keras'
        # steps_per_execution is >= 1: it shortens an epoch's last execution, never to 0).
        outputs = one_step(iterator)
        steps = tf.cast(model._steps_per_execution, tf.int32)
        _, outputs = tf.while_loop(lambda i, _: i < steps, lambda i, _: (i + 1, one_step(iterator)),
                                   (tf.constant(1), outputs))
        return outputs

    return run


def fit(model, *args, **kwargs):
    """``model.fit(*args, **kwargs)`` with train and test functions traced without AutoGraph
    (compiled models on the default strategy; others fit as Keras builds them)."""
    if (model._steps_per_execution is not None and not model.run_eagerly and not model.jit_compile
            and not model.autotune_steps_per_execution and model._distribution_strategy is None
            and not tf.distribute.has_strategy()):
        model.train_function = steps_function(model, "train_step", "_train_counter")
        model.train_tf_function = model.train_function  # TensorBoard writes its graph
        model.test_function = steps_function(model, "test_step", "_test_counter")
    else:  # Keras' own functions: at least its steps are not converted
        model.train_step = tf.autograph.experimental.do_not_convert(model.train_step)
        model.test_step = tf.autograph.experimental.do_not_convert(model.test_step)
    return tf.autograph.experimental.do_not_convert(model.fit)(*args, **kwargs)
