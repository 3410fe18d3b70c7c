"""Pipeline throughput vs. raw backbone inference, measured in one process.

    python -m benchmarks.pipeline_throughput --images 1000 [--backbone mobilenet_v1]
        [--workdir DIR] [--output results.json] [--batch-size 32]

1. Builds an N-image dataset (<dir>/<label>/<file>.png) from the emoji dataset,
   round-robin across classes; beyond the distinct originals it derives extra images
   (mirrored/shifted copies, distinct bytes *and* pixels) and says how many.
2. Raw inference: decode+resize all N once (untimed), then times extractor(batch)
   (direct call, after one warm-up batch); also times decode+resize+inference.
3. Runs the whole local pipeline on the same images and compares the feature
   step's (BottleneckGen's) images/s with both raw figures.
4. Prints a table and writes it, with machine facts, as JSON to --output.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import pathlib
import platform
import shutil
import tempfile
import time

import tensorflow as tf
from PIL import Image, ImageChops, ImageOps

from components import backbones, preprocessing
from pipeline import datasets, local_runner
from pipeline.config import PipelineConfig

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "pipeline_throughput.json"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _variant(img: Image.Image, k: int) -> Image.Image:
    """Pass k >= 1: mirrored on odd passes, shifted right by 2*(k//2) px (wrapping)."""
    img = ImageOps.mirror(img) if k % 2 else img
    return ImageChops.offset(img, 2 * (k // 2), 0)


def build_dataset(src: pathlib.Path, dest: pathlib.Path, n: int) -> dict:
    """Writes n distinct images to dest/<label>/; returns counts (original, derived)."""
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    files = {c: sorted((src / c).glob("*.png")) for c in classes}
    order = [(c, files[c][i]) for i in range(max(map(len, files.values())))
             for c in classes if i < len(files[c])]
    seen_bytes, seen_pixels, counts = set(), set(), {"original": 0, "derived": 0}
    for k in range(64):
        for label, path in order:
            if sum(counts.values()) >= n:
                return counts
            raw = path.read_bytes()
            img = Image.open(io.BytesIO(raw))
            data = raw
            if k:
                img = _variant(img, k)
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                data = buf.getvalue()
            px, h = _sha(img.tobytes()), _sha(data)
            if h in seen_bytes or (k and px in seen_pixels):
                continue  # the pipeline would drop it as a duplicate
            seen_bytes.add(h)
            seen_pixels.add(px)
            (dest / label).mkdir(parents=True, exist_ok=True)
            (dest / label / (path.stem + (f"_v{k}" if k else "") + ".png")).write_bytes(data)
            counts["derived" if k else "original"] += 1
    raise RuntimeError(f"could not derive {n} distinct images from {src}")


def raw_inference(images: pathlib.Path, backbone: str, batch_size: int) -> dict:
    """images/s of extractor(batch) alone and of decode+resize+extractor(batch), each
    compiled with tf.function (eager Keras calls run at about half the speed: the
    reference must be the fastest plain TF a user could write)."""
    size = backbones.get_spec(backbone).input_size
    blobs = tf.constant([p.read_bytes() for p in sorted(images.glob("*/*.png"))])
    n = int(blobs.shape[0])
    extractor = backbones.build_feature_extractor(backbone, "imagenet")
    infer = tf.function(lambda x: extractor(x, training=False))
    decode_infer = tf.function(lambda b: extractor(preprocessing.decode_and_resize(b, size), training=False))
    pixels = preprocessing.decode_and_resize(blobs, size)  # untimed
    batches = [pixels[i:i + batch_size] for i in range(0, n, batch_size)]
    infer(batches[0]).numpy()  # warm-up (tracing)
    t0 = time.perf_counter()
    for b in batches:
        infer(b).numpy()
    infer_s = time.perf_counter() - t0
    del pixels, batches
    decode_infer(blobs[:batch_size]).numpy()
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        decode_infer(blobs[i:i + batch_size]).numpy()
    full_s = time.perf_counter() - t0
    return {"images": n, "batch_size": batch_size,
            "inference_seconds": round(infer_s, 2), "inference_images_per_s": round(n / infer_s, 2),
            "decode_inference_seconds": round(full_s, 2),
            "decode_inference_images_per_s": round(n / full_s, 2)}


def write_result(result: dict, output: str) -> pathlib.Path:
    """Writes a benchmark's result as indented JSON at `output` (folders made)."""
    out = pathlib.Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def machine_facts() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": cpu,
            "tensorflow": tf.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, required=True, help="number of images N")
    ap.add_argument("--backbone", default="mobilenet_v1")
    ap.add_argument("--workdir", help="keep dataset and pipeline output here (default: temp dir)")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    backbones.fetch_weights(args.backbone)
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="throughput-"))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    images, workdir = root / f"images-{stamp}", root / f"pipeline-{stamp}"
    try:
        counts = build_dataset(datasets.emoji_dataset(), images, args.images)
        if counts["derived"]:
            print(f"note: only {counts['original']} distinct originals; derived "
                  f"{counts['derived']} extra images (mirrored/shifted copies)")
        raw = raw_inference(images, args.backbone, args.batch_size)
        summary = local_runner.run(PipelineConfig(
            images=str(images), workdir=str(workdir), backbone=args.backbone,
            weights="imagenet", min_accuracy=0.0, min_images_per_class=1))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    seconds, examples = summary["seconds"], summary["examples"]
    n_examples = examples.get("train", 0) + examples.get("eval", 0)
    # The backbone runs in BottleneckGen (Transform only builds the serving graph).
    transform_ips = n_examples / seconds["BottleneckGen"]
    rows = [
        ("feature step images/s vs raw inference", transform_ips, raw["inference_images_per_s"]),
        ("feature step images/s vs decode+resize+inference", transform_ips,
         raw["decode_inference_images_per_s"]),
    ]
    result = {
        "args": vars(args), "dataset": {**counts, "requested": args.images},
        "raw": raw, "pipeline": {
            "examples": examples, "seconds": seconds, "total_seconds": round(sum(seconds.values()), 2),
            "transform_images_per_s": round(transform_ips, 2), "accuracy": summary["accuracy"],
            "states": summary["states"], "skipped_files": summary["skipped_files"]},
        "comparison": [{"figure": f, "ours": round(o, 2), "reference": round(r, 2),
                        "ratio": round(o / r, 4)} for f, o, r in rows],
        "machine": machine_facts(), "wall_seconds": round(time.perf_counter() - start, 1),
    }
    print_table(result)
    out = write_result(result, args.output)
    print(f"wrote {out}")
    return result


def print_table(r: dict) -> None:
    p, m, d = r["pipeline"], r["machine"], r["dataset"]
    print(f"\n{r['args']['backbone']}, {d['original'] + d['derived']} images "
          f"({d['derived']} derived), batch {r['raw']['batch_size']}; "
          f"{m['nproc']} x {m['cpu_model']}, TF {m['tensorflow']}")
    print(f"{'figure':<48}{'ours':>10}{'reference':>11}{'ratio':>8}")
    for c in r["comparison"]:
        print(f"{c['figure']:<48}{c['ours']:>10.2f}{c['reference']:>11.2f}{c['ratio']:>8.3f}")
    print(f"\nexamples: {p['examples']}, eval accuracy: {p['accuracy']}")
    print("component seconds:")
    for name, s in p["seconds"].items():
        print(f"  {name:<36}{s:>8.2f}")
    print(f"  {'total (sum)':<36}{p['total_seconds']:>8.2f}\nwall seconds: {r['wall_seconds']}")


if __name__ == "__main__":
    main()
