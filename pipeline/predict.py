"""`retrain predict MODEL.tflite IMAGE...`: top-k labels and probabilities.

The labels and the input normalisation come from the model's embedded TFLite
metadata (written by components/tflite/metadata.py), so a pushed ``.tflite`` file
is all that is needed.  Images are decoded the way ingestion and Transform do it:
``image_io.decode`` (size limit, EXIF rotation, transparency on white; bytes
TF's decoder would read differently are re-encoded), then
``image_decode.decode_and_resize`` to the model's input size.  It loads the
TFLite interpreter, TensorFlow's image decoder and tflite-support's metadata
reader, never TFX, tf.Transform or Beam (tests/integration/test_predict.py checks).

Wiring (pipeline/cli.py)::

    handlers.update(predict.register(subparsers))
    ...
    return handlers[args.command](args)

Exit codes: 0 done; 2 bad input (missing or unreadable model or image, model
without label metadata, bad option), with one line ``retrain: error: ...`` on
stderr and nothing on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Callable, Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_MAX_MODEL_BYTES = 2**31  # a TFLite flatbuffer cannot be larger: never read more


def register(subparsers) -> Dict[str, Callable[[argparse.Namespace], int]]:
    """Adds the ``predict`` subcommand; returns {command name: handler}."""
    p = subparsers.add_parser(
        "predict", help="classify images with a .tflite model (labels from its metadata)",
        description="Top-k labels and probabilities for each image, from a .tflite model "
                    "carrying TFLite metadata (e.g. serving/<N>/model.tflite).")
    p.add_argument("model", help="a .tflite file with image-classifier metadata")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP, WebP, TIFF)")
    p.add_argument("--top-k", type=int, default=3, help="labels to show per image (default 3)")
    p.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads (default 2)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse larger images (default: the ingestion limit, 50 MP)")
    p.add_argument("--max-file-bytes", type=int, default=None,
                   help="refuse larger image files, unread (default: the ingestion limit, 50 MB)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: {model, labels, predictions: [{image, top_k}]}")
    return {"predict": run}


def _fail(message: str) -> int:
    print(f"retrain: error: {message}", file=sys.stderr)
    return 2


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def load_pixels(path: str, size: int, max_pixels: int,
                max_file_bytes: Optional[int] = None) -> "object":
    """[size, size, 3] float32 RGB 0..255, decoded as ingestion + Transform do."""
    import tensorflow as tf

    from components import image_io
    from components.image_decode import decode_batch
    data = image_io.read_bytes(path, max_file_bytes or image_io.DEFAULT_MAX_FILE_BYTES)
    img = image_io.decode(data, max_pixels)
    try:
        return decode_batch([img.data], size).numpy()[0]
    except (tf.errors.InvalidArgumentError, tf.errors.OpError):
        if img.reencoded:
            raise
        # Pillow read it but TF's decoder does not: ingestion hands TF a PNG then.
        img = image_io.decode(data, max_pixels, keep_original=False)
        return decode_batch([img.data], size).numpy()[0]


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        return _fail(f"--top-k must be >= 1, got {args.top_k}")
    if args.threads < 1:
        return _fail(f"--threads must be >= 1, got {args.threads}")
    from components import image_io
    max_pixels = args.max_pixels or image_io.DEFAULT_MAX_PIXELS
    if not os.path.isfile(args.model):
        return _fail(f"model file not found: {args.model}")
    if os.stat(args.model).st_size > _MAX_MODEL_BYTES:
        return _fail(f"{args.model} is not a TFLite model (over 2 GiB, the flatbuffer limit)")
    with open(args.model, "rb") as f:
        model_bytes = f.read()
    if len(model_bytes) < 8 or model_bytes[4:8] != b"TFL3":
        return _fail(f"{args.model} is not a TFLite model")

    from components.tflite import metadata
    try:  # metadata and input shape first: no interpreter (and its logging) for bad input
        meta = metadata.read_metadata(model_bytes)
        shape = metadata.input_shape(model_bytes)
    except metadata.MetadataError as e:
        return _fail(f"{args.model} has no usable label metadata ({_one_line(e)}); "
                     "use a model pushed by `retrain run`")
    except Exception as e:  # a corrupt flatbuffer
        return _fail(f"cannot read {args.model}: {_one_line(e)}")
    labels: List[str] = list(meta.labels)
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or shape[1] != shape[2]:
        return _fail(f"{args.model}: expected a square [1, H, W, 3] image input, got {list(shape)}")

    pixels = []
    for path in args.images:
        if not os.path.isfile(path):
            return _fail(f"image file not found: {path}")
        try:
            pixels.append(load_pixels(path, int(shape[1]), max_pixels, args.max_file_bytes))
        except image_io.ImageRejected as e:
            return _fail(f"cannot use image {path}: {e}")
        except Exception as e:  # TF decoder errors, unreadable files
            return _fail(f"cannot decode image {path}: {_one_line(e)}")

    from components.tflite.runtime import Classifier
    try:
        classifier = Classifier(model_bytes, args.threads, meta.mean, meta.std)
    except (ValueError, RuntimeError) as e:
        return _fail(f"cannot load {args.model}: {_one_line(e)}")
    if len(labels) != classifier.num_classes:
        return _fail(f"{args.model}: {len(labels)} labels in its metadata for {classifier.num_classes} outputs")

    k = min(args.top_k, len(labels))
    predictions = []
    for path, px in zip(args.images, pixels):
        probs = classifier.predict_one(px)
        order = sorted(range(len(probs)), key=lambda i: (-float(probs[i]), i))[:k]
        predictions.append({"image": path, "top_k": [
            {"label": labels[i], "probability": round(float(probs[i]), 6)} for i in order]})

    if args.json:
        print(json.dumps({"model": args.model, "labels": labels, "predictions": predictions}))
    else:
        for p in predictions:
            print(p["image"])
            width_label = max(len(t["label"]) for t in p["top_k"])
            for t in p["top_k"]:
                print(f"  {t['label']:<{width_label}}  {t['probability']:.4f}")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry point: ``python -m pipeline.predict MODEL IMAGE...``."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(prog="retrain")
    handlers = register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict"] + list(sys.argv[1:] if argv is None else argv))
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
