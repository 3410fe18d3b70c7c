"""TFMA's seconds with the Evaluator's metrics as the number of classes grows.

    python -m benchmarks.evaluator_classes [--classes 10 120] [--examples 2000]
        [--repeat 2] [--output benchmarks/results/evaluator_classes.json]

Runs TFMA (`tfma.run_model_analysis`, Beam DirectRunner) on synthetic eval
examples that carry a label and a probability vector (a model-agnostic
ModelSpec: only the metrics' cost is measured, not a model's), for each class
count, alternating three configs:

  * ``pipeline``: components.evaluation.make_eval_config as the pipeline runs it;
  * ``+binarized_top_k``: plus the binarized top-k Recall and Precision per class
    that make_eval_config added until 2026-12-01 (read by nothing: the report's
    per-class rates come from the confusion matrix);
  * ``+class_recall_gate``: plus the opt-in per-class gate's spec
    (``--max-class-recall-drop``) with a value threshold of 0 in place of its
    change threshold, which needs a baseline model.

Prints each config's seconds and checks that all give the same accuracy and
confusion matrix. Timings on a shared machine vary: compare within a run.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time
from typing import Dict, List

import numpy as np

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "evaluator_classes.json"


def write_examples(path: pathlib.Path, classes: int, n: int, seed: int = 0) -> None:
    """n tf.Examples: a label and a probability vector, right about 80 % of the time."""
    import tensorflow as tf
    from components import contracts
    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(str(path)) as w:
        for _ in range(n):
            label = int(rng.integers(classes))
            probs = rng.dirichlet(np.ones(classes))
            if rng.random() < 0.8:
                probs[label] += 2.0
            probs /= probs.sum()
            w.write(tf.train.Example(features=tf.train.Features(feature={
                contracts.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "probabilities": tf.train.Feature(float_list=tf.train.FloatList(value=probs.tolist())),
            })).SerializeToString())


def configs(classes: int) -> Dict[str, "object"]:
    """The three eval configs, as a first run's Evaluator would run them (no baseline)."""
    import tensorflow_model_analysis as tfma
    from components import evaluation
    labels = [f"c{i}" for i in range(classes)]

    def first_run(cfg):
        cfg = tfma.utils.update_eval_config_with_defaults(cfg, has_baseline=False, rubber_stamp=True)
        cfg.model_specs[0].ClearField("signature_name")  # predictions read from the examples
        return cfg

    pipeline = first_run(evaluation.make_eval_config(labels, 0.0, 0.0))
    top_k = first_run(evaluation.make_eval_config(labels, 0.0, 0.0))
    top_k.metrics_specs.append(tfma.MetricsSpec(
        binarize=tfma.BinarizationOptions(class_ids={"values": list(range(classes))}),
        metrics=[tfma.MetricConfig(class_name="Recall", config='"top_k": 1'),
                 tfma.MetricConfig(class_name="Precision", config='"top_k": 1')]))
    gate = first_run(evaluation.make_eval_config(labels, 0.0, 0.0))
    spec = evaluation.class_recall_spec(range(classes), 0.05)
    spec.metrics[0].threshold.ClearField("change_threshold")
    spec.metrics[0].threshold.value_threshold.lower_bound.value = 0.0
    gate.metrics_specs.append(spec)
    return {"pipeline": pipeline, "+binarized_top_k": top_k, "+class_recall_gate": gate}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 120])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each config, alternating")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = ap.parse_args(argv)
    import tensorflow_model_analysis as tfma
    from benchmarks.pipeline_throughput import machine_facts, write_result
    from components import evaluation

    rows: List[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for classes in args.classes:
            data = pathlib.Path(tmp) / f"eval_{classes}.tfrecord"
            write_examples(data, classes, args.examples)
            labels = [f"c{i}" for i in range(classes)]
            seconds: Dict[str, List[float]] = {}
            seen = set()
            for rep in range(args.repeat):
                for name, cfg in configs(classes).items():
                    out = pathlib.Path(tmp) / f"out_{classes}_{name}_{rep}"
                    start = time.perf_counter()
                    tfma.run_model_analysis(eval_config=cfg, data_location=str(data), output_path=str(out))
                    seconds.setdefault(name, []).append(round(time.perf_counter() - start, 2))
                    summary = evaluation.summarize(str(out), labels)
                    seen.add((summary["accuracy"], str(summary["confusion_matrix"])))
                    print(f"{classes:4d} classes  {name:20s} {seconds[name][-1]:7.2f} s", flush=True)
            best = {name: min(s) for name, s in seconds.items()}
            rows.append({"classes": classes, "examples": args.examples, "seconds": seconds,
                         "best": best, "same_accuracy_and_matrix": len(seen) == 1,
                         "top_k_over_pipeline": round(best["+binarized_top_k"] / best["pipeline"], 2),
                         "gate_over_pipeline": round(best["+class_recall_gate"] / best["pipeline"], 2)})
    result = {"benchmark": "evaluator_classes", "command": "python -m benchmarks.evaluator_classes "
              + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
              "rows": rows, "machine": machine_facts()}
    for r in rows:
        print(f"{r['classes']} classes, {r['examples']} examples: best "
              + ", ".join(f"{k} {v:.2f} s" for k, v in r["best"].items())
              + f"; same results: {r['same_accuracy_and_matrix']}")
    print("wrote", write_result(result, args.output))
    return result


if __name__ == "__main__":
    main()
