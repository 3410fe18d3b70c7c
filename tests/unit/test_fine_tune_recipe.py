"""The experiment knobs of fine_tune.Recipe for N > 0 (no weights needed): the cut
activation's shift and mirror, mixup, and which of the top blocks' weights train."""

import numpy as np
import pytest
import tensorflow as tf

from components import fine_tune

CUT = (5, 6, 3)


def _maps(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *CUT)).astype(np.float32)


def test_the_default_recipe_leaves_the_activation_alone():
    x = tf.constant(_maps(4).reshape(4, -1))
    assert fine_tune.augment_activation(x, CUT, fine_tune.DEFAULT_RECIPE) is x


@pytest.mark.parametrize("shift", [1, 2])
def test_shift_moves_each_map_by_at_most_shift_cells_with_mirrored_borders(shift):
    tf.random.set_seed(0)
    maps = _maps(64)
    out = fine_tune.augment_activation(tf.constant(maps.reshape(64, -1)), CUT,
                                       fine_tune.Recipe(shift=shift)).numpy().reshape(64, *CUT)
    h, w, _ = CUT
    seen = set()
    for m, o in zip(maps, out):
        padded = np.pad(m, [(shift, shift), (shift, shift), (0, 0)], mode="symmetric")
        offsets = [(dy, dx) for dy in range(2 * shift + 1) for dx in range(2 * shift + 1)
                   if np.array_equal(padded[dy:dy + h, dx:dx + w], o)]
        assert offsets, "not a shifted copy of its own map"
        seen.add(offsets[0])
    assert len(seen) > 3  # drawn per image, not once per batch


def test_flip_mirrors_some_maps_left_right_and_keeps_the_others():
    tf.random.set_seed(1)
    maps = _maps(32, seed=1)
    out = fine_tune.augment_activation(tf.constant(maps.reshape(32, -1)), CUT,
                                       fine_tune.Recipe(flip=True)).numpy().reshape(32, *CUT)
    mirrored = [np.array_equal(o, m[:, ::-1]) for m, o in zip(maps, out)]
    kept = [np.array_equal(o, m) for m, o in zip(maps, out)]
    assert all(a or b for a, b in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_mixup_mixes_each_row_with_one_other_by_the_same_weight():
    tf.random.set_seed(2)
    x = tf.constant(_maps(16, seed=2).reshape(16, -1))
    mixed, lam, order = fine_tune.mixup(x, 0.2)
    lam, order = float(lam), order.numpy()
    assert 0.0 <= lam <= 1.0 and sorted(order) == list(range(16))
    np.testing.assert_allclose(mixed.numpy(), lam * x.numpy() + (1 - lam) * x.numpy()[order], rtol=1e-6, atol=1e-6)


def test_bad_recipes_are_one_line_errors():
    with pytest.raises(ValueError, match="tune must be one of all, bn, bn_dw"):
        fine_tune.Recipe(tune="pointwise")
    with pytest.raises(ValueError, match="shift and mixup must be >= 0"):
        fine_tune.Recipe(shift=-1)


@pytest.mark.parametrize("tune, trains", [
    ("all", {"conv_dw", "conv_pw", "bn", "head"}),
    ("bn_dw", {"conv_dw", "bn", "head"}),
    ("bn", {"bn", "head"}),
])
def test_tune_chooses_which_top_block_weights_train(tune, trains):
    top = fine_tune.build_top("mobilenet_v1", "random", 2, 3, fine_tune.Recipe(tune=tune))

    def kind(name):
        layer = name.split("/")[0]
        return "bn" if layer.endswith("_bn") else "head" if layer == "head" else layer.rsplit("_", 1)[0]
    assert {kind(v.name) for v in top.trainable_weights} == trains
    assert len(top.weights) == len(fine_tune.build_top("mobilenet_v1", "random", 2, 3).weights)
