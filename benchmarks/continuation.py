"""A fine-tuning rerun, continued from the served model or cold (components/continuation.py).

    python -m benchmarks.continuation [--datasets demo,emoji-apple-full] [--blocks 1]
        [--epochs 15] [--new-percent 10] [--activation-cache DIR] [--output FILE]

For each dataset (as benchmarks/fine_tune.py finds it), on ImageExampleGen's own
train/eval split and the cached cut activations (float16, as BottleneckGen caches them):

1. "first": the Trainer's ``train`` on the images whose content hash puts them outside
   the last ``--new-percent`` (the earlier run), for up to ``--epochs``;
2. "cold": ``train`` on all the images from ImageNet weights, what a rerun did before;
3. "continued": ``train`` on all the images from the first model's top (through head.h5,
   as the Trainer reads the served model), for continuation.warm_epochs of the new rows.

Each row: eval accuracy and eval loss on the whole eval split, training seconds, epochs
and what was kept. Timings on a shared machine are load-dependent: the JSON records the
load average.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads

import numpy as np  # noqa: E402

from benchmarks import fine_tune as bench  # noqa: E402
from benchmarks.pipeline_throughput import machine_facts, write_result  # noqa: E402
from components import backbones, continuation, head_training, trainer  # noqa: E402
from pipeline.config import PipelineConfig  # noqa: E402

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "continuation.json"


def _is_new(images, percent: int) -> np.ndarray:
    """The images a rerun adds: the last ``percent`` of content-hash space."""
    return np.array([int(hashlib.sha256(b).hexdigest()[:8], 16) % 100 >= 100 - percent for b in images])


def _row(name, top, history, choice, seconds, x_eval, y_eval) -> dict:
    probs = head_training.predict_eagerly(top, x_eval)
    return {"run": name, "accuracy": float((probs.argmax(1) == y_eval).mean()),
            "eval_loss": round(head_training.cross_entropy(probs, y_eval), 4),
            "train_s": round(seconds, 1), "epochs": len(history["loss"]),
            "kept": choice.kept if choice else None}


def run_dataset(name: str, args) -> dict:
    spec = backbones.get_spec("mobilenet_v1")
    with tempfile.TemporaryDirectory(prefix="continuation-bench-") as tmp:
        splits, labels, _ = bench.split_examples(bench.dataset_root(name), pathlib.Path(tmp) / "work")
        (train_images, y_train), (eval_images, y_eval) = splits["train"], splits["eval"]
        x_train, x_eval = (bench.cached_activations(args.activation_cache, "mobilenet_v1", args.blocks, "float16",
                                                    images, spec.input_size)
                           for images in (train_images, eval_images))
        settings = PipelineConfig(images="", workdir="", label_names=tuple(labels), trainable_blocks=args.blocks,
                                  epochs=args.epochs).trainer_settings()
        new, new_eval = _is_new(train_images, args.new_percent), _is_new(eval_images, args.new_percent)
        rows = []
        start = time.time()
        first, history, choice = trainer.train(x_train[~new], y_train[~new], x_eval[~new_eval], y_eval[~new_eval],
                                               len(labels), settings)
        rows.append(_row("first", first, history, choice, time.time() - start, x_eval, y_eval))
        start = time.time()
        cold, history, choice = trainer.train(x_train, y_train, x_eval, y_eval, len(labels), settings)
        rows.append(_row("cold", cold, history, choice, time.time() - start, x_eval, y_eval))
        trainer.save_head(tmp, first, "mobilenet_v1", "imagenet", labels, trainable_blocks=args.blocks)
        served, _ = trainer.load_head(tmp)
        epochs = continuation.warm_epochs(settings.epochs, int(new.sum()), len(new))
        start = time.time()
        top, history, choice = trainer.train(x_train, y_train, x_eval, y_eval, len(labels), settings,
                                             served=served, served_epochs=epochs)
        rows.append({**_row("continued", top, history, choice, time.time() - start, x_eval, y_eval),
                     "served_eval_loss": choice.served_eval_loss})
        for row in rows:
            print(json.dumps({"dataset": name, **row}), file=sys.stderr, flush=True)
        return {"dataset": name, "blocks": args.blocks, "train": int(len(y_train)), "eval": int(len(y_eval)),
                "new_train": int(new.sum()), "new_eval": int(new_eval.sum()), "rows": rows}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="demo,emoji-apple-full")
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--new-percent", type=int, default=10)
    p.add_argument("--activation-cache", help="keep the cut activations here (.npy) between runs")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    results = [run_dataset(name, args) for name in args.datasets.split(",")]
    print("| dataset | N | run | eval accuracy | eval loss | training s | epochs | kept |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        for row in result["rows"]:
            print(f"| {result['dataset']} | {result['blocks']} | {row['run']} | {row['accuracy']:.3f} | "
                  f"{row['eval_loss']:.4f} | {row['train_s']} | {row['epochs']} | {row['kept']} |")
    report = {"command": " ".join(["python -m benchmarks.continuation"] + list(argv or sys.argv[1:])),
              "results": results, "load_average": {"before": load_before, "after": os.getloadavg()},
              "machine": machine_facts()}
    write_result(report, args.output)
    return report


if __name__ == "__main__":
    main()
