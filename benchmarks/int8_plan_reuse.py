"""int8 plan reuse on a rerun with +10 % images: agreement and seconds, reused vs fresh.

    python -m benchmarks.int8_plan_reuse [--backbones mobilenet_v1,efficientnet_lite0]
        [--images DIR] [--train-per-class 40] [--eval-per-class 20] [--calibration 100]
        [--added 0.1] [--seeds 3] [--threads 2] [--output results.json]

A scheduled rerun adds a few images.  TFLiteExport picks its calibration images by
content (components/tflite/convert.py: calibration_images, correction_images), so
most picks stay, and the backbone's int8 bias-correction plan measured on the first
run is reused when its images overlap the rerun's by quant_cache.MIN_OVERLAP.  Per
backbone and seed:

1. Data: the ``--images`` folder (default: the demo emoji set), the first
   ``train-per-class`` images of each class (sorted names) are the rerun's train
   split A+; a seeded random ``added`` share of A+ is what the rerun added, the rest
   is the first run's A; the next ``eval-per-class`` images are the eval split.
   Train splits are written as raw Examples (image + content_sha256, as
   ImageExampleGen writes them) so the pipeline's own calibration_images reads them.
2. The head is trained on A+'s features (the rerun's model; the plan does not
   depend on the head); the reference is the float Keras pixel model on eval.
3. First run: int8 of A's calibration picks through a fresh plan cache (measures and
   saves the plan).  Rerun: int8 of A+'s picks through the same cache (reuses it
   when the overlap is enough).  Fresh: int8 of A+'s picks without a cache (what the
   rerun cost before).  Each: eval accuracy, top-1 agreement, flips, and the
   seconds of bias correction and of the converter.
4. Prints a Markdown table, writes it with machine facts as JSON to --output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.tflite_variants import (_agreement, _dataset, _decode, backbones_with_weights,  # noqa: E402
                                        write_json)
from components import backbones, contracts, trainer  # noqa: E402
from components.backbones import quant_cache  # noqa: E402
from components.image_decode import decode_batch  # noqa: E402
from components.tflite import convert, variants as tflite_variants  # noqa: E402
from components.tflite.runtime import Classifier  # noqa: E402
from pipeline import datasets  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "int8_plan_reuse.json"


def _write_examples(path: pathlib.Path, files) -> list:
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for f in files:
            data = f.read_bytes()
            w.write(tf.train.Example(features=tf.train.Features(feature={
                contracts.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                contracts.CONTENT_SHA256_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[hashlib.sha256(data).hexdigest().encode()])),
            })).SerializeToString())
    return [str(path)]


def _calibration(files, count: int, size: int):
    """(decoded picks [N, H, W, 3], seconds of calibration_images)."""
    start = time.perf_counter()
    picked = convert.calibration_images(files, count)
    seconds = time.perf_counter() - start
    return np.concatenate([decode_batch(picked[i:i + 32], size).numpy() for i in range(0, len(picked), 32)]), seconds


def _int8(pixel_model, calibration, cache, x_eval, y_eval, reference, threads) -> dict:
    timings = {}
    data = convert.convert(pixel_model, "int8", lambda: iter(calibration), timings=timings, plan_cache=cache)
    probs = Classifier(data, num_threads=threads).predict(x_eval)
    return {**{k: round(v, 2) for k, v in timings.items()}, **_agreement(probs, reference, y_eval)}


def bench(name: str, data, args) -> list:
    classes, train, evals = data
    spec = backbones.get_spec(name)
    fingerprint = backbones.weights_fingerprint(name, "imagenet")
    extractor = backbones.build_feature_extractor(name, "imagenet")
    files = [f for f, _ in train]
    f_train = np.concatenate([extractor(_decode(files[i:i + 64], spec.input_size)).numpy()
                              for i in range(0, len(files), 64)])
    x_eval = _decode([f for f, _ in evals], spec.input_size)
    y_train, y_eval = np.array([label for _, label in train]), np.array([label for _, label in evals])
    head, _ = trainer.train_head(
        f_train, y_train, extractor(x_eval).numpy(), y_eval, len(classes),
        PipelineConfig(images="", workdir="", backbone=name, weights="imagenet",
                       label_names=tuple(classes)).trainer_settings())  # the run defaults
    pixel_model = trainer.build_pixel_model(name, "imagenet", head)  # weights read here, before the cache moves
    reference = np.concatenate([pixel_model(x_eval[i:i + 32]).numpy() for i in range(0, len(x_eval), 32)])
    rows, outer_cache = [], os.environ.get("TFX_RETRAIN_CACHE")
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory(prefix="plan-reuse-") as tmp:
            os.environ["TFX_RETRAIN_CACHE"] = tmp  # a fresh plan cache per seed
            folder = pathlib.Path(tmp)
            added = set(np.random.default_rng(seed).permutation(len(files))[:round(args.added * len(files))].tolist())
            first_files = _write_examples(folder / "a.gz", [f for i, f in enumerate(files) if i not in added])
            rerun_files = _write_examples(folder / "a_plus.gz", files)
            cal_a, _ = _calibration(first_files, args.calibration, spec.input_size)
            cal_b, pick_seconds = _calibration(rerun_files, args.calibration, spec.input_size)
            cache = convert.PlanCache(name, fingerprint)
            first = _int8(pixel_model, cal_a, cache, x_eval, y_eval, reference, args.threads)
            rerun = _int8(pixel_model, cal_b, cache, x_eval, y_eval, reference, args.threads)
            entries = len(list((folder / "weights" / "quantization").iterdir()))
            fresh = _int8(pixel_model, cal_b, None, x_eval, y_eval, reference, args.threads)
        row = {"backbone": name, "seed": seed, "train_first": len(files) - len(added), "train_rerun": len(files),
               "calibration_overlap": len(set(map(_key, cal_a)) & set(map(_key, cal_b))) / len(cal_b),
               "plan_overlap": round(quant_cache.overlap(frozenset(convert.correction_images(cal_a)),
                                                         frozenset(convert.correction_images(cal_b))), 3),
               "reused": entries == 1, "calibration_images_seconds": round(pick_seconds, 2),
               "first": first, "rerun": rerun, "fresh": fresh}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if outer_cache is None:
        os.environ.pop("TFX_RETRAIN_CACHE", None)
    else:
        os.environ["TFX_RETRAIN_CACHE"] = outer_cache
    return rows


def _key(pixels) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, np.float32).tobytes()).hexdigest()


def markdown(rows) -> str:
    lines = ["| backbone | seed | train first -> rerun | picks kept (calibration / plan) | plan | "
             "agreement rerun (fresh) | accuracy rerun (fresh; float) | flips rerun (fresh) | "
             "bias corr. s rerun (fresh) | converter s rerun (fresh) |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, b = r["rerun"], r["fresh"]
        lines.append(
            f"| {r['backbone']} | {r['seed']} | {r['train_first']} -> {r['train_rerun']} | "
            f"{r['calibration_overlap']:.2f} / {r['plan_overlap']:.2f} | {'reused' if r['reused'] else 'measured'} | "
            f"{a['parity']:.3f} ({b['parity']:.3f}) | {a['accuracy']:.3f} ({b['accuracy']:.3f}; "
            f"{a['reference_accuracy']:.3f}) | {a['flips']} ({b['flips']}) | "
            f"{a['bias_correction']:.2f} ({b['bias_correction']:.2f}) | {a['converter']:.1f} ({b['converter']:.1f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default="mobilenet_v1")
    p.add_argument("--images", default="", help="dataset folder (<class>/<image>); default: the demo emoji set")
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--eval-per-class", type=int, default=20)
    p.add_argument("--calibration", type=int, default=tflite_variants.DEFAULT_CALIBRATION_IMAGES)
    p.add_argument("--added", type=float, default=0.1, help="share of the rerun's train images that are new")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = p.parse_args(argv)
    names = backbones_with_weights(p, args.backbones)
    if not 0 < args.added < 1 or args.seeds < 1 or args.calibration < 1:
        p.error("--added must be in (0, 1), --seeds and --calibration >= 1")
    root = pathlib.Path(args.images) if args.images else pathlib.Path(datasets.emoji_dataset())
    if not root.is_dir():
        p.error(f"--images: {root} is not a folder")
    data = _dataset(root, args.train_per_class, args.eval_per_class)
    rows = []
    for name in names:
        rows += bench(name, data, args)
    table = markdown(rows)
    print(table)
    write_json(args.output, {"rows": rows, "table": table, "settings": vars(args),
                             "dataset": root.name, "load_average": os.getloadavg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
