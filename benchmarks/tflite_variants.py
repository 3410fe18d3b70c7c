"""TFLite variants per backbone: file size, latency, eval accuracy, parity.

    python -m benchmarks.tflite_variants [--backbones mobilenet_v1,efficientnet_lite0,...]
        [--variants float32,fp16,dynamic,int8] [--images DIR,DIR...] [--train-per-class 40]
        [--eval-per-class 20] [--runs 100] [--threads 2] [--calibration 100] [--output results.json]
        [--int8-experiments learned,equalized,no-bias-correction,full-calibrator,cal300,learned+cal50,...]
        [--calibration-ab ROUNDS]

For each backbone:

1. Weights: ImageNet when available offline (``weights_fingerprint`` succeeds),
   otherwise random weights, and then only size and latency are reported (accuracy
   and parity of a head on random features mean nothing).
2. Data (real weights only): each ``--images`` folder (``<class>/<image>``; default the
   demo emoji set), all classes, the first
   ``train-per-class`` images of each class (sorted names) to train the head and to
   calibrate int8 (``calibration`` of them, spread over all classes), the next
   ``eval-per-class`` to evaluate.  Features come from the
   Keras feature extractor (the same function Transform runs); the reference for
   parity is the Keras pixel model (backbone + head) in float32, which computes what
   the SavedModel's serving_default does (Transform graph + head).
3. Each variant is converted exactly as the pipeline does (components/tflite/,
   metadata included), then: file size; single-image latency in the TFLite
   interpreter (median of ``runs`` invokes after 5 warm-ups, ``threads`` threads, one
   fixed image; the minimum too, which is less sensitive to other load on the machine);
   eval accuracy; parity (top-1 agreement with the reference).
4. Where TFLiteExport's time goes: the feature step's seconds on the same images
   (decode + backbone, what BottleneckGen does), the reference (the float model on
   the eval images, standing in for the SavedModel pass), and per variant the bias
   correction, the converter (int8: calibration included) and parity (the
   interpreter over the eval images); ``export_ratio`` is their sum over the
   feature step's seconds.
   With ``--calibration-ab ROUNDS`` the int8 converter also runs alternately with
   the fast calibration and with TFLite's calibrator over every image
   (``convert.convert(fast_calibration=False)``), ROUNDS times each: medians, and
   whether the two files are the same bytes.
5. Prints Markdown tables and writes them, with machine facts, as JSON to --output.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.pipeline_throughput import machine_facts, write_result  # noqa: E402
from components import backbones, preprocessing, trainer  # noqa: E402
from components.tflite import convert, metadata, parity, variants as tflite_variants  # noqa: E402
from components.tflite.runtime import Classifier  # noqa: E402
from pipeline import datasets  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "tflite_variants.json"
CONFIDENT = parity.CONFIDENT  # float top-1 probability from which a prediction counts as confident
RANDOM_CALIBRATION = 32  # random weights: calibration only shapes the ranges, not reported accuracy


def _decode(files, size):
    out = []
    for i in range(0, len(files), 32):
        batch = [f.read_bytes() for f in files[i:i + 32]]
        out.append(preprocessing.decode_and_resize(tf.constant(batch), size).numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.float32)


def _dataset(root: pathlib.Path, train_per_class: int, eval_per_class: int):
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    train, evals = [], []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).iterdir() if p.is_file())
        train += [(f, i) for f in files[:train_per_class]]
        evals += [(f, i) for f in files[train_per_class:train_per_class + eval_per_class]]
    return classes, train, evals


def _latency_ms(classifier: Classifier, pixels: np.ndarray, runs: int):
    """(median, min) milliseconds of single-image inference (set input + invoke + read)."""
    for _ in range(5):
        classifier.predict_one(pixels)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        classifier.predict_one(pixels)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), min(times)


def bench_backbone(name: str, variants, data, args, dataset: str = "emoji-google") -> list:
    spec = backbones.get_spec(name)
    try:
        backbones.weights_fingerprint(name, "imagenet")
        weights = "imagenet"
    except backbones.BackboneWeightsError:
        weights = "random"
    classes, train, evals = data
    phases = {}
    if weights == "imagenet":
        extractor = backbones.build_feature_extractor(name, weights)
        extractor(np.zeros((1, spec.input_size, spec.input_size, 3), np.float32))  # built, traced
        start = time.perf_counter()
        x_train = _decode([f for f, _ in train], spec.input_size)
        x_eval = _decode([f for f, _ in evals], spec.input_size)
        y_train = np.array([label for _, label in train])
        y_eval = np.array([label for _, label in evals])
        f_train = np.concatenate([extractor(x_train[i:i + 64]).numpy() for i in range(0, len(x_train), 64)])
        f_eval = np.concatenate([extractor(x_eval[i:i + 64]).numpy() for i in range(0, len(x_eval), 64)])
        phases["feature_step"] = time.perf_counter() - start
        head, _ = trainer.train_head(
            f_train, y_train, f_eval, y_eval, len(classes),
            PipelineConfig(images="", workdir="", backbone=name, weights=weights,
                           label_names=tuple(classes)).trainer_settings())  # the run defaults
        # Spread over all classes (TFLiteExport takes a uniform sample by content key instead:
        # components.tflite.convert.calibration_images).
        n = min(args.calibration, len(x_train))
        calibration = x_train[np.linspace(0, len(x_train) - 1, n).round().astype(int)]
    else:
        x_train = _decode([f for f, _ in train[:RANDOM_CALIBRATION]], spec.input_size)
        x_eval, y_eval = None, None
        head = trainer.build_head(spec.feature_dim, len(classes), 1e-3)
        calibration = x_train
    pixel_model = trainer.build_pixel_model(name, weights, head)
    reference = None
    if x_eval is not None:
        start = time.perf_counter()
        reference = np.concatenate([pixel_model(x_eval[i:i + 32]).numpy() for i in range(0, len(x_eval), 32)])
        phases["reference"] = time.perf_counter() - start
    probe = calibration[0]
    rows = []
    for variant in variants:
        start = time.time()
        timings = {}
        data_bytes = convert.convert(pixel_model, variant, (lambda: iter(calibration)) if variant == "int8" else None,
                                     timings=timings)
        data_bytes = metadata.add_metadata(
            data_bytes, classes, name=f"{name} ({variant})",
            description=metadata.describe(name, variant, classes))
        convert_s = time.time() - start
        classifier = Classifier(data_bytes, num_threads=args.threads)
        phases[f"{variant}.bias_correction"] = timings.get("bias_correction", 0.0)
        phases[f"{variant}.converter"] = timings.get("converter", 0.0)
        if args.save_dir:
            folder = pathlib.Path(args.save_dir) / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / tflite_variants.FILE_NAMES[variant]).write_bytes(data_bytes)
        median_ms, min_ms = _latency_ms(classifier, probe, args.runs)
        row = {"backbone": name, "dataset": dataset, "weights": weights, "variant": variant, "bytes": len(data_bytes),
               "convert_seconds": round(convert_s, 1),
               "latency_ms": round(median_ms, 2), "latency_min_ms": round(min_ms, 2),
               "accuracy": None, "reference_accuracy": None, "parity": None, "eval_examples": 0}
        if reference is not None:
            start = time.perf_counter()
            probs = classifier.predict(x_eval)
            phases[f"{variant}.parity"] = time.perf_counter() - start
            row.update(max_abs_diff=float(np.abs(probs - reference).max()), **_agreement(probs, reference, y_eval))
        print(json.dumps(row), flush=True)
        rows.append(row)
    experiments = []
    if reference is not None and "int8" in variants:
        for experiment in [e for e in args.int8_experiments.split(",") if e]:
            experiments.append(_int8_experiment(pixel_model, experiment, calibration, x_train, x_eval, y_eval,
                                                reference, name, dataset, args))
    rows += experiments
    if args.calibration_ab and "int8" in variants:
        rows.append(_calibration_ab(pixel_model, calibration, args.calibration_ab, name, dataset))
    if "feature_step" in phases:
        export = sum(v for k, v in phases.items() if k != "feature_step")
        phase_row = {"backbone": name, "dataset": dataset, "phases": {k: round(v, 2) for k, v in phases.items()},
                     "export_seconds": round(export, 2),
                     "export_ratio": round(export / phases["feature_step"], 2),
                     "images": len(train) + len(evals), "calibration_images": len(calibration)}
        full = [r for r in experiments if r["experiment"] == "full-calibrator"]
        if full and "int8.converter" in phases:  # the same export with TFLite's calibrator over every image
            before = export - phases["int8.converter"] + full[0]["converter"]
            phase_row["export_ratio_full_calibrator"] = round(before / phases["feature_step"], 2)
        print(json.dumps(phase_row), flush=True)
        rows.append(phase_row)
    return rows


def _agreement(probs, reference, labels) -> dict:
    top, ref_top = probs.argmax(1), reference.argmax(1)
    tied = (probs == probs.max(1, keepdims=True)).sum(1) > 1  # uint8 outputs: equal top probabilities
    confident = reference.max(1) >= CONFIDENT
    return {"accuracy": float((top == labels).mean()), "reference_accuracy": float((ref_top == labels).mean()),
            "parity": float((top == ref_top).mean()), "flips": int((top != ref_top).sum()),
            "flips_tied": int(((top != ref_top) & tied).sum()),
            # The gate rule proposed in docs/tflite.md: agreement where the float model is confident.
            "confident": int(confident.sum()), "confident_flips": int(((top != ref_top) & confident).sum()),
            "mean_abs_diff": float(np.abs(probs - reference).mean()), "eval_examples": int(len(labels))}


EXPERIMENTS = {  # int8 conversion options measured against the default (agreement only)
    "default": {},
    "learned": {"learned_rounding": True},
    "no-bias-correction": {"bias_correction": False},
    "equalized": {"equalize": True},
    # TFLite's calibrator over every image (before components/tflite/calibration_ranges.py)
    "full-calibrator": {"fast_calibration": False},
}


def _int8_experiment(pixel_model, experiment, calibration, x_train, x_eval, y_eval, reference, name, dataset, args):
    """``experiment``: an EXPERIMENTS name, or calN (N calibration images), joined by +."""
    options, cal = {}, calibration
    for part in experiment.split("+"):
        if part.startswith("cal") and part[3:].isdigit():
            n = min(int(part[3:]), len(x_train))
            cal = x_train[np.linspace(0, len(x_train) - 1, n).round().astype(int)]
        else:
            options.update(EXPERIMENTS[part])
    timings = {}
    start = time.perf_counter()
    data = convert.convert(pixel_model, "int8", lambda: iter(cal), timings=timings, **options)
    seconds = time.perf_counter() - start
    probs = Classifier(data, num_threads=args.threads).predict(x_eval)
    row = {"backbone": name, "dataset": dataset, "experiment": experiment, "calibration_images": len(cal),
           "seconds": round(seconds, 1), **{k: round(v, 2) for k, v in timings.items()},
           **_agreement(probs, reference, y_eval)}
    print(json.dumps(row), flush=True)
    return row


def _calibration_ab(pixel_model, calibration, rounds: int, name: str, dataset: str) -> dict:
    """int8 converter seconds, fast calibration against TFLite's calibrator over every
    image, alternated ``rounds`` times (the machine's load drifts), and whether the
    two files are the same bytes."""
    seconds = {"fast": [], "full": []}
    files = {}
    for _ in range(rounds):
        for mode in ("fast", "full"):
            timings = {}
            files[mode] = convert.convert(pixel_model, "int8", lambda: iter(calibration), timings=timings,
                                          fast_calibration=mode == "fast")
            seconds[mode].append(round(timings["converter"], 2))
    row = {"backbone": name, "dataset": dataset, "calibration_ab": seconds,
           "median_fast": statistics.median(seconds["fast"]), "median_full": statistics.median(seconds["full"]),
           "identical_file": files["fast"] == files["full"], "calibration_images": len(calibration)}
    print(json.dumps(row), flush=True)
    return row


def _fmt(v, pattern):
    return "n/a" if v is None else pattern.format(v)


def markdown(rows) -> str:
    lines = ["| backbone | dataset | weights | variant | size (MB) | latency ms: median (min) | eval accuracy "
             "(float ref) | parity (top-1 agreement) | confident flips / confident |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "variant" not in r or "bytes" not in r:
            continue
        lines.append(
            f"| {r['backbone']} | {r.get('dataset', '')} | {r['weights']} | {r['variant']} | {r['bytes'] / 1e6:.2f} | "
            f"{r['latency_ms']:.1f} ({r.get('latency_min_ms', float('nan')):.1f}) | {_fmt(r['accuracy'], '{:.3f}')} ({_fmt(r['reference_accuracy'], '{:.3f}')}) | "
            f"{_fmt(r['parity'], '{:.3f}')} | {r.get('confident_flips', 'n/a')} / {r.get('confident', 'n/a')} |")
    experiments = [r for r in rows if "experiment" in r]
    if experiments:
        lines += ["", "| backbone | dataset | int8 experiment | calibration | seconds (converter) | "
                  "accuracy (float) | agreement | flips (tied) | confident flips / confident |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in experiments:
            lines.append(f"| {r['backbone']} | {r['dataset']} | {r['experiment']} | {r['calibration_images']} | "
                         f"{r['seconds']:.1f} ({r.get('converter', 0.0):.1f}) | {r['accuracy']:.3f} ({r['reference_accuracy']:.3f}) | "
                         f"{r['parity']:.3f} | {r['flips']} ({r['flips_tied']}) | "
                         f"{r['confident_flips']} / {r['confident']} |")
    ab_rows = [r for r in rows if "calibration_ab" in r]
    if ab_rows:
        lines += ["", "| backbone | dataset | int8 converter s, fast (median of alternated runs) | "
                  "TFLite's calibrator over every image | same file |", "|---|---|---:|---:|---|"]
        for r in ab_rows:
            lines.append(f"| {r['backbone']} | {r['dataset']} | {r['median_fast']:.1f} {r['calibration_ab']['fast']} | "
                         f"{r['median_full']:.1f} {r['calibration_ab']['full']} | {r['identical_file']} |")
    phase_rows = [r for r in rows if "phases" in r]
    if phase_rows:
        lines += ["", "| backbone | dataset | images | feature step s | export s (ratio) | phases s |",
                  "|---|---|---:|---:|---:|---|"]
        for r in phase_rows:
            detail = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items() if k != "feature_step")
            before = r.get("export_ratio_full_calibrator")
            detail += "" if before is None else f"; ratio with the full calibrator {before:.2f}"
            lines.append(f"| {r['backbone']} | {r['dataset']} | {r['images']} | {r['phases']['feature_step']:.1f} | "
                         f"{r['export_seconds']:.1f} ({r['export_ratio']:.2f}) | {detail} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default=",".join(backbones.BACKBONES))
    p.add_argument("--variants", default=",".join(tflite_variants.VARIANTS))
    p.add_argument("--images", default="", help="comma-separated dataset folders (<class>/<image>); "
                   "default: the demo emoji set")
    p.add_argument("--train-per-class", type=int, default=40)
    p.add_argument("--eval-per-class", type=int, default=20)
    p.add_argument("--calibration", type=int, default=tflite_variants.DEFAULT_CALIBRATION_IMAGES)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--int8-experiments", default="",
                   help="comma-separated extra int8 conversions to measure (agreement only): "
                   f"{', '.join(EXPERIMENTS)}, calN (N calibration images), combined with +")
    p.add_argument("--calibration-ab", type=int, default=0, metavar="ROUNDS",
                   help="also time the int8 converter with fast calibration and with TFLite's "
                   "calibrator over every image, alternated ROUNDS times")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    p.add_argument("--save-dir", default=None, help="also write the .tflite files here (<dir>/<backbone>/)")
    args = p.parse_args(argv)
    names = known_backbones(p, args.backbones)
    try:
        variants = tflite_variants.check_variants(args.variants.split(","))
    except ValueError as e:
        p.error(f"--variants: {e}")
    for experiment in [e for e in args.int8_experiments.split(",") if e]:
        for part in experiment.split("+"):
            if part not in EXPERIMENTS and not (part.startswith("cal") and part[3:].isdigit() and int(part[3:]) > 0):
                p.error(f"--int8-experiments: unknown {part!r}; valid: {', '.join(EXPERIMENTS)}, calN")
    roots = [pathlib.Path(d) for d in args.images.split(",") if d] or [pathlib.Path(datasets.emoji_dataset())]
    for root in roots:
        if not root.is_dir():
            p.error(f"--images: {root} is not a folder")
    sets = [(root.name, _dataset(root, args.train_per_class, args.eval_per_class)) for root in roots]
    rows = []
    for dataset, data in sets:
        for name in names:
            rows += bench_backbone(name, variants, data, args, dataset)
    table = markdown(rows)
    print(table)
    write_json(args.output, {
        "rows": rows, "table": table, "settings": vars(args),
        "datasets": {d: {"classes": data[0], "train_images": len(data[1]), "eval_images": len(data[2])}
                     for d, data in sets}})
    return 0


def known_backbones(parser: argparse.ArgumentParser, csv: str) -> list:
    """The --backbones list, each a registry entry, else a parser error."""
    names = [n for n in csv.split(",") if n]
    for n in names:
        try:
            backbones.get_spec(n)
        except ValueError as e:
            parser.error(f"--backbones: {e}")
    return names


def backbones_with_weights(parser: argparse.ArgumentParser, csv: str) -> list:
    """The --backbones list, each known and with ImageNet weights here, else a parser error."""
    names = known_backbones(parser, csv)
    for n in names:
        try:
            backbones.weights_fingerprint(n, "imagenet")
        except backbones.BackboneWeightsError as e:
            parser.error(f"--backbones: {n} has no ImageNet weights here ({e})")
    return names


def write_json(output: str, payload: dict) -> pathlib.Path:
    """Writes a TFLite benchmark's result with the machine's facts and the date."""
    return write_result({**payload, "machine": machine_facts()}, output)


if __name__ == "__main__":
    raise SystemExit(main())
