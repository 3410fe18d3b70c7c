"""The portable runner's overhead against the DirectRunner, on the same images.

    python -m benchmarks.portable_overhead [--images 2000] [--epochs 5]
        [--output benchmarks/results/portable_overhead.json] [--keep DIR]

Builds an N-image dataset from the emoji dataset (benchmarks.pipeline_throughput),
then runs `retrain run` twice in fresh processes with the same settings (float32
TFLite only, --epochs, no TFX cache, a fresh workdir each): once on the
DirectRunner (the default), once with every Beam step sent to Beam's job service
and an external worker pool on loopback ports (pipeline/local_beam_services.py),
the portable path Flink, Spark and Dataflow use. Prints per-component seconds of
both, their ratio, and writes them as JSON with the machine's facts. Both runs
do the same work; the difference is the portable path: job submission, artifact
staging, the Fn API and the workers' start-up (each loads TF and the backbone).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from pipeline import local_beam_services

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "portable_overhead.json"


def _retrain_run(images: pathlib.Path, workdir: pathlib.Path, epochs: int, extra) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--images", str(images),
         "--workdir", str(workdir), "--epochs", str(epochs), "--tflite-variants", "float32",
         "--min-accuracy", "0", "--min-images-per-class", "1", "--quiet", "--json", *extra],
        capture_output=True, text=True, cwd=local_beam_services.REPO)
    if proc.returncode != 0:
        raise SystemExit(f"retrain run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["process_seconds"] = round(time.perf_counter() - start, 1)
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="number of images N")
    ap.add_argument("--epochs", type=int, default=5, help="head training epochs (the same for both)")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    ap.add_argument("--keep", default=None, help="keep the dataset, workdirs and service logs here")
    args = ap.parse_args(argv)
    if args.images < 4 or args.epochs < 1:
        ap.error("--images must be >= 4 and --epochs >= 1")
    from benchmarks.pipeline_throughput import build_dataset, machine_facts, write_result
    from pipeline import datasets
    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="portable-overhead-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        counts = build_dataset(datasets.emoji_dataset(), root / "images", args.images)
        direct = _retrain_run(root / "images", root / "direct", args.epochs, [])
        (root / "services").mkdir(exist_ok=True)
        with local_beam_services.running(str(root / "services")) as services:
            portable = _retrain_run(root / "images", root / "portable", args.epochs,
                                    services.run_flags())
            jobs = services.jobs()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    steps = [s for s in direct["seconds"] if s in portable["seconds"]]
    rows = [{"step": s, "direct": direct["seconds"][s], "portable": portable["seconds"][s],
             "ratio": round(portable["seconds"][s] / max(direct["seconds"][s], 1e-3), 3)}
            for s in steps]
    result = {
        "args": vars(args), "dataset": {**counts, "requested": args.images},
        "examples": direct["examples"], "steps": rows,
        "total": {"direct": direct["process_seconds"], "portable": portable["process_seconds"],
                  "ratio": round(portable["process_seconds"] / direct["process_seconds"], 3)},
        "accuracy": {"direct": direct["accuracy"], "portable": portable["accuracy"]},
        "portable_jobs": [{"name": n, "state": s} for n, s in jobs],
        "machine": machine_facts(),
    }
    _print(result)
    out = write_result(result, args.output)
    print(f"wrote {out}")
    return result


def _print(r: dict) -> None:
    m = r["machine"]
    print(f"\n{sum(r['examples'].values())} examples, {r['args']['epochs']} epochs; "
          f"{m['nproc']} x {m['cpu_model']}; {len(r['portable_jobs'])} portable Beam jobs")
    print(f"{'step':<36}{'direct s':>10}{'portable s':>12}{'ratio':>8}")
    for row in r["steps"]:
        if row["direct"] >= 0.5 or row["portable"] >= 0.5:
            print(f"{row['step']:<36}{row['direct']:>10.1f}{row['portable']:>12.1f}{row['ratio']:>8.2f}")
    t = r["total"]
    print(f"{'whole run (process wall time)':<36}{t['direct']:>10.1f}{t['portable']:>12.1f}{t['ratio']:>8.2f}")
    print(f"eval accuracy: direct {r['accuracy']['direct']}, portable {r['accuracy']['portable']}")


if __name__ == "__main__":
    main()
