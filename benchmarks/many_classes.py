"""A first run on many classes: emoji by sub-category (89 classes, 3,765 images).

    python -m benchmarks.many_classes [--code DIR ...] [--repeat 1] [--keep DIR]
        [--output benchmarks/results/many_classes.json]

The classic transfer-learning case has many classes (120 dog breeds); the demo set
has 9. This builds the emoji of two vendors' npm packages (emoji-datasource-google
and -apple 16.0.0, sha256-checked) into one folder per emoji *sub-category*
("animal_mammal", "food_asian", ...), drops sub-categories under --min-images
files, and runs `retrain run --json` on it as a user types it, in a fresh process
and workdir each time, once per --code tree (default: this one; another checkout,
e.g. an older commit, runs with its own `pipeline` and `components` first on
PYTHONPATH), alternating over --repeat rounds. Records each run's wall time (start-up
included), its summary's total_seconds (preflight, pipeline and HTML report) and
seconds per step, the process's peak
resident memory (os.wait4's ru_maxrss), eval accuracy and the TFLite parity, and
writes them as JSON. Timings on a shared machine vary: alternate, compare within
a run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Dict, List

from pipeline import datasets

PACKAGES = {  # vendor -> sha256 of emoji-datasource-<vendor>-16.0.0.tgz (npm pack)
    "google": "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
    "apple": "b34d1665e136f163b0d4433318df151895b785186e8c729b2211b43017945075",
}
VERSION = "16.0.0"
DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "many_classes.json"
REPO = pathlib.Path(__file__).resolve().parent.parent


def build_dataset(dest: pathlib.Path, vendors: List[str], min_images: int) -> Dict[str, int]:
    """<dest>/<sub-category>/<vendor>_<codepoints>.png; returns files per class kept."""
    with tempfile.TemporaryDirectory() as tmp:
        for vendor in vendors:
            package = f"emoji-datasource-{vendor}@{VERSION}"
            subprocess.run(["npm", "pack", package, "--silent"], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            (tarball,) = pathlib.Path(tmp).glob(f"emoji-datasource-{vendor}-*.tgz")
            if hashlib.sha256(tarball.read_bytes()).hexdigest() != PACKAGES[vendor]:
                raise SystemExit(f"many_classes: {tarball.name}: sha256 mismatch, refusing to use it")
            with tarfile.open(tarball, "r:gz") as tar:
                for entry in json.load(tar.extractfile("package/emoji.json")):
                    if not entry.get(f"has_img_{vendor}") or entry.get("category") == "Component":
                        continue
                    try:
                        member = tar.getmember(f"package/img/{vendor}/64/{entry['image']}")
                    except KeyError:
                        continue
                    folder = dest / datasets.slug(entry["subcategory"])
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{vendor}_{datasets.slug(entry['unified'])}.png").write_bytes(
                        tar.extractfile(member).read())
    counts = {}
    for folder in sorted(p for p in dest.iterdir() if p.is_dir()):
        n = sum(1 for _ in folder.iterdir())
        if n < min_images:
            shutil.rmtree(folder)
        else:
            counts[folder.name] = n
    return counts


def retrain_run(code: pathlib.Path, images: pathlib.Path, workdir: pathlib.Path) -> dict:
    """`retrain run --json` with `code`'s modules: the summary, wall seconds, peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(code), TF_USE_LEGACY_KERAS="1")
    argv = [sys.executable, "-m", "pipeline.cli", "run", "--images", str(images),
            "--workdir", str(workdir), "--json", "--quiet"]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, cwd=str(code), env=env, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not the largest so far
        wall = time.perf_counter() - start
        exit_code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().strip().splitlines()
    if exit_code != 0 or not lines:
        raise SystemExit(f"many_classes: retrain run with {code} exited {exit_code}")
    summary = json.loads(lines[-1])
    parity = {}
    for path in pathlib.Path(workdir).glob("pipeline_root/TFLiteExport/tflite_models/*/parity.json"):
        for name, v in json.loads(path.read_text())["variants"].items():
            parity[name] = {"agreement": v.get("agreement"), "accuracy": v.get("accuracy"),
                            "passed": v.get("passed")}
    return {"code": str(code), "commit": _commit(code), "wall_seconds": round(wall, 1),
            "total_seconds": summary.get("total_seconds"), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "seconds": summary.get("seconds"), "accuracy": summary.get("accuracy"),
            "examples": summary.get("examples"), "pushed_variants": summary.get("pushed_variants"),
            "tflite": parity}


def _commit(code: pathlib.Path) -> str:
    proc = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc.stdout.strip()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", nargs="+", default=[str(REPO)], help="checkouts to run (default: this one)")
    ap.add_argument("--vendors", nargs="+", default=list(PACKAGES), choices=list(PACKAGES))
    ap.add_argument("--min-images", type=int, default=10, help="drop sub-categories with fewer files")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over --code, alternating")
    ap.add_argument("--keep", help="keep the dataset and workdirs here (default: a temp dir)")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = ap.parse_args(argv)
    from benchmarks.pipeline_throughput import machine_facts, write_result

    root = pathlib.Path(args.keep) if args.keep else pathlib.Path(tempfile.mkdtemp(prefix="many-classes-"))
    images = root / "images"
    if images.exists():
        shutil.rmtree(images)
    counts = build_dataset(images, args.vendors, args.min_images)
    print(f"{len(counts)} classes, {sum(counts.values())} files "
          f"({min(counts.values())}-{max(counts.values())} a class)", flush=True)
    runs: List[dict] = []
    for rnd in range(args.repeat):
        for i, code in enumerate(args.code):
            workdir = root / f"work_{rnd}_{i}"
            shutil.rmtree(workdir, ignore_errors=True)
            run = retrain_run(pathlib.Path(code).resolve(), images, workdir)
            runs.append(run)
            print(f"{run['commit'] or code}: {run['wall_seconds']} s wall, run "
                  f"{run['total_seconds']} s, peak RSS {run['peak_rss_mb']} MB, accuracy "
                  f"{run['accuracy']:.4f}; " + ", ".join(f"{k} {v}" for k, v in (run["seconds"] or {}).items()
                                                         if v and v >= 1), flush=True)
    result = {"benchmark": "many_classes", "command": "python -m benchmarks.many_classes "
              + " ".join(argv if argv is not None else sys.argv[1:]),
              "classes": len(counts), "files": sum(counts.values()), "files_per_class": counts,
              "runs": runs, "machine": machine_facts()}
    print("wrote", write_result(result, args.output))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
