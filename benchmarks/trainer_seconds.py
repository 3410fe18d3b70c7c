"""The Trainer's run_fn alone, each time in a fresh process, as a Kubeflow pod runs it.

    python -m benchmarks.trainer_seconds --workdir WORKDIR [--repeat 3]

WORKDIR is a `retrain run` workdir: its last Trainer execution's settings and inputs
(BottleneckGen's bottlenecks, Transform's graph) are read from MLMD, and
``trainer.run_fn`` runs on them ``--repeat`` times, each in a new Python process
into a temp folder. Prints run_fn's seconds (start-up and imports excluded) and the
eval accuracy of the last epoch kept; compare code versions by running it with
``PYTHONPATH`` pointing at each tree, alternating.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
import types
from typing import Dict

from benchmarks.evaluator_paths import last_evaluator_io
from benchmarks.speed import in_child, run_child_job


def fit_once(workdir: str) -> Dict:
    """One run_fn on the workdir's last Trainer inputs: its seconds and best eval accuracy."""
    from components import trainer
    props, inputs, _ = last_evaluator_io(workdir, "Trainer")
    examples, = inputs["examples"]
    graph, = inputs["transform_graph"]
    with tempfile.TemporaryDirectory(prefix="trainer-seconds-") as out:
        fn_args = types.SimpleNamespace(
            train_files=[os.path.join(examples.uri, "Split-train", "*")],
            eval_files=[os.path.join(examples.uri, "Split-eval", "*")],
            transform_output=graph.uri, serving_model_dir=os.path.join(out, "model", "Format-Serving"),
            model_run_dir=os.path.join(out, "run"), custom_config=json.loads(props["custom_config"]))
        start = time.perf_counter()
        trainer.run_fn(fn_args)
        seconds = time.perf_counter() - start
        (history,) = glob.glob(os.path.join(out, "run", "**", trainer.TRAINING_HISTORY_FILE), recursive=True)
        with open(history) as f:
            accuracy = max(json.load(f).get("val_accuracy") or [0.0])
    return {"run_fn_seconds": round(seconds, 2), "best_eval_accuracy": accuracy}


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="a retrain run workdir (its last Trainer)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: speed.in_child's process
    args = ap.parse_args(argv)
    if args.child:
        run_child_job(args.child, {"fit": fit_once})
        return {}
    if not args.workdir:
        ap.error("--workdir is required")
    runs = [in_child("fit", module="benchmarks.trainer_seconds", workdir=args.workdir)
            for _ in range(args.repeat)]
    for run in runs:
        print(f"run_fn {run['run_fn_seconds']} s (process {run['process_seconds']} s), "
              f"best eval accuracy {run['best_eval_accuracy']:.4f}")
    return {"runs": runs}


if __name__ == "__main__":
    main()
