"""Transform's preprocessing_fn: decoding, resizing, backbone features."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from components import backbones, image_io, preprocessing
from components.backbones import weights as backbone_weights


def _encode(arr, fmt, mode=None):
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, fmt)
    return buf.getvalue()


def test_decode_rgb_matches_pillow_including_alpha():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (12, 9, 4), dtype=np.uint8)
    png = _encode(rgba, "PNG", "RGBA")
    ours = preprocessing.decode_rgb(tf.constant(png)).numpy()
    pillow = np.asarray(image_io.to_rgb(Image.open(io.BytesIO(png))), np.float32)
    assert ours.shape == (12, 9, 3)
    assert np.abs(ours - pillow).max() <= 1.0  # float vs Pillow's integer compositing


def test_decode_rgb_gif_first_frame_and_grey():
    frames = [Image.new("RGB", (8, 6), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    gif = preprocessing.decode_rgb(tf.constant(buf.getvalue())).numpy()
    assert gif.shape == (6, 8, 3) and tuple(gif[0, 0]) == (255, 0, 0)
    grey = preprocessing.decode_rgb(tf.constant(_encode(np.full((4, 4), 77, np.uint8), "PNG", "L")))
    assert tuple(grey.numpy()[0, 0]) == (77, 77, 77)


def test_decode_and_resize_shapes_and_range():
    imgs = [_encode(np.full((h, w, 3), 200, np.uint8), "PNG") for h, w in [(30, 50), (300, 20)]]
    out = preprocessing.decode_and_resize(tf.constant(imgs), 224).numpy()
    assert out.shape == (2, 224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 200.0, atol=1e-3)


def test_transform_outputs_backbone_features(tiny_transform):
    _, raw, transformed, _ = tiny_transform
    spec = backbones.get_spec("mobilenet_v1")
    assert len(transformed) == len(raw)
    feats = np.stack([t["features"] for t in transformed])
    assert feats.shape == (len(raw), spec.feature_dim)
    # Same numbers as running the backbone directly on the same pixels (rows
    # come back from Beam in any order: match each to its nearest direct row).
    pixels = preprocessing.decode_and_resize(tf.constant([r["image"] for r in raw]), spec.input_size)
    direct = backbones.build_feature_extractor("mobilenet_v1", "imagenet")(pixels).numpy()
    dist = np.abs(feats[:, None, :] - direct[None, :, :]).max(-1)
    match = dist.argmin(1)
    assert sorted(match) == list(range(len(raw)))
    assert dist.min(1).max() < 1e-4
    assert [int(t["label"]) for t in transformed] == [raw[j]["label"] for j in match]
    assert np.std(feats, axis=0).mean() > 0  # images differ -> features differ


def test_shared_extractor_follows_a_rewritten_weights_file(tmp_path, imagenet_weights):
    path = tmp_path / "weights.h5"
    path.write_bytes(imagenet_weights.read_bytes())
    x = tf.random.stateless_uniform([1, 224, 224, 3], [1, 2], 0.0, 255.0)
    first = preprocessing.shared_extractor("mobilenet_v1", str(path))
    assert preprocessing.shared_extractor("mobilenet_v1", str(path)) is first  # built once
    before = first(x).numpy()
    # rewrite the file in place: the last pointwise conv's kernel halved
    app = backbone_weights.application_with_weights(backbones.get_spec("mobilenet_v1"), str(path), need_top=False)
    kernel = app.get_layer("conv_pw_13").kernel
    kernel.assign(kernel * 0.5)
    app.save_weights(str(path))
    second = preprocessing.shared_extractor("mobilenet_v1", str(path))
    assert second is not first
    after = second(x).numpy()
    assert not np.allclose(after, before)
    np.testing.assert_array_equal(
        after, backbones.build_feature_extractor("mobilenet_v1", str(path))(x).numpy())


def test_the_shared_extractor_survives_tfx_importing_preprocessing_fn(tmp_path, imagenet_weights):
    """TFX's Transform imports preprocessing_fn through import_func_from_module, which
    reloads an already imported module: BottleneckGen's backbone (built before, in the
    same process) must still be the one Transform's traces get."""
    from tfx.utils import import_utils
    path = tmp_path / "weights.h5"
    path.write_bytes(imagenet_weights.read_bytes())
    built = preprocessing.shared_extractor("mobilenet_v1", str(path))
    import_utils.import_func_from_module("components.preprocessing", "preprocessing_fn")  # reloads
    assert preprocessing.shared_extractor("mobilenet_v1", str(path)) is built


def test_preprocessing_fn_refuses_an_unreadable_config():
    """custom_config is TransformSettings: a missing key is an error, not "imagenet"."""
    import pytest

    from components.settings import SettingsError
    with pytest.raises(SettingsError, match="TransformSettings: missing weights"):
        preprocessing.preprocessing_fn({}, {"backbone": "mobilenet_v1"})
