"""Trainer module: head training and the two exports (SavedModel, TFLite)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from components import backbones, feature_records, head_training, preprocessing, trainer
from conftest import head_settings


def _blobs(n, d=16, classes=3, seed=0, spread=0.3, sample_seed=None):
    """n points around `classes` centres (fixed by `seed`); another `sample_seed`
    draws new points around the same centres (a held-out set)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 3
    if sample_seed is not None:
        rng = np.random.default_rng(sample_seed)
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(size=(n, d)) * spread
    return x.astype(np.float32), y.astype(np.int64)


def test_head_learns_separable_features_deterministically():
    x, y = _blobs(300)
    held_x, held_y = _blobs(90, sample_seed=1)  # same centres, points unseen by training and early stopping
    cfg = head_settings(epochs=30, seed=7, learning_rate=0.01)
    head, history = trainer.train_head(x[:240], y[:240], x[240:], y[240:], 3, cfg)
    acc = (head(held_x).numpy().argmax(1) == held_y).mean()
    # The classes are separated by ~10 standard deviations: a working head is at 1.0.
    assert acc >= 0.97
    assert len(head.trainable_weights) == 2  # one Dense layer: kernel + bias
    head2, history2 = trainer.train_head(x[:240], y[:240], x[240:], y[240:], 3, cfg)
    for a, b in zip(head.get_weights(), head2.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert history == history2


def test_several_steps_per_call_fit_the_same_head_as_one(monkeypatch):
    """STEPS_PER_EXECUTION only batches Keras' calls: with a split that does not divide
    into whole calls, class weights and early stopping, the weights and history equal
    those of one step per call."""
    x, y = _blobs(301, spread=2.0)
    cfg = head_settings(epochs=12, seed=3, learning_rate=0.01, class_weights="balanced")
    runs = []
    for steps in (1, head_training.STEPS_PER_EXECUTION):
        monkeypatch.setattr(head_training, "STEPS_PER_EXECUTION", steps)
        runs.append(trainer.train_head(x[:237], y[:237], x[237:], y[237:], 3, cfg))
    (one, history_one), (many, history_many) = runs
    assert head_training.STEPS_PER_EXECUTION > 1 and many._steps_per_execution.numpy() > 1
    for a, b in zip(one.get_weights(), many.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert history_one == history_many


def test_the_head_alone_candidate_of_fine_tuning_is_the_head_only_model():
    """With N > 0 the Trainer's fallback (a head alone on the frozen top's pooled
    features) trains as the N = 0 path does on the same features: same seed, start,
    batches, so the same weights and eval loss."""
    x, y = _blobs(200, spread=2.0)
    cfg = head_settings(epochs=20, seed=5, learning_rate=0.01)
    head, history = trainer.train_head(x[:150], y[:150], x[150:], y[150:], 3, cfg)
    np.random.default_rng(0).random(10)  # other draws in between change nothing: it re-seeds
    tf.random.uniform([3])
    alone, loss = head_training._frozen_top_head(None, x[:150], y[:150], x[150:], y[150:], 3, cfg,
                                           cfg.epochs, pooled=(x[:150], x[150:]))
    for a, b in zip(head.get_weights(), alone.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loss == min(history["val_loss"])


def test_early_stopping_on_eval_loss():
    x, y = _blobs(200, spread=3.0)
    rng = np.random.default_rng(1)
    y_noise = rng.integers(0, 3, 100)  # eval labels unrelated to features: eval loss rises
    _, history = trainer.train_head(x[:100], y[:100], x[100:], y_noise, 3,
                                    head_settings(epochs=300, patience=3, learning_rate=0.05))
    assert len(history["loss"]) < 300
    best = int(np.argmin(history["val_loss"]))
    assert len(history["loss"]) == best + 1 + 3


@pytest.fixture(scope="module")
def trained(tiny_transform):
    out_dir, raw, transformed, labels = tiny_transform
    x = np.stack([t["features"] for t in transformed]).astype(np.float32)
    y = np.array([int(t["label"]) for t in transformed])
    head, _ = trainer.train_head(x, y, x, y, len(labels), head_settings(epochs=60, learning_rate=0.01))
    size = backbones.get_spec("mobilenet_v1").input_size
    pixels = preprocessing.decode_and_resize(tf.constant([r["image"] for r in raw]), size).numpy()
    expected = head(backbones.build_feature_extractor("mobilenet_v1", "imagenet")(pixels)).numpy()
    return out_dir, raw, pixels, expected, head, labels


def test_rows_in_any_order_train_the_same_head(tiny_transform, tmp_path):
    """Beam writes the features in an order that varies between runs; the Trainer
    reads them in their digest order (trainer.load_split), so the seeded fit gives
    the same head. Without that order the same rows give another head."""
    out_dir, _, transformed, labels = tiny_transform
    output = tft.TFTransformOutput(out_dir)
    x, y = _blobs(120, d=len(transformed[0]["features"]), classes=len(labels), spread=2.0)
    raw, ordered = [], []
    for name, order in (("as_is", np.arange(len(y))), ("reversed", np.arange(len(y))[::-1])):
        path = str(tmp_path / f"{name}.gz")
        with tf.io.TFRecordWriter(path, options="GZIP") as w:
            for i in order:
                w.write(tf.train.Example(features=tf.train.Features(feature={
                    "features": tf.train.Feature(float_list=tf.train.FloatList(value=x[i])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[y[i]])),
                })).SerializeToString())
        raw.append(trainer.load_features([path], output))
        ordered.append(trainer.load_split([path], output))
    assert not np.array_equal(raw[0][0], raw[1][0])  # Beam's order differs ...
    (xa, ya, da), (xb, yb, db) = ordered
    np.testing.assert_array_equal(xa, xb)             # ... the Trainer's does not
    np.testing.assert_array_equal(ya, yb)
    assert da == db == sorted(da) and sorted(ya.tolist()) == sorted(y.tolist())

    cfg = head_settings(epochs=5, seed=3, learning_rate=0.01)
    head, _ = trainer.train_head(xa[:90], ya[:90], xa[90:], ya[90:], len(labels), cfg)
    again, _ = trainer.train_head(xb[:90], yb[:90], xb[90:], yb[90:], len(labels), cfg)
    for p, q in zip(head.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(p, q)
    # The same train rows in another order: another seeded shuffle, another head.
    other, _ = trainer.train_head(xa[:90][::-1], ya[:90][::-1], xa[90:], ya[90:], len(labels), cfg)
    assert not np.array_equal(head.get_weights()[0], other.get_weights()[0])


def _serialized(raw):
    return [tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[r["image"]]))
    })).SerializeToString() for r in raw]


def test_serving_signature_takes_raw_image_examples(trained, tmp_path):
    out_dir, raw, _, expected, head, labels = trained
    trainer.export_serving(str(tmp_path / "serving"), tft.TFTransformOutput(out_dir), head, labels)
    serve = tf.saved_model.load(str(tmp_path / "serving")).signatures["serving_default"]
    out = serve(examples=tf.constant(_serialized(raw)))
    probs = out["probabilities"].numpy()
    assert probs.shape == (len(raw), len(labels))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, expected, atol=1e-4)  # carries the Transform graph
    assert [c.decode() for c in out["classes"].numpy()[0]] == labels
    assert [c.decode() for c in out["predicted_class"].numpy()] == [labels[i] for i in probs.argmax(1)]
    # The head-only signature the Evaluator uses on BottleneckGen's features: the same
    # outputs from the feature vectors (the backbone's, as BottleneckGen stores them).
    loaded = tf.saved_model.load(str(tmp_path / "serving"))
    assert set(loaded.signatures) == {"serving_default", "serving_features"}
    vectors = backbones.build_feature_extractor("mobilenet_v1", "imagenet")(
        preprocessing.decode_and_resize(tf.constant([r["image"] for r in raw]), 224)).numpy()
    rows = [feature_records.bottleneck_example({"label": 0, "sha": "0" * 64, "view": 0},
                                                v.astype("<f4").tobytes()) for v in vectors]
    head_out = loaded.signatures["serving_features"](examples=tf.constant(rows))
    assert set(head_out) == set(out)
    # Observed max |difference| 0 (same process, same backbone graph); 1e-5 allows other kernels.
    np.testing.assert_allclose(head_out["probabilities"].numpy(), probs, atol=1e-5)
    assert head_out["predicted_class"].numpy().tolist() == out["predicted_class"].numpy().tolist()


def test_head_is_saved_and_pixel_model_matches_saved_model(trained, tmp_path):
    """The head saved in the Model artifact, on top of the backbone, maps pixels to the
    SavedModel's probabilities (what TFLiteExport converts; conversion is tested in
    test_tflite_export.py)."""
    _, raw, pixels, expected, head, labels = trained
    out = trainer.save_head(str(tmp_path), head, "mobilenet_v1", "imagenet", labels)
    assert out == str(tmp_path / "head")
    loaded, info = trainer.load_head(str(tmp_path))
    assert info["backbone"] == "mobilenet_v1" and info["weights"] == "imagenet"
    assert info["label_names"] == labels and info["feature_dim"] == 1024
    assert info["weights_fingerprint"] == backbones.weights_fingerprint("mobilenet_v1", "imagenet")
    # BottleneckGen's namespace for these weights: the Evaluator's features path checks it.
    from components import bottleneck_gen
    assert info["feature_namespace"] == bottleneck_gen.cache_namespace("mobilenet_v1", "imagenet")
    assert info["feature_namespace"].startswith("mobilenet_v1|" + info["weights_fingerprint"] + "|")
    model = trainer.build_pixel_model("mobilenet_v1", "imagenet", loaded)
    assert model.input_shape == (1, 224, 224, 3)
    got = np.concatenate([model(pixels[i:i + 1]).numpy() for i in range(len(raw))])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_balanced_class_weights_lift_the_minority_class():
    """--class-weights balanced: weights are images / (classes x class images); on
    overlapping, 9:1 imbalanced blobs the minority class's recall goes up."""
    assert head_training.balanced_class_weights(np.array([0, 0, 0, 1]), 3) == {0: 4 / 9, 1: 4 / 3, 2: 1.0}
    x, y = _blobs(1000, classes=2, spread=4.0)
    keep = (y == 0) | (np.arange(len(y)) % 9 == 0)
    x, y = x[keep], y[keep]
    held_x, held_y = _blobs(2000, classes=2, spread=4.0, sample_seed=3)
    recall = {}
    for weights in ("none", "balanced"):
        cfg = head_settings(epochs=6, seed=1, learning_rate=0.02, patience=6, batch_size=64,
                            class_weights=weights)
        head, _ = trainer.train_head(x, y, x[:50], y[:50], 2, cfg)
        predicted = head(held_x).numpy().argmax(1)
        recall[weights] = float((predicted[held_y == 1] == 1).mean())
    assert recall["balanced"] > recall["none"] + 0.05, recall
