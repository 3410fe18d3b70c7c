"""ImageExampleGen's per-image validation cost on photo-sized images.

    python -m benchmarks.ingest_check [--side 1920] [--repeat 10]
        [--output benchmarks/results/ingest_check.json]

Every run validates every image (components/image_example_gen.py): Pillow checks
the header and decodes it (image_io.decode), then TF's own decoders must read it
(`image_decode.decodes`, as Transform and BottleneckGen will). The emoji benchmarks have
5 KB images, where none of this shows; photos of a few megapixels make it the
cost of a rerun. Builds a JPEG and a PNG of `side` x 2/3 `side` pixels from
scikit-learn's offline sample photo (load_sample_image), then times, per image:
Pillow's check, the TF check ImageExampleGen runs (`image_decode.decodes`:
the decoders alone) and the full float `decode_rgb` it ran before.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import time
from typing import Callable, Dict

import tensorflow as tf
from PIL import Image

from benchmarks.pipeline_throughput import machine_facts, write_result
from components import image_decode, image_io

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "ingest_check.json"


def _photo(side: int, fmt: str) -> bytes:
    from sklearn.datasets import load_sample_image  # ships with scikit-learn: offline
    img = Image.fromarray(load_sample_image("china.jpg")).resize((side, side * 2 // 3), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: traces the TF functions
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return round((time.perf_counter() - t0) / repeat * 1000, 2)


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=1920, help="image width; height is 2/3 of it")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = ap.parse_args(argv)
    full_decode = tf.function(lambda b: tf.shape(image_decode.decode_rgb(b)), autograph=False,
                              input_signature=[tf.TensorSpec([], tf.string)])
    rows = {}
    for fmt in ("JPEG", "PNG"):
        data = _photo(args.side, fmt)
        assert image_decode.decodes(data)
        rows[fmt] = {
            "bytes": len(data),
            "pillow_ms": _ms(lambda: image_io.decode(data, max_pixels=10 * args.side ** 2), args.repeat),
            "tf_check_ms": _ms(lambda: image_decode.decodes(data), args.repeat),
            "tf_full_decode_ms": _ms(lambda: full_decode(tf.constant(data)), args.repeat),
        }
        r = rows[fmt]
        print(f"{fmt} {args.side}x{args.side * 2 // 3} ({r['bytes']} bytes): Pillow {r['pillow_ms']} ms, "
              f"TF check {r['tf_check_ms']} ms (full float decode {r['tf_full_decode_ms']} ms)")
    result = {"benchmark": "ingest_check", "side": args.side, "repeat": args.repeat,
              "machine": machine_facts(), "images": rows}
    print(f"wrote {write_result(result, args.output)}")
    return result


if __name__ == "__main__":
    main()
