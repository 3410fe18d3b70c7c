"""Fine-tuning the top N backbone blocks (`--trainable-blocks N`, issue 19): accuracy,
training time, cache size and int8 agreement per N.

    python -m benchmarks.fine_tune [--datasets demo,emoji-apple-594,fashion-mnist-600]
        [--blocks 0,1,2,4] [--backbone mobilenet_v1] [--epochs 100] [--per-class K]
        [--activation-dtype float16] [--calibration 100] [--no-int8] [--block-lr-factor 0.1]
        [--warm-start 1] [--dropout 0.0] [--patience 5] [--augment-views 0] [--batchnorm-training]
        [--output FILE]

For each dataset (``demo``: the demo emoji set; any other name: a ``<class>/<image>``
folder under <cache>/bench-datasets/, or a path):

1. ImageExampleGen runs on it (LocalDagRunner, eval_percent 20): the pipeline's own
   train/eval split by content hash and its canonical image bytes (``--per-class K``:
   the first K files of each class, to run small).
2. Per N: the frozen lower part computes every image's activation at the cut (what
   BottleneckGen caches, float16-rounded as cached by default): ``cache_s`` and the
   cache's bytes per image (``cache_kb``: N = 0 is the pooled feature vector, float32;
   with ``--activation-cache DIR`` they are kept there, and ``cache_s`` is then the load).
3. The Trainer's own ``train_head`` (trainer settings of a default run, N and
   ``--epochs`` changed; early stopping as in a run): ``train_s``, eval ``accuracy``.
4. int8: the whole network (lower + trained top + head, trainer.build_pixel_model)
   converted as TFLiteExport does (bias correction, ``--calibration`` train images);
   ``int8_agree`` is its top-1 agreement on the eval images with the float model (the
   top model on the cached activations, what the SavedModel computes), ``int8_acc`` its accuracy.
5. float16 cache (N > 0): the trained top model on the exact float32 activations of the
   eval images against the float16-rounded ones: top-1 agreement, largest probability change.

Prints a Markdown table per dataset with each N's gain over N = 0 and writes JSON
(machine facts, load average) to ``--output``. Timings on a shared machine are
load-dependent: the JSON records the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from components import backbones, fine_tune, preprocessing, trainer  # noqa: E402
from components.augmentation import augment  # noqa: E402
from components.image_decode import decode_batch  # noqa: E402
from components.tflite import convert  # noqa: E402
from components.tflite.runtime import Classifier  # noqa: E402
from pipeline import datasets  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "fine_tune.json"
BATCH = 64


def _fail(message: str) -> None:
    print(f"fine_tune: error: {message}", file=sys.stderr)
    sys.exit(2)


def dataset_root(name: str) -> pathlib.Path:
    if name == "demo":
        return datasets.emoji_dataset()
    path = pathlib.Path(name).expanduser()
    if path.is_dir():
        return path
    path = backbones.cache_dir() / "bench-datasets" / name
    if not path.is_dir():
        _fail(f"dataset {name!r} not found (demo, a folder, or {path})")
    return path


def _subset(root: pathlib.Path, dest: pathlib.Path, per_class: int) -> pathlib.Path:
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        (dest / folder.name).mkdir(parents=True)
        for f in sorted(p for p in folder.iterdir() if p.is_file())[:per_class]:
            shutil.copy(f, dest / folder.name / f.name)
    return dest


def split_examples(root: pathlib.Path, work: pathlib.Path):
    """ImageExampleGen's split: ({split: (image bytes list, labels)}, label names)."""
    from tfx import v1 as tfx
    from components.image_example_gen import ImageExampleGen
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    gen = ImageExampleGen(images=str(root), label_names=labels, eval_percent=20, exclude_label_conflicts=True)
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="fine-tune-bench", pipeline_root=str(work / "root"), components=[gen],
        enable_cache=False, metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(work / "mlmd.sqlite"))))
    (uri,) = (work / "root" / "ImageExampleGen" / "examples").iterdir()
    out = {}
    for split in ("train", "eval"):
        rows = [convert.image_and_label(r) for r in convert.records(convert.examples_files(str(uri / f"Split-{split}")))]
        out[split] = ([r[0] for r in rows], np.asarray([r[1] for r in rows], np.int64))
    return out, labels, str(uri / "Split-train")


def _views(pixels: tf.Tensor, images, view: int) -> tf.Tensor:
    """Augmented view ``view`` of each image, seeded per image content and view as
    BottleneckGen seeds it (components/bottleneck_gen.py _seed)."""
    return tf.stack([augment(p, (int(hashlib.sha256(b).hexdigest()[:15], 16), view))
                     for p, b in zip(pixels, images)])


def activations(backbone: str, blocks: int, dtype: str, images, size: int, view: int = 0) -> np.ndarray:
    """The cached activation of each image (``view`` > 0: of its augmented view)."""
    lower = preprocessing.shared_extractor(backbone, "imagenet", blocks)
    out = []
    for start in range(0, len(images), BATCH):
        pixels = decode_batch(images[start:start + BATCH], size)
        if view:
            pixels = _views(pixels, images[start:start + BATCH], view)
        x = lower(pixels, training=False)
        out.append((fine_tune.round_activation(x, dtype) if blocks else x).numpy())
    return np.concatenate(out).astype(np.float32)


def cached_activations(cache_dir, backbone: str, blocks: int, dtype: str, images, size: int,
                       view: int = 0) -> np.ndarray:
    """:func:`activations`, kept in ``cache_dir`` (None: not kept) as .npy keyed by the
    images' content, the backbone, N, the dtype and the view: a sweep of recipes
    computes each activation once."""
    if cache_dir is None:
        return activations(backbone, blocks, dtype, images, size, view)
    digest = hashlib.sha256()
    for image in images:
        digest.update(hashlib.sha256(image).digest())
    path = pathlib.Path(cache_dir) / f"{backbone}-{blocks}-{dtype}-{view}-{digest.hexdigest()[:24]}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False).astype(np.float32)
    x = activations(backbone, blocks, dtype, images, size, view)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.npy")
    np.save(tmp, x.astype(np.float16) if blocks and dtype == "float16" else x)  # float16: exact
    tmp.replace(path)
    return x


def int8_scores(backbone, head, blocks, train_split_uri, calibration, eval_images, reference, labels, size):
    # Through head.h5, as TFLiteExport gets it: the in-memory top model's blocks were
    # also called while build_split cut the application, and bias correction leaves
    # out layers with more than one call (bias_correction.conv_bn_pairs).
    with tempfile.TemporaryDirectory(prefix="fine-tune-head-") as tmp:
        trainer.save_head(tmp, head, backbone, "imagenet", [str(i) for i in range(head.output_shape[-1])],
                          trainable_blocks=blocks)
        head, _ = trainer.load_head(tmp)
    pixel_model = trainer.build_pixel_model(backbone, "imagenet", head, blocks)
    calib = convert.calibration_images(convert.examples_files(train_split_uri), calibration)

    def pixels():
        for start in range(0, len(calib), 32):
            yield from decode_batch(calib[start:start + 32], size).numpy()
    start = time.time()
    classifier = Classifier(convert.convert(pixel_model, "int8", pixels), num_threads=2)
    seconds = time.time() - start
    predicted = np.concatenate([classifier.predict(decode_batch(eval_images[i:i + 32], size).numpy())
                                for i in range(0, len(eval_images), 32)]).argmax(1)
    return (float((predicted == reference.argmax(1)).mean()), float((predicted == labels).mean()),
            round(seconds, 1))


def run_dataset(name: str, args) -> dict:
    spec = backbones.get_spec(args.backbone)
    with tempfile.TemporaryDirectory(prefix="fine-tune-bench-") as tmp:
        root = dataset_root(name)
        if args.per_class:
            root = _subset(root, pathlib.Path(tmp) / "images", args.per_class)
        splits, labels, train_uri = split_examples(root, pathlib.Path(tmp) / "work")
        (train_images, y_train), (eval_images, y_eval) = splits["train"], splits["eval"]
        rows = []
        for blocks in args.blocks:
            start = time.time()
            cache = args.activation_cache
            x_train = cached_activations(cache, args.backbone, blocks, args.activation_dtype, train_images,
                                         spec.input_size)
            if args.augment_views:  # the views join the train split, as in a run (eval: images only)
                x_train = np.concatenate([x_train] + [
                    cached_activations(cache, args.backbone, blocks, args.activation_dtype, train_images,
                                       spec.input_size, v)
                    for v in range(1, args.augment_views + 1)])
            x_eval = cached_activations(cache, args.backbone, blocks, args.activation_dtype, eval_images,
                                        spec.input_size)
            cache_s = time.time() - start
            itemsize = 2 if blocks and args.activation_dtype == "float16" else 4
            settings = PipelineConfig(
                images="", workdir="", label_names=tuple(labels), trainable_blocks=blocks,
                epochs=args.epochs if blocks else args.head_epochs, patience=args.patience,
                activation_dtype=args.activation_dtype).trainer_settings()
            start = time.time()
            y_fit = np.tile(y_train, 1 + args.augment_views)  # views follow their images' order
            head, history, choice = trainer.train(x_train, y_fit, x_eval, y_eval, len(labels), settings,
                                                  recipe=args.recipe)
            train_s = time.time() - start
            reference = head.predict(x_eval, batch_size=256, verbose=0)
            row = {"blocks": blocks, "accuracy": float((reference.argmax(1) == y_eval).mean()),
                   "train_s": round(train_s, 1), "epochs": len(history["loss"]),
                   "cache_s": round(cache_s, 1), "cache_kb": round(x_train.shape[1] * itemsize / 1024, 1)}
            if choice is not None:  # N > 0: the fine-tuned top or the head alone (trainer.FineTuneChoice)
                row["kept"] = choice.kept
                row["fine_tuned_eval_loss"] = choice.fine_tuned_eval_loss
                row["head_only_eval_loss"] = choice.head_only_eval_loss
            if blocks and args.activation_dtype == "float16":  # what the float16 rounding costs
                exact = head.predict(activations(args.backbone, blocks, "float32", eval_images, spec.input_size),
                                     batch_size=256, verbose=0)
                row["f16_vs_f32_agree"] = float((exact.argmax(1) == reference.argmax(1)).mean())
                row["f16_vs_f32_max_prob_diff"] = float(np.abs(exact - reference).max())
            if not args.no_int8:
                row["int8_agree"], row["int8_acc"], row["int8_convert_s"] = int8_scores(
                    args.backbone, head, blocks, train_uri, args.calibration, eval_images, reference,
                    y_eval, spec.input_size)
            rows.append(row)
            print(json.dumps({"dataset": name, **row}), file=sys.stderr, flush=True)
            del x_train, x_eval
        base = next((r["accuracy"] for r in rows if r["blocks"] == 0), None)
        for r in rows:
            r["gain_points"] = None if base is None else round(100 * (r["accuracy"] - base), 1)
        return {"dataset": name, "classes": len(labels), "train": int(len(y_train)),
                "eval": int(len(y_eval)), "rows": rows}


def _f3(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(result: dict) -> str:
    lines = [f"### {result['dataset']}: {result['classes']} classes, {result['train']} train / "
             f"{result['eval']} eval images",
             "| N | eval acc | gain (points) | kept | train s | epochs | cache KB/image | cache s | int8 agree | int8 acc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['blocks']} | {r['accuracy']:.3f} | {r['gain_points']} | {r.get('kept', '-')} | "
                     f"{r['train_s']} | {r['epochs']} | {r['cache_kb']} | {r['cache_s']} | "
                     f"{_f3(r.get('int8_agree'))} | {_f3(r.get('int8_acc'))} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="demo,emoji-apple-594,fashion-mnist-600")
    p.add_argument("--blocks", default="0,1,2,4")
    p.add_argument("--backbone", default="mobilenet_v1")
    default_epochs = PipelineConfig(images="", workdir="").epochs
    p.add_argument("--epochs", type=int, default=default_epochs, help="most epochs for N > 0")
    p.add_argument("--head-epochs", type=int, default=default_epochs, help="most epochs for N = 0 (cheap)")
    p.add_argument("--per-class", type=int, default=0, help="first K images per class (0: all)")
    p.add_argument("--activation-dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--calibration", type=int, default=100)
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--block-lr-factor", type=float, default=fine_tune.DEFAULT_RECIPE.block_learning_rate_factor,
                   help="the blocks' learning rate / the head's (an experiment; the Trainer uses the default)")
    p.add_argument("--warm-start", type=int, choices=[0, 1], default=int(fine_tune.DEFAULT_RECIPE.warm_start),
                   help="N > 0: train the head alone on the frozen top first (1) or not (0)")
    p.add_argument("--dropout", type=float, default=fine_tune.DEFAULT_RECIPE.dropout,
                   help="N > 0: dropout rate before the head (an experiment)")
    p.add_argument("--batchnorm-training", action="store_true",
                   help="N > 0: the top blocks' BatchNorm in training mode (an experiment)")
    p.add_argument("--augment-views", type=int, default=0, help="cached augmented views per train image")
    p.add_argument("--shift", type=int, default=0, help="N > 0: random shift of the cut activation, in cells")
    p.add_argument("--flip", action="store_true", help="N > 0: random mirror of the cut activation")
    p.add_argument("--mixup", type=float, default=0.0, help="N > 0: mixup's Beta(a, a) on the cut activations")
    p.add_argument("--head-lr-factor", type=float, default=1.0,
                   help="N > 0: the head's learning rate / the run's while the blocks train")
    p.add_argument("--tune", choices=fine_tune.TUNE_CHOICES, default="all",
                   help="N > 0: which of the top blocks' weights train")
    p.add_argument("--patience", type=int, default=PipelineConfig(images="", workdir="").patience)
    p.add_argument("--activation-cache", default=None,
                   help="folder keeping the computed activations for the next invocation (a recipe sweep)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = p.parse_args(argv)
    args.recipe = fine_tune.Recipe(block_learning_rate_factor=args.block_lr_factor,
                                   warm_start=bool(args.warm_start), dropout=args.dropout,
                                   batchnorm_training=args.batchnorm_training, shift=args.shift,
                                   flip=args.flip, mixup=args.mixup,
                                   head_learning_rate_factor=args.head_lr_factor, tune=args.tune)
    try:
        args.blocks = [int(b) for b in args.blocks.split(",")]
        for blocks in args.blocks:
            backbones.check_trainable_blocks(args.backbone, blocks)
        for name in args.datasets.split(","):
            dataset_root(name)
    except ValueError as e:
        _fail(str(e))
    load_before = os.getloadavg()
    results = []
    for name in args.datasets.split(","):
        results.append(run_dataset(name, args))
        print(table(results[-1]) + "\n", flush=True)
        report = _report(argv, args, load_before, results)  # written after each dataset
    return report


def _report(argv, args, load_before, results) -> dict:
    report = {"benchmark": "fine_tune", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "command": " ".join(["python -m benchmarks.fine_tune", *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "loadavg_start": load_before, "loadavg_end": os.getloadavg()},
              "settings": {"backbone": args.backbone, "epochs": args.epochs, "head_epochs": args.head_epochs,
                           "per_class": args.per_class,
                           "activation_dtype": args.activation_dtype, "calibration": args.calibration,
                           "block_learning_rate_factor": args.recipe.block_learning_rate_factor,
                           "warm_start": args.recipe.warm_start, "dropout": args.recipe.dropout,
                           "batchnorm_training": args.recipe.batchnorm_training,
                           "shift": args.recipe.shift, "flip": args.recipe.flip, "mixup": args.recipe.mixup,
                           "head_learning_rate_factor": args.recipe.head_learning_rate_factor,
                           "tune": args.recipe.tune,
                           "patience": args.patience, "augment_views": args.augment_views},
              "results": results}
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
