"""Data-audit quality and cost: planted mislabels and near-duplicates on real images.

For each dataset (the demo emoji set, Fashion-MNIST from Debian's
dataset-fashion-mnist), at most --per-class images a class:
  * backbone vectors are computed as BottleneckGen computes them (same decode,
    resize and extractor);
  * 5 % of the images are moved to a wrong class (random other class); the
    fraction of moved images among the top 2k suspects (k = moved) is measured
    for each method in components.audit_math.METHODS;
  * --copies images get a resized, JPEG re-encoded copy under another class;
    near-duplicate recall (planted pairs found) and precision (found pairs that
    were planted) are measured at the default threshold, with the similarity
    of every copy and the highest similarity between different images (the
    threshold's calibration);
  * the audit's cost on random N x 1024 vectors (--timing-images) is timed,
    with the peak of memory numpy allocated (tracemalloc).

  python -m benchmarks.audit_quality [--per-class 80] [--timing-images 20000]

Writes JSON to benchmarks/results/audit_quality.json (or --output).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pathlib
import time
import tracemalloc

import numpy as np
from PIL import Image

from benchmarks.pipeline_throughput import machine_facts, write_result
from components import audit_math

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "audit_quality.json"
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "boot")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def emoji_images(per_class: int):
    """[(class, name, png bytes)] from the demo dataset (fetched once by `make assets`)."""
    from pipeline.datasets import emoji_dataset
    root = emoji_dataset()
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.png"))[:per_class]:
            out.append((folder.name, f.name, f.read_bytes()))
    return out


def fashion_images(per_class: int):
    """[(class, name, png bytes)]: Fashion-MNIST test images, 28 px scaled to 64 px."""
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    out, taken = [], {}
    for i, c in enumerate(labels):
        if taken.get(c, 0) < per_class:
            taken[c] = taken.get(c, 0) + 1
            img = Image.fromarray(images[i]).resize((64, 64), Image.BICUBIC).convert("RGB")
            out.append((FASHION_CLASSES[c], f"{i}.png", _png(img)))
    return out


def _rgb(data: bytes) -> Image.Image:
    """Pixels as the pipeline sees them: transparency composited on white (image_io's rule)."""
    rgba = Image.open(io.BytesIO(data)).convert("RGBA")
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def resized_copy(data: bytes, scale: float, quality: int) -> bytes:
    img = _rgb(data)
    w, h = img.size
    img = img.resize((max(8, int(w * scale)), max(8, int(h * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _lossless(data: bytes) -> bytes:
    """JPEG bytes as a PNG of the same pixels: components/image_decode.decode_rgb
    asks TF for 4 channels, which TF's JPEG decoder refuses (see the issue note)."""
    return _png(_rgb(data)) if data[:3] == b"\xff\xd8\xff" else data


def features(encoded, backbone: str = "mobilenet_v1", batch: int = 32) -> np.ndarray:
    import tensorflow as tf
    from components import backbones, preprocessing
    model = preprocessing.shared_extractor(backbone, "imagenet")
    size = backbones.get_spec(backbone).input_size
    encoded = [_lossless(b) for b in encoded]
    out = []
    for i in range(0, len(encoded), batch):
        pixels = preprocessing.decode_and_resize(tf.constant(encoded[i:i + batch]), size)
        out.append(model(pixels, training=False).numpy())
    return np.concatenate(out).astype(np.float32)


def _distinct(images):
    """Identical files kept once, as ImageExampleGen keeps them."""
    seen, out = set(), []
    for c, n, d in images:
        if hashlib.sha256(d).digest() not in seen:
            seen.add(hashlib.sha256(d).digest())
            out.append((c, n, d))
    return out


def evaluate(name: str, images, copies: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    images = _distinct(images)
    classes = sorted({c for c, _, _ in images})
    label = np.array([classes.index(c) for c, _, _ in images])
    paths = [f"{c}/{n}" for c, n, _ in images]
    encoded = [d for _, _, d in images]
    n = len(images)
    moved = rng.choice(n, size=max(1, round(0.05 * n)), replace=False)
    noisy = label.copy()
    for i in moved:
        noisy[i] = rng.choice([c for c in range(len(classes)) if c != label[i]])
    sources = rng.choice(np.setdiff1d(np.arange(n), moved), size=copies, replace=False)
    planted = set()
    transforms = [(0.75, 85), (0.5, 90), (1.5, 75), (0.9, 60), (0.6, 80)]
    for t, i in enumerate(sources):
        scale, quality = transforms[t % len(transforms)]
        encoded.append(resized_copy(encoded[i], scale, quality))
        other = rng.choice([c for c in range(len(classes)) if c != label[i]])
        noisy = np.append(noisy, other)
        label = np.append(label, label[i])
        paths.append(f"{classes[other]}/copy_of_{pathlib.Path(paths[i]).stem}.jpg")
        planted.add(frozenset((paths[i], paths[-1])))
    splits = np.where(rng.random(len(encoded)) < 0.2, "eval", "train").tolist()
    start = time.perf_counter()
    vectors = features(encoded)
    feature_s = time.perf_counter() - start

    unit = audit_math.normalize(vectors)
    copy_sims = [float(unit[i] @ unit[n + t]) for t, i in enumerate(sources)]
    _, nn_sims, _ = audit_math.neighbours_and_pairs(unit[:n], 1, 2.0)
    transform_of = [transforms[t % len(transforms)] for t in range(copies)]
    result = {"dataset": name, "images": len(encoded), "classes": len(classes),
              "moved": len(moved), "planted_copies": copies, "feature_seconds": round(feature_s, 2),
              "copy_similarities": [{"scale": t[0], "jpeg_quality": t[1], "similarity": round(s, 4)}
                                    for t, s in zip(transform_of, copy_sims)],
              "nearest_other_image_similarity": {
                  q: round(float(np.quantile(nn_sims[:, 0], float(q))), 4)
                  for q in ("0.5", "0.9", "0.99", "0.999", "1.0")},
              "methods": {}}
    moved_paths = {paths[i] for i in moved}
    for method in audit_math.METHODS:
        start = time.perf_counter()
        audit = audit_math.audit(vectors, noisy, splits, paths, classes, method=method)
        seconds = time.perf_counter() - start
        top = [s.path for s in audit.suspected_mislabels[:2 * len(moved)]]
        found_pairs = {frozenset(p.paths) for p in audit.near_duplicates}
        hits = len(planted & found_pairs)
        fixed = sum(1 for s in audit.suspected_mislabels if s.path in moved_paths
                    and s.suggested_label == classes[label[paths.index(s.path)]])
        result["methods"][method] = {
            "moved_in_top_2k": round(len([p for p in top if p in moved_paths]) / len(moved), 3),
            "suggested_label_right_for_found": fixed,
            "listed_suspects": len(audit.suspected_mislabels), "seconds": round(seconds, 3)}
        result["near_duplicates"] = {
            "threshold": audit.duplicate_threshold, "planted_found": hits,
            "recall": round(hits / copies, 3) if copies else None,
            "pairs_reported": len(found_pairs),
            "precision": round(hits / len(found_pairs), 3) if found_pairs else None,
            "unplanted_examples": [list(p.paths) for p in audit.near_duplicates
                                   if frozenset(p.paths) not in planted][:10]}
    return result


def timing(n: int, dim: int = 1024, classes: int = 10) -> dict:
    rng = np.random.default_rng(0)
    vectors = np.abs(rng.standard_normal((n, dim), dtype=np.float32))  # ReLU-like, as features
    labels = rng.integers(0, classes, n)
    splits = ["train"] * n
    paths = [f"c/{i}.png" for i in range(n)]
    names = [f"c{i}" for i in range(classes)]
    out = {"images": n, "dim": dim}
    for method in audit_math.METHODS:
        tracemalloc.start()
        start = time.perf_counter()
        audit_math.audit(vectors, labels, splits, paths, names, method=method)
        out[method] = {"seconds": round(time.perf_counter() - start, 2),
                       "peak_mib": round(tracemalloc.get_traced_memory()[1] / 2**20, 1)}
        tracemalloc.stop()
    out["input_mib"] = round(vectors.nbytes / 2**20, 1)
    out["n_by_n_float32_mib"] = round(n * n * 4 / 2**20, 1)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=80, help="images per class (<= 800 in all)")
    ap.add_argument("--copies", type=int, default=5, help="resized JPEG copies planted")
    ap.add_argument("--timing-images", type=int, default=20000)
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = ap.parse_args(argv)
    result = {"machine": machine_facts(), "datasets": [
        evaluate("emoji-google", emoji_images(args.per_class), args.copies),
        evaluate("fashion-mnist", fashion_images(args.per_class), args.copies)]}
    if args.timing_images:
        result["timing_random"] = timing(args.timing_images)
    print(write_result(result, args.output).read_text())
    return result


if __name__ == "__main__":
    main()
