"""`retrain predict` on hostile input without a model run: huge files are
refused from their size, before a byte is read (issue 17)."""

import argparse
import os

import pytest

from components import image_io
from conftest import png_bytes
from pipeline import predict


def _run(capsys, *argv):
    parser = argparse.ArgumentParser(prog="retrain")
    handlers = predict.register(parser.add_subparsers(dest="command", required=True))
    code = handlers["predict"](parser.parse_args(["predict", *map(str, argv)]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def test_huge_model_file_refused_unread(tmp_path, capsys):
    model = tmp_path / "model.tflite"
    model.write_bytes(b"\0\0\0\0TFL3")
    os.truncate(model, 4 * 1024**3)  # sparse: no disk used
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(0))
    code, out, err = _run(capsys, model, image)
    assert code == 2 and out == ""
    assert err == [f"retrain: error: {model} is not a TFLite model (over 2 GiB, the flatbuffer limit)"]


def test_huge_image_refused_unread(tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_bytes(0))
    os.truncate(huge, 4 * 1024**3)
    with pytest.raises(image_io.ImageRejected, match="over the limit of 50000000"):
        predict.load_pixels(str(huge), 224, image_io.DEFAULT_MAX_PIXELS)
    with pytest.raises(image_io.ImageRejected, match="over the limit of 100 "):
        predict.load_pixels(str(tmp_path / "huge.png"), 224, image_io.DEFAULT_MAX_PIXELS, 100)
