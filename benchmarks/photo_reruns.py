"""A first run and a +10 % rerun on photos, whole `retrain run`s as fresh processes.

    python -m benchmarks.photo_reruns [--images 900] [--side 1920]
        [--output benchmarks/results/photo_reruns.json] [--keep DIR]

The emoji benchmarks' images are 5 KB PNGs of 64 px, which decode in a fraction of
a millisecond: a step that decodes every image again on every run costs little
there. Phone photos are what users bring (the classic case: 100+ photos per dog
breed), and each 1920 x 1280 JPEG costs tens of milliseconds to decode. This
builds N distinct photos and N + 10 % (the first N of the same sequence plus the
next ones: benchmarks/ingest_memory.py ``build_photos``), runs the pipeline on
the N, then on the N + 10 % in the same workdir, each as a fresh process (as two
`retrain run` commands are), and prints each run's process seconds, the seconds
of each component, and the rerun / first-run ratio (issue 15's goal: <= 0.35).
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile
from typing import Dict

from benchmarks.ingest_memory import build_photos
from benchmarks.pipeline_throughput import machine_facts, write_result
from benchmarks.speed import in_child

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "photo_reruns.json"
MAX_FILE_BYTES = 64 << 20  # a 1920 x 1280 JPEG is about 0.5 MB; larger sides need more


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=900, help="photos in the first run")
    ap.add_argument("--side", type=int, default=1920, help="the photos' long side (px)")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    ap.add_argument("--keep", help="keep the photos and the workdir here")
    args = ap.parse_args(argv)
    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="photo-reruns-"))
    more = args.images + max(1, args.images // 10)
    first, plus = root / f"P{args.images}", root / f"P{more}"
    build_photos(plus, more, args.side)
    for path in sorted(plus.glob("*/*.jpg")):  # the first N: the same files, linked
        if int(path.stem[1:]) < args.images:
            (first / path.parent.name).mkdir(parents=True, exist_ok=True)
            (first / path.parent.name / path.name).hardlink_to(path)
    workdir = root / "work"
    runs = {}
    try:
        for name, images in (("first", first), ("plus10", plus)):
            r = in_child("pipeline", images=str(images), workdir=str(workdir),
                         overrides={"max_file_bytes": MAX_FILE_BYTES})
            runs[name] = {"images": sum(1 for _ in images.glob("*/*.jpg")), "process_seconds": r["process_seconds"],
                          "wall_seconds": r["wall_seconds"], "peak_rss_mb": r.get("peak_rss_mb"),
                          "seconds": {k: v for k, v in r["seconds"].items() if v >= 0.05}}
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    ratio = round(runs["plus10"]["process_seconds"] / runs["first"]["process_seconds"], 3)
    result = {"benchmark": "photo_reruns", "side": args.side, "runs": runs,
              "plus10_over_first": ratio, "target": "<= 0.35", "machine": machine_facts()}
    steps = list(runs["first"]["seconds"])
    print(f"{'seconds':16} {'first':>8} {'+10 %':>8}")
    for step in ["process"] + steps:
        a, b = (r["process_seconds"] if step == "process" else r["seconds"].get(step, 0.0)
                for r in (runs["first"], runs["plus10"]))
        print(f"{step:16} {a:8.1f} {b:8.1f}")
    print(f"+10 % rerun / first run: {ratio} (target <= 0.35)")
    write_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
