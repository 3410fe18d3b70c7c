"""Fine-tuning the top blocks (`--trainable-blocks N`, issue 19): the registry's cut
points and the split of the feature extractor into lower (pixels -> activation at the
cut) and upper (activation -> pooled features), with the real ImageNet weights."""

import numpy as np
import pytest

from components import backbones
from components.backbones import model as backbone_model
from conftest import synthetic_images

# upper(lower(x)) against the whole extractor, float32 on CPU: the same layers in the
# same order, but a different graph (separate XLA/Eigen calls) may reorder sums:
# ~1e-6 was measured on features of magnitude ~6 (ReLU6 outputs).
ATOL = 1e-4


@pytest.mark.parametrize("name", ["mobilenet_v1", "efficientnet_lite0"])
def test_lower_then_upper_equals_the_whole_extractor(name, imagenet_weights, lite0_weights):
    spec = backbones.get_spec(name)
    full = backbones.build_feature_extractor(name)
    x = synthetic_images(3, spec.input_size, seed=5)
    expected = full(x).numpy()
    for n in (1, 2):
        lower, upper = backbone_model.build_split(name, n)
        activation = lower(x).numpy()
        assert activation.shape[1:] == backbone_model.cut_shape(name, n)
        got = upper(activation, training=False).numpy()
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
        assert lower.trainable_weights == [] and upper.trainable_weights  # only the top trains
    # The registry's cut points: N = 1 starts at the last block, which ends at the feature layer.
    assert spec.cut_layer(1) == spec.blocks[-1] and spec.cut_layer(2) == spec.blocks[-2]


def test_cut_points_of_the_registry_entries():
    v1 = backbones.get_spec("mobilenet_v1")
    assert len(v1.blocks) == 13 and v1.cut_layer(1) == "conv_dw_13" and v1.cut_layer(2) == "conv_pad_12"
    lite0 = backbones.get_spec("efficientnet_lite0")
    assert len(lite0.blocks) == 16 and lite0.cut_layer(1) == "block15_expand_conv"
    assert lite0.blocks[0] == "block0_dwconv"
    assert backbone_model.cut_shape("mobilenet_v1", 1) == (7, 7, 1024)
    assert backbone_model.cut_shape("mobilenet_v1", 2) == (14, 14, 512)


def test_a_backbone_without_blocks_or_n_out_of_range_is_refused_in_one_line():
    from components.backbones.registry import check_trainable_blocks
    check_trainable_blocks("mobilenet_v2", 0)  # head only: every backbone
    with pytest.raises(ValueError) as e:
        check_trainable_blocks("mobilenet_v2", 1)
    assert "mobilenet_v2" in str(e.value) and "efficientnet_lite0, mobilenet_v1" in str(e.value)
    assert "\n" not in str(e.value)
    for bad in (-1, 14):
        with pytest.raises(ValueError, match="0..13"):
            check_trainable_blocks("mobilenet_v1", bad)


def test_warm_start_fits_the_head_on_the_frozen_top_and_leaves_the_blocks(imagenet_weights):
    """N > 0 starts from a head trained alone on the frozen top blocks' pooled output
    (the features the head-only path trains on), before the blocks unfreeze."""
    import tf_keras

    from components import fine_tune, head_training
    from conftest import head_settings
    x = synthetic_images(16, 224, seed=7)
    y = np.arange(16) % 2
    lower, _ = backbone_model.build_split("mobilenet_v1", 1)
    cut = lower(x).numpy().reshape(16, -1)
    top = fine_tune.build_top("mobilenet_v1", "imagenet", 1, 2)
    np.testing.assert_allclose(fine_tune.frozen_top_features(top, cut),
                               backbones.build_feature_extractor("mobilenet_v1")(x).numpy(), atol=ATOL, rtol=0)
    blocks_before = [w.numpy().copy() for w in top.weights if not w.name.startswith("head/")]
    loss = tf_keras.losses.SparseCategoricalCrossentropy()
    before = float(loss(y, top(cut, training=False)))
    alone, alone_loss = head_training._frozen_top_head(top, cut, y, cut, y, 2,
                                                 head_settings(trainable_blocks=1, learning_rate=0.01), 100)
    top.get_layer("head").set_weights(alone.get_layer("head").get_weights())
    after = float(loss(y, top(cut, training=False)))
    assert alone_loss is not None and alone_loss < before / 2
    assert after < before / 2, (before, after)
    for w, old in zip([w for w in top.weights if not w.name.startswith("head/")], blocks_before):
        np.testing.assert_array_equal(w.numpy(), old)


def test_a_recipe_reaches_the_top_model_and_the_default_is_the_documented_one(imagenet_weights):
    """The experiment knobs are a typed Recipe passed to train_head, never module state
    a caller overwrites: the default top model has no dropout and BatchNorm in inference
    mode (its pooled output does not depend on the batch), an experiment's has both."""
    from components import fine_tune
    assert fine_tune.DEFAULT_RECIPE == fine_tune.Recipe(block_learning_rate_factor=0.1, warm_start=False,
                                                        dropout=0.0, batchnorm_training=False)
    x = synthetic_images(4, 224, seed=3)
    lower, _ = backbone_model.build_split("mobilenet_v1", 1)
    cut = lower(x).numpy().reshape(4, -1)
    plain = fine_tune.build_top("mobilenet_v1", "imagenet", 1, 2)
    assert "head_dropout" not in [layer.name for layer in plain.layers]
    np.testing.assert_allclose(plain(cut, training=True).numpy()[:1], plain(cut[:1], training=True).numpy(),
                               atol=1e-5)  # inference-mode BatchNorm even while fitting
    batch_stats = fine_tune.build_top("mobilenet_v1", "imagenet", 1, 2, fine_tune.Recipe(batchnorm_training=True))
    assert not np.allclose(batch_stats(cut, training=True).numpy()[:1], batch_stats(cut[:1], training=True).numpy(),
                           atol=1e-3)  # batch statistics: the output depends on the batch
    recipe = fine_tune.Recipe(dropout=0.3, block_learning_rate_factor=0.5)
    assert "head_dropout" in [layer.name for layer in fine_tune.build_top("mobilenet_v1", "imagenet", 1, 2, recipe).layers]
    fit, _ = fine_tune.build_trainable("mobilenet_v1", "imagenet", 1, 2, 0.01, recipe)
    assert float(fit.block_optimizer.learning_rate) == pytest.approx(0.005)


def test_fine_tuning_that_does_not_beat_the_head_alone_keeps_the_head_alone(imagenet_weights):
    """When the fine-tuned top's best eval loss is not below that of a head trained
    alone on the frozen top blocks, the Trainer keeps that head on the ImageNet
    blocks: the same predictions as the head-only model on the same pixels, never a
    worse fine-tuned one. Provoked here with a block step size that wrecks the blocks."""
    from components import fine_tune, trainer
    from conftest import head_settings
    x = synthetic_images(24, 224, seed=11)
    y = np.arange(24) % 2
    lower, _ = backbone_model.build_split("mobilenet_v1", 1)
    cut = lower(x).numpy().reshape(24, -1)
    cfg = head_settings(trainable_blocks=1, learning_rate=0.01, epochs=4, patience=1)
    wrecking = fine_tune.Recipe(block_learning_rate_factor=1000.0)
    top, history, choice = trainer.train(cut[:16], y[:16], cut[16:], y[16:], 2, cfg, recipe=wrecking)
    assert choice.kept == "head only", choice
    assert choice.fine_tuned_eval_loss >= choice.head_only_eval_loss
    assert min(history["val_loss"]) == choice.fine_tuned_eval_loss
    # The kept top model: ImageNet blocks, so the head sees exactly the head-only features.
    fresh = fine_tune.build_top("mobilenet_v1", "imagenet", 1, 2)
    kept_blocks = [w.numpy() for w in top.weights if not w.name.startswith("head/")]
    for w, fresh_w in zip([w for w in fresh.weights if not w.name.startswith("head/")], kept_blocks):
        np.testing.assert_array_equal(w.numpy(), fresh_w)
    pooled = backbones.build_feature_extractor("mobilenet_v1")(x[16:]).numpy()
    np.testing.assert_allclose(top(cut[16:], training=False).numpy(),
                               top.get_layer("head")(pooled).numpy(), atol=1e-4, rtol=0)
    # The default recipe: the rule decides, and fine-tuned blocks are kept as trained.
    tuned, _, choice = trainer.train(cut[:16], y[:16], cut[16:], y[16:], 2, cfg)
    assert choice.kept == ("fine-tuned" if choice.fine_tuned_eval_loss < choice.head_only_eval_loss
                           else "head only"), choice
    moved = any(not np.array_equal(w.numpy(), f.numpy()) for w, f in zip(tuned.weights, fresh.weights)
                if not w.name.startswith("head/"))
    assert moved == (choice.kept == "fine-tuned")


def test_a_continued_run_starts_from_the_served_weights_and_keeps_them_when_no_epoch_is_better(
        imagenet_weights, tmp_path):
    """components/continuation.py: with a served top model (through head.h5, as the Trainer
    reads it), train() starts from its weights at a tenth of the step sizes for the epochs
    asked; the served weights' eval loss is measured before training, and when no epoch
    lowers it (provoked: a block step size that wrecks the blocks) the served weights are
    kept exactly. Weights that do not fit (another N) start from ImageNet as before."""
    import tf_keras

    from components import continuation, fine_tune, trainer
    from conftest import head_settings
    x = synthetic_images(24, 224, seed=13)
    y = np.arange(24) % 2
    lower, _ = backbone_model.build_split("mobilenet_v1", 1)
    cut = lower(x).numpy().reshape(24, -1)
    cfg = head_settings(trainable_blocks=1, learning_rate=0.01, epochs=4, patience=1)
    first, _, _ = trainer.train(cut[:16], y[:16], cut[16:], y[16:], 2, cfg)
    trainer.save_head(str(tmp_path), first, "mobilenet_v1", "imagenet", ["a", "b"], trainable_blocks=1)
    served, _ = trainer.load_head(str(tmp_path))
    loss = tf_keras.losses.SparseCategoricalCrossentropy()
    served_loss = float(loss(y[16:], served(cut[16:], training=False)))

    wrecking = fine_tune.Recipe(block_learning_rate_factor=1e5)
    top, history, choice = trainer.train(cut[:16], y[:16], cut[16:], y[16:], 2, cfg, recipe=wrecking,
                                         served=served, served_epochs=2)
    assert len(history["loss"]) <= 2 and choice.served_eval_loss == pytest.approx(served_loss, abs=1e-5)
    if choice.kept == "served":
        assert choice.served_eval_loss <= min(history["val_loss"])
        for a, b in zip(top.get_weights(), served.get_weights()):
            np.testing.assert_array_equal(a, b)
    else:  # the head alone beat the served weights, a fallback as in a cold run
        assert choice.kept == "head only" and choice.head_only_eval_loss <= choice.served_eval_loss
    # The default recipe: the continued fit moves from the served weights, by smaller steps.
    tuned, history, choice = trainer.train(cut[:16], y[:16], cut[16:], y[16:], 2, cfg,
                                           served=served, served_epochs=1)
    assert len(history["loss"]) == 1 and choice.served_eval_loss is not None
    assert choice.kept in ("served", "fine-tuned", "head only")
    if choice.kept == "fine-tuned":
        assert choice.fine_tuned_eval_loss < choice.served_eval_loss
    assert continuation.LEARNING_RATE_FACTOR < 1
    # Another N's weights do not fit: a cold start (no served loss), all the epochs.
    other = fine_tune.build_top("mobilenet_v1", "imagenet", 2, 2)
    _, history, choice = trainer.train(cut[:16], y[:16], cut[16:], y[16:], 2,
                                       head_settings(trainable_blocks=1, learning_rate=0.01, epochs=2, patience=5),
                                       served=other, served_epochs=1)
    assert choice.served_eval_loss is None and len(history["loss"]) == 2


def test_the_exported_top_blocks_get_bias_correction_like_the_rest(imagenet_weights, tmp_path):
    """TFLiteExport builds the whole network from head.h5: every conv/BatchNorm pair of
    the top blocks is then corrected for the int8 weight shift, as with N = 0. The top
    model still in memory after training is not equivalent: build_split called its
    blocks' layers a second time, and bias correction leaves shared layers out (why
    benchmarks/fine_tune.py converts through head.h5 too)."""
    from components import fine_tune, trainer
    from components.tflite import bias_correction

    def corrected(pixel_model):
        return {bn.name for _, _, bn in bias_correction.conv_bn_pairs(pixel_model)}
    top = fine_tune.build_top("mobilenet_v1", "imagenet", 2, 3)
    trainer.save_head(str(tmp_path), top, "mobilenet_v1", "imagenet", ["a", "b", "c"], trainable_blocks=2)
    loaded, _ = trainer.load_head(str(tmp_path))
    head_only = corrected(trainer.build_pixel_model("mobilenet_v1", "imagenet", trainer.build_head(1024, 3, 1e-3)))
    assert corrected(trainer.build_pixel_model("mobilenet_v1", "imagenet", loaded, 2)) == head_only
    in_memory = corrected(trainer.build_pixel_model("mobilenet_v1", "imagenet", top, 2))
    assert head_only - in_memory == {"conv_dw_12_bn", "conv_pw_12_bn", "conv_dw_13_bn", "conv_pw_13_bn"}
