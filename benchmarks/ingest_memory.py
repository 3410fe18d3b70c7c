"""ImageExampleGen's peak memory against the size of a photo dataset.

    python -m benchmarks.ingest_memory [--images 100 400] [--side 1920]
        [--output benchmarks/results/ingest_memory.json]
    python -m benchmarks.ingest_memory --images 440 --build-only DIR

``--build-only`` writes the photos (the first N of the same sequence: 400 of them
are the first 400 of 440) for a whole `retrain run` on photos, and exits.

The emoji benchmarks' images are 5 KB each: a step that holds every image's bytes
at once shows there as a few MB. Photos show it. For each count this builds that
many distinct JPEG photos (`side` x 2/3 `side`, from scikit-learn's two offline
sample photos, each with its own pixel noise so that none is a duplicate), runs
ImageExampleGen alone (LocalDagRunner, in a child process) and records the
child's peak RSS. The figure to read is the growth: extra MB of peak memory per
extra MB of images, between the smallest and the largest count. Streaming
ingestion keeps it near 0; holding the images in a shuffle costs a multiple of 1.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from typing import Dict, List

from benchmarks.pipeline_throughput import machine_facts, write_result
from benchmarks.speed import in_child, run_child_job, peak_rss_mb

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "ingest_memory.json"
CLASSES = ("china", "flower")


def build_photos(dest: pathlib.Path, n: int, side: int) -> int:
    """n distinct JPEGs under dest/<class>/; returns their total bytes."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_image  # ships with scikit-learn: offline
    rng = np.random.default_rng(0)
    bases = [np.asarray(Image.fromarray(load_sample_image(f"{c}.jpg"))
                        .resize((side, side * 2 // 3), Image.BICUBIC), np.int16) for c in CLASSES]
    total = 0
    for i in range(n):
        c = i % len(CLASSES)
        pixels = np.clip(bases[c] + rng.integers(-6, 7, bases[c].shape), 0, 255).astype(np.uint8)
        path = dest / CLASSES[c] / f"p{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=92)
        total += path.stat().st_size
    return total


def ingest(images: str, workdir: str) -> Dict:
    """Runs ImageExampleGen alone; its seconds and this process's peak RSS."""
    import resource
    import time

    from tfx.orchestration import metadata
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner
    from tfx.orchestration.pipeline import Pipeline

    from components.image_example_gen import ImageExampleGen
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gen = ImageExampleGen(images=images, label_names=list(CLASSES), eval_percent=20,
                          exclude_label_conflicts=True, max_file_bytes=64 << 20)
    pipeline = Pipeline(pipeline_name="ingest-memory", pipeline_root=f"{workdir}/root", components=[gen],
                        enable_cache=False, metadata_connection_config=
                        metadata.sqlite_metadata_connection_config(f"{workdir}/mlmd.sqlite"))
    t0 = time.perf_counter()
    LocalDagRunner().run(pipeline)
    return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak_rss_mb(),
            "rss_before_run_mb": round(before, 1)}


def main(argv=None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--side", type=int, default=1920, help="photo width; height is 2/3 of it")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    ap.add_argument("--build-only", metavar="DIR", help="write the photos of the first --images count to DIR")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: speed.in_child's process
    args = ap.parse_args(argv)
    if args.child:
        run_child_job(args.child, {"ingest": ingest})
        return {}
    if args.build_only:
        mb = build_photos(pathlib.Path(args.build_only), args.images[0], args.side) / 2 ** 20
        print(f"wrote {args.images[0]} photos ({mb:.1f} MB) under {args.build_only}")
        return {}
    points: List[Dict] = []
    with tempfile.TemporaryDirectory(prefix="ingest-memory-") as tmp:
        for n in sorted(args.images):
            images, work = pathlib.Path(tmp) / f"photos_{n}", pathlib.Path(tmp) / f"work_{n}"
            data_mb = build_photos(images, n, args.side) / 2 ** 20
            run = in_child("ingest", module="benchmarks.ingest_memory", images=str(images), workdir=str(work))
            run.pop("process_seconds")
            point = {"images": n, "data_mb": round(data_mb, 1), **run}
            points.append(point)
            print(f"{n} photos ({point['data_mb']} MB): ImageExampleGen {point['seconds']} s, "
                  f"peak RSS {point['peak_rss_mb']} MB")
    first, last = points[0], points[-1]
    growth = (last["peak_rss_mb"] - first["peak_rss_mb"]) / max(last["data_mb"] - first["data_mb"], 1e-9)
    print(f"peak memory growth: {growth:.2f} MB per MB of images ({first['images']} -> {last['images']} photos)")
    result = {"benchmark": "ingest_memory", "side": args.side, "machine": machine_facts(),
              "points": points, "peak_mb_per_data_mb": round(growth, 2)}
    print(f"wrote {write_result(result, args.output)}")
    return result


if __name__ == "__main__":
    main()
