"""`retrain predict`: labels from the embedded metadata, ingestion-style decoding."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from components import trainer
from components.tflite import convert, metadata
from pipeline import predict
from conftest import head_settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def model_file(tiny_transform, tmp_path_factory):
    """float32 .tflite with metadata: MobileNet v1 ImageNet + a head trained on 12 emoji."""
    _, _, transformed, labels = tiny_transform
    x = np.stack([t["features"] for t in transformed]).astype(np.float32)
    y = np.array([int(t["label"]) for t in transformed])
    head, _ = trainer.train_head(x, y, x, y, len(labels), head_settings(epochs=60, learning_rate=0.01))
    data = convert.convert(trainer.build_pixel_model("mobilenet_v1", "imagenet", head), "float32")
    data = metadata.add_metadata(data, labels, name="test", description="test model")
    path = tmp_path_factory.mktemp("predict") / "model.tflite"
    path.write_bytes(data)
    return path, labels


def _run(argv):
    parser = argparse.ArgumentParser(prog="retrain")
    handlers = predict.register(parser.add_subparsers(dest="command", required=True))
    assert set(handlers) == {"predict"}
    args = parser.parse_args(["predict"] + [str(a) for a in argv])
    return handlers["predict"](args)


def test_prints_the_trained_class(model_file, emoji_root, capsys, tmp_path):
    path, labels = model_file
    images = [sorted((emoji_root / name).iterdir())[0] for name in labels]
    assert _run([path, *images, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * len(labels)
    for i, name in enumerate(labels):
        assert lines[3 * i] == str(images[i])
        top_label, top_prob = lines[3 * i + 1].split()
        assert top_label == name and 0.5 < float(top_prob) <= 1.0

    assert _run([path, images[1], "--json", "--top-k", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["labels"] == labels
    top = out["predictions"][0]["top_k"]
    assert [t["label"] for t in top][0] == labels[1] and len(top) == len(labels)  # k capped
    assert abs(sum(t["probability"] for t in top) - 1.0) < 1e-4


def test_reencoded_image_gives_the_same_answer(model_file, emoji_root, capsys, tmp_path):
    """A palette GIF of a trained image goes through ingestion's re-encoding path."""
    path, labels = model_file
    src = sorted((emoji_root / labels[2]).iterdir())[0]
    gif = tmp_path / "same.gif"
    Image.open(src).convert("RGBA").save(gif)
    assert _run([path, gif, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["top_k"][0]["label"] == labels[2]


def test_bad_input_exits_2_with_one_line(model_file, tmp_path, capsys):
    path, _ = model_file
    good = tmp_path / "ok.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (tmp_path / "notes.tflite").write_text("hello")
    bare = tmp_path / "bare.tflite"  # a TFLite model without metadata
    bare.write_bytes(_bare_model())
    huge = tmp_path / "huge.png"  # issue 17: refused from its size, never read
    huge.write_bytes(good.read_bytes())
    os.truncate(huge, 4 * 1024**3)  # sparse: no disk used
    cases = [
        ([tmp_path / "missing.tflite", good], "model file not found"),
        ([tmp_path / "notes.tflite", good], "is not a TFLite model"),
        ([bare, good], "has no usable label metadata"),
        ([path, tmp_path / "missing.png"], "image file not found"),
        ([path, good, tmp_path / "broken.png"], "cannot use image"),
        ([path, good, huge], f"cannot use image {huge}: file is {4 * 1024**3} bytes, over the limit"),
        ([path, good, "--top-k", "0"], "--top-k must be >= 1"),
    ]
    for argv, message in cases:
        assert _run(argv) == 2, message
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("retrain: error: ") and message in lines[0], lines


def _bare_model() -> bytes:
    import tf_keras
    inputs = tf_keras.Input([8, 8, 3], batch_size=1)
    outputs = tf_keras.layers.Dense(2, activation="softmax")(tf_keras.layers.GlobalAveragePooling2D()(inputs))
    return convert.convert(tf_keras.Model(inputs, outputs), "float32")


def test_standalone_process_stderr_is_one_line(tmp_path):
    (tmp_path / "notes.tflite").write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "pipeline.predict", str(tmp_path / "notes.tflite"), "x.png"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"retrain: error: {tmp_path / 'notes.tflite'} is not a TFLite model"]


# Packages `retrain predict` must not load (tfx* includes tfx_bsl, which
# tensorflow_transform brings along): the TFLite interpreter is all it needs.
HEAVY = ("tfx", "tensorflow_transform", "apache_beam")
_LOADED = "sorted({m.split('.')[0] for m in sys.modules if m.startswith(%r)})" % (HEAVY,)


def test_predict_loads_no_tfx_transform_or_beam(model_file, emoji_root):
    """The whole `retrain predict` path in a fresh interpreter: the runtime and the
    command's module, then a prediction through the CLI; the component module
    (importing TFX) shows that the check sees them."""
    path, labels = model_file
    image = sorted((emoji_root / labels[0]).iterdir())[0]
    code = "\n".join([
        "import json, sys",
        "import components.tflite.runtime, pipeline.predict",
        f"imported = {_LOADED}",
        "from pipeline import cli",
        f"code = cli.main(['predict', {str(path)!r}, {str(image)!r}, '--json'])",
        f"predicted = {_LOADED}",
        "import components.tflite.component",
        f"print(json.dumps({{'code': code, 'imported': imported, 'predicted': predicted, 'component': {_LOADED}}}))",
    ])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *out, last = proc.stdout.splitlines()
    found = json.loads(last)
    assert found["code"] == 0 and json.loads(out[-1])["predictions"][0]["top_k"][0]["label"] == labels[0]
    assert found["imported"] == [] and found["predicted"] == [], found
    assert "tfx" in found["component"], found
