"""Scaling: whole-run wall time and peak memory as the image count grows (issue 15).

    python -m benchmarks.scaling [--sizes 2000,6000,20000] [--output benchmarks/results/scaling.json]

For each size N: N distinct images (the emoji dataset, then mirrored/shifted
copies: benchmarks/pipeline_throughput.build_dataset), one first run of the
local pipeline in a fresh process, as `retrain run` would be (speed.run_pipeline),
recording the command's whole wall time, the components' seconds and the peak
resident memory of that process and its children. Targets: time grows linearly
(seconds per image roughly constant from size to size) and peak memory stays
<= 4 GB at 20k. Writes the JSON and a PNG plot of both curves beside it.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile

from benchmarks.pipeline_throughput import build_dataset, machine_facts, write_result
from benchmarks.speed import run_pipeline
from pipeline import datasets

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "scaling.json"
PEAK_RSS_TARGET_MB = 4096


def measure(sizes, root: pathlib.Path, batch_size: int, output: str = "") -> list:
    """One point per size; with `output`, the JSON and the plot are rewritten after
    each, so a run stopped at 20k (a timeout, memory) keeps the smaller sizes."""
    src = datasets.emoji_dataset()
    points = []
    for n in sizes:
        images = root / f"images_{n}"
        counts = build_dataset(src, images, n)
        run = run_pipeline(images, root / f"work_{n}", feature_batch_size=batch_size)
        shutil.rmtree(root / f"work_{n}", ignore_errors=True)  # disk: 20k runs are large
        components = round(sum(run["seconds"].values()), 1)
        points.append({"images": n, "derived_images": counts["derived"],
                       "examples": run["examples"], "wall_seconds": run["process_seconds"],
                       "components_seconds": components, "peak_rss_mb": run["peak_rss_mb"],
                       "seconds_per_1000_images": round(1000 * run["process_seconds"] / n, 2),
                       "seconds": run["seconds"], "peak_rss_mb_by_step": run["peak_rss_mb_by_step"],
                       "accuracy": run["accuracy"]})
        print(f"{n:>7} images: {run['process_seconds']:>8.1f} s wall, {components:>8.1f} s of "
              f"components, peak RSS {run['peak_rss_mb']:>8.1f} MB", flush=True)
        if output:
            save(points, output)
    return points


def save(points: list, output: str) -> dict:
    """Writes the result JSON at `output` and its plot beside it (same name, .png)."""
    result = {"points": points, "linearity": linearity(points),
              "peak_rss_target_mb": PEAK_RSS_TARGET_MB,
              "peak_rss_ok": all(p["peak_rss_mb"] <= PEAK_RSS_TARGET_MB for p in points),
              "machine": machine_facts()}
    out = write_result(result, output)
    plot(points, out.with_suffix(".png"))
    return result


def linearity(points: list) -> list:
    """Marginal seconds per 1000 images between consecutive sizes: flat means linear."""
    return [{"from": a["images"], "to": b["images"],
             "marginal_seconds_per_1000_images": round(
                 1000 * (b["wall_seconds"] - a["wall_seconds"]) / (b["images"] - a["images"]), 2)}
            for a, b in zip(points, points[1:])]


def plot(points: list, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = [p["images"] for p in points]
    fig, (wall, rss) = plt.subplots(1, 2, figsize=(10, 4))
    wall.plot(n, [p["wall_seconds"] for p in points], "o-", label="whole run (wall)")
    wall.plot(n, [p["components_seconds"] for p in points], "s--", label="components (sum)")
    wall.set(xlabel="images", ylabel="seconds", title="time")
    wall.legend()
    rss.plot(n, [p["peak_rss_mb"] / 1024 for p in points], "o-")
    rss.axhline(PEAK_RSS_TARGET_MB / 1024, color="red", linestyle=":", label="4 GB target")
    rss.set(xlabel="images", ylabel="GB", title="peak resident memory")
    rss.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2000,6000,20000", help="comma-separated image counts")
    ap.add_argument("--batch-size", type=int, default=64, help="feature batch size")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    ap.add_argument("--keep", help="keep datasets here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="scaling-")).resolve()
    try:
        points = measure(sizes, root, args.batch_size, args.output)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    result = save(points, args.output)
    for row in result["linearity"]:
        print(f"{row['from']} -> {row['to']}: {row['marginal_seconds_per_1000_images']} s per 1000 more images")
    out = pathlib.Path(args.output)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
