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
    were planted) are measured with the default rule (cosine candidates
    confirmed by pixel signatures, components/pixel_signature.py) and by the
    cosine alone, with every copy's cosine and thumbnail RMS against its
    original and, over pairs of different images above the candidate cosine,
    the smallest thumbnail RMS (the rule's calibration; --calibration-copies
    plants more copies for these figures only);
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
from components import audit_math, pixel_signature

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


TRANSFORMS = [(0.75, 85), (0.5, 90), (1.5, 75), (0.9, 60), (0.6, 80)]  # (scale, JPEG quality)


def plant_copies(encoded, sources):
    """Resized JPEG copies of encoded[i] for i in sources, cycling through TRANSFORMS."""
    return [resized_copy(encoded[i], *TRANSFORMS[t % len(TRANSFORMS)])
            for t, i in enumerate(sources)]


def _pixel_rms(sig_a, sig_b) -> tuple:
    grey, colour = pixel_signature.views(np.stack([sig_a, sig_b]))
    return (round(float(np.sqrt(((grey[0] - grey[1]) ** 2).mean())), 2),
            round(float(np.sqrt(((colour[0] - colour[1]) ** 2).mean())), 2))


def calibration(originals, copies: int, seed: int = 1) -> dict:
    """Cosine and thumbnail RMS of `copies` planted copies against their originals, and
    the closest different images above the candidate cosine: what the rule's bounds rest on."""
    rng = np.random.default_rng(seed)
    n = len(originals)
    sources = rng.choice(n, size=min(copies, n), replace=False)
    encoded = list(originals) + plant_copies(originals, sources)
    unit = audit_math.normalize(features(encoded))
    sigs = [pixel_signature.signature(b) for b in encoded]
    px = audit_math.Pixels.of(sigs[:n])
    rows = [{"transform": TRANSFORMS[t % len(TRANSFORMS)],
             "cosine": round(float(unit[i] @ unit[n + t]), 3),
             "pixel_rms": _pixel_rms(sigs[i], sigs[n + t])} for t, i in enumerate(sources)]
    closest = []  # pairs of different originals above the candidate cosine
    grey_sq, colour_sq = (px.grey ** 2).sum(1), (px.colour ** 2).sum(1)
    for start in range(0, n, audit_math.BLOCK):
        stop = min(start + audit_math.BLOCK, n)
        s = unit[start:stop] @ unit[:n].T
        grey = pixel_signature.rms_block(px.grey[start:stop], px.grey, grey_sq)
        colour = pixel_signature.rms_block(px.colour[start:stop], px.colour, colour_sq)
        i, j = np.nonzero(s >= audit_math.CANDIDATE_THRESHOLD)
        for a, b in zip(i[i + start < j], j[i + start < j]):
            closest.append((max(grey[a, b] / audit_math.PIXEL_GREY_RMS,
                                colour[a, b] / audit_math.PIXEL_COLOUR_RMS),
                            {"indices": [int(a + start), int(b)],
                             "cosine": round(float(s[a, b]), 3),
                             "grey_rms": round(float(grey[a, b]), 2),
                             "colour_rms": round(float(colour[a, b]), 2)}))
    closest.sort(key=lambda c: c[0])
    passing = [r for r in rows if audit_math.pixel_rule(r["cosine"], *r["pixel_rms"])]
    return {"copies": len(rows), "copies_passing_rule": len(passing),
            "copy_cosine_min": min(r["cosine"] for r in rows),
            "copy_grey_rms_max": max(r["pixel_rms"][0] for r in rows),
            "copy_colour_rms_max": max(r["pixel_rms"][1] for r in rows),
            "different_pairs_above_candidate_cosine": len(closest),
            "different_pairs_passing_rule": sum(1 for ratio, _ in closest if ratio <= 1.0),
            "closest_different": [pair for _, pair in closest[:5]]}


def evaluate(name: str, images, copies: int, seed: int = 0, calibration_copies: int = 0) -> dict:
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
    originals = list(encoded)
    encoded += plant_copies(originals, sources)
    for i in sources:
        other = rng.choice([c for c in range(len(classes)) if c != label[i]])
        noisy = np.append(noisy, other)
        label = np.append(label, label[i])
        paths.append(f"{classes[other]}/copy_of_{pathlib.Path(paths[i]).stem}.jpg")
        planted.add(frozenset((paths[i], paths[-1])))
    splits = np.where(rng.random(len(encoded)) < 0.2, "eval", "train").tolist()
    start = time.perf_counter()
    vectors = features(encoded)
    feature_s = time.perf_counter() - start
    start = time.perf_counter()
    signatures = [pixel_signature.signature(b) for b in encoded]
    signature_s = time.perf_counter() - start

    unit = audit_math.normalize(vectors)
    copy_sims = [float(unit[i] @ unit[n + t]) for t, i in enumerate(sources)]
    _, nn_sims, _ = audit_math.neighbours_and_pairs(unit[:n], 1, 2.0)
    transform_of = [TRANSFORMS[t % len(TRANSFORMS)] for t in range(copies)]
    result = {"dataset": name, "images": len(encoded), "classes": len(classes),
              "moved": len(moved), "planted_copies": copies, "feature_seconds": round(feature_s, 2),
              "signature_seconds": round(signature_s, 3),
              "copy_similarities": [{"scale": t[0], "jpeg_quality": t[1], "similarity": round(s, 4),
                                     "pixel_rms": _pixel_rms(signatures[i], signatures[n + k])}
                                    for k, (t, s, i) in enumerate(
                                        zip(transform_of, copy_sims, sources))],
              "nearest_other_image_similarity": {
                  q: round(float(np.quantile(nn_sims[:, 0], float(q))), 4)
                  for q in ("0.5", "0.9", "0.99", "0.999", "1.0")},
              "methods": {}}
    moved_paths = {paths[i] for i in moved}
    for method in audit_math.METHODS:
        start = time.perf_counter()
        audit = audit_math.audit(vectors, noisy, splits, paths, classes, method=method,
                                 signatures=signatures)
        seconds = time.perf_counter() - start
        top = [s.path for s in audit.suspected_mislabels[:2 * len(moved)]]
        fixed = sum(1 for s in audit.suspected_mislabels if s.path in moved_paths
                    and s.suggested_label == classes[label[paths.index(s.path)]])
        result["methods"][method] = {
            "moved_in_top_2k": round(len([p for p in top if p in moved_paths]) / len(moved), 3),
            "suggested_label_right_for_found": fixed,
            "listed_suspects": len(audit.suspected_mislabels), "seconds": round(seconds, 3)}
    cosine_alone = audit_math.audit(vectors, noisy, splits, paths, classes)
    result["near_duplicates"] = {"rule": audit.to_json()["duplicate_rule"],
                                 "rule_with_pixels": _duplicate_quality(audit, planted, copies),
                                 "cosine_alone": _duplicate_quality(cosine_alone, planted, copies)}
    if calibration_copies:
        result["calibration"] = calibration(originals, calibration_copies)
    return result


def _duplicate_quality(audit, planted, copies: int) -> dict:
    found_pairs = {frozenset(p.paths) for p in audit.near_duplicates}
    hits = len(planted & found_pairs)
    return {"threshold": audit.duplicate_threshold, "planted_found": hits,
            "recall": round(hits / copies, 3) if copies else None,
            "pairs_reported": len(found_pairs),
            "precision": round(hits / len(found_pairs), 3) if found_pairs else None,
            "unplanted_examples": [list(p.paths) for p in audit.near_duplicates
                                   if frozenset(p.paths) not in planted][:10]}


def timing(n: int, dim: int = 1024, classes: int = 10) -> dict:
    rng = np.random.default_rng(0)
    vectors = np.abs(rng.standard_normal((n, dim), dtype=np.float32))  # ReLU-like, as features
    labels = rng.integers(0, classes, n)
    splits = ["train"] * n
    paths = [f"c/{i}.png" for i in range(n)]
    names = [f"c{i}" for i in range(classes)]
    signatures = list(rng.integers(0, 256, (n, pixel_signature.DIM), dtype=np.uint8))
    out = {"images": n, "dim": dim}
    for method in audit_math.METHODS:
        tracemalloc.start()
        start = time.perf_counter()
        audit_math.audit(vectors, labels, splits, paths, names, method=method,
                         signatures=signatures)
        out[method] = {"seconds": round(time.perf_counter() - start, 2),
                       "peak_mib": round(tracemalloc.get_traced_memory()[1] / 2**20, 1)}
        tracemalloc.stop()
    out["input_mib"] = round(vectors.nbytes / 2**20, 1)
    out["n_by_n_float32_mib"] = round(n * n * 4 / 2**20, 1)
    return out


def signature_cost(repeat: int = 5) -> dict:
    """Milliseconds per pixel signature of large photos, as DataAudit computes them
    from the stored bytes: a 12 MP JPEG (decoded at a reduced scale) and a 3 MP PNG."""
    rng = np.random.default_rng(0)
    out = {}
    for name, (w, h), fmt in (("jpeg_4000x3000", (4000, 3000), "JPEG"),
                              ("png_2000x1500", (2000, 1500), "PNG")):
        base = rng.integers(0, 256, (h // 50, w // 50, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)  # smooth, photo-like
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        start = time.perf_counter()
        for _ in range(repeat):
            pixel_signature.signature(buf.getvalue())
        out[name] = {"ms": round((time.perf_counter() - start) / repeat * 1000, 1),
                     "file_kib": len(buf.getvalue()) >> 10}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, default=80, help="images per class (<= 800 in all)")
    ap.add_argument("--copies", type=int, default=5, help="resized JPEG copies planted")
    ap.add_argument("--calibration-copies", type=int, default=50,
                    help="copies planted (apart) to calibrate the pixel check; 0: skip")
    ap.add_argument("--timing-images", type=int, default=20000)
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = ap.parse_args(argv)
    result = {"machine": machine_facts(), "datasets": [
        evaluate("emoji-google", emoji_images(args.per_class), args.copies,
                 calibration_copies=args.calibration_copies),
        evaluate("fashion-mnist", fashion_images(args.per_class), args.copies,
                 calibration_copies=args.calibration_copies)]}
    result["signature_cost"] = signature_cost()
    if args.timing_images:
        result["timing_random"] = timing(args.timing_images)
    print(write_result(result, args.output).read_text())
    return result


if __name__ == "__main__":
    main()
