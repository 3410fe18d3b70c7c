"""The data audit's arithmetic on backbone vectors: numpy only, no TensorFlow.

Given one plain vector per image (BottleneckGen's view 0), its label, split and
path, `audit()` finds

  * suspected mislabels: out-of-fold label disagreement, score = the share of
    the evidence against the image's own label, in [0, 1]:
      - "knn": each image's K nearest neighbours (cosine, itself excluded) vote,
        weighted by similarity;
      - "logreg": k-fold multinomial logistic regression on the L2-normalised
        vectors (out-of-fold probabilities), fitted by L-BFGS;
      - "knn+logreg" (DEFAULT_METHOD): the mean of the two. Measured by
        benchmarks/audit_quality.py on planted flips, it found more than either
        alone on both datasets (docs/operations.md, "Data audit").
  * near-duplicates: pairs of different images, leakage (train vs eval) and
    cross-label pairs first. Two images with pixel signatures
    (components/pixel_signature.py) pair when their cosine similarity is at
    least CANDIDATE_THRESHOLD and their 16 x 16 grey and 8 x 8 colour
    thumbnails differ by at most PIXEL_GREY_RMS and PIXEL_COLOUR_RMS: the
    cosine alone confuses shrunk copies of small images (0.78-0.96) with
    design variants (clock faces > 0.95). An image without a signature (its
    pixels could not be read) pairs on cosine >= DUPLICATE_THRESHOLD alone.
    All four numbers are calibrated by benchmarks/audit_quality.py;
  * small classes: fewer than MIN_CLASS_IMAGES images (retrain.py's warning).

Similarities come from blocked matrix products (BLOCK rows at a time): memory
is O(BLOCK x N), never N x N.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from components import pixel_signature

DEFAULT_METHOD = "knn+logreg"
METHODS = ("knn", "logreg", "knn+logreg")
NEIGHBOURS = 10
FOLDS = 5
BLOCK = 512
PAIR_CHUNK = 65536            # candidate pairs compared at a time (bounded memory)
DUPLICATE_THRESHOLD = 0.95     # cosine alone, for pairs without both pixel signatures
CANDIDATE_THRESHOLD = 0.75     # cosine, for pairs the pixel check confirms
PIXEL_GREY_RMS = 8.0           # 16 x 16 grey thumbnails' RMS difference (0..255), at most
PIXEL_COLOUR_RMS = 8.0         # 8 x 8 colour thumbnails' RMS difference (0..255), at most
LOGREG_ITERATIONS = 30         # L-BFGS iterations per fold (audit_quality.py: as many flips found
LOGREG_L2 = 1e-2               # as 150 gradient steps, a fifth of the products)
MIN_CLASS_IMAGES = 20          # retrain.py warned below this many images per class
MIN_SUSPECT_SHARE = 0.05       # list at least the top 5 % of the images ...
SUSPECT_SCORE = 0.5            # ... or every image scoring at least this, whichever is longer
MAX_DUPLICATE_PAIRS = 1000     # audit.json stays bounded on a folder full of copies


@dataclasses.dataclass(frozen=True)
class Suspect:
    path: str
    label: str
    suggested_label: str
    score: float


@dataclasses.dataclass(frozen=True)
class DuplicatePair:
    paths: Tuple[str, str]
    similarity: float
    same_label: bool
    splits: Tuple[str, str]
    pixel_rms: Optional[Tuple[float, float]] = None  # (grey, colour); None: cosine alone


@dataclasses.dataclass(frozen=True)
class Audit:
    suspected_mislabels: Tuple[Suspect, ...]
    near_duplicates: Tuple[DuplicatePair, ...]
    small_classes: Dict[str, int]          # class -> images, below min_class_images
    images: int
    method: str
    duplicate_threshold: float
    min_class_images: int
    duplicate_pairs_found: int             # before the MAX_DUPLICATE_PAIRS cut
    images_with_pixels: int = 0            # images the pixel check could use

    def to_json(self) -> dict:
        return {
            "suspected_mislabels": [dataclasses.asdict(s) for s in self.suspected_mislabels],
            "near_duplicates": [{"paths": list(p.paths), "similarity": p.similarity,
                                 "same_label": p.same_label, "splits": list(p.splits),
                                 "pixel_rms": list(p.pixel_rms) if p.pixel_rms else None}
                                for p in self.near_duplicates],
            "small_classes": dict(self.small_classes), "images": self.images,
            "method": self.method, "duplicate_threshold": self.duplicate_threshold,
            "min_class_images": self.min_class_images,
            "duplicate_pairs_found": self.duplicate_pairs_found,
            "duplicate_rule": {"candidate_threshold": CANDIDATE_THRESHOLD,
                               "pixel_grey_rms": PIXEL_GREY_RMS,
                               "pixel_colour_rms": PIXEL_COLOUR_RMS,
                               "images_with_pixels": self.images_with_pixels},
        }


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclasses.dataclass(frozen=True)
class Pixels:
    """The pixel check's inputs: thumbnails of every image (zeros where `has` is False)."""
    grey: np.ndarray     # [N, 256] float32
    colour: np.ndarray   # [N, 192] float32
    has: np.ndarray      # [N] bool: a signature could be read

    @classmethod
    def of(cls, signatures: Sequence[Optional[np.ndarray]]) -> "Pixels":
        has = np.array([sig is not None for sig in signatures], dtype=bool)
        rows = np.zeros((len(signatures), pixel_signature.DIM), dtype=np.uint8)
        for i, sig in enumerate(signatures):
            if sig is not None:
                rows[i] = sig
        grey, colour = pixel_signature.views(rows)
        return cls(grey, colour, has)


def pixel_rule(cosine, grey_rms, colour_rms):
    """Whether two images with pixel signatures are copies of one picture (elementwise)."""
    return ((np.asarray(cosine) >= CANDIDATE_THRESHOLD) & (np.asarray(grey_rms) <= PIXEL_GREY_RMS)
            & (np.asarray(colour_rms) <= PIXEL_COLOUR_RMS))


def neighbours_and_pairs(unit: np.ndarray, k: int, threshold: float, block: int = BLOCK,
                         pixels: Optional[Pixels] = None
                         ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices [N, k], similarities [N, k]) of each row's k nearest other rows,
    most similar first, and the near-duplicate pairs as an [M, 5] array of
    (i < j, similarity, grey RMS, colour RMS): pairs at or above `threshold`,
    except that two images with `pixels` pair by the pixel check instead
    (cosine >= CANDIDATE_THRESHOLD and both thumbnail differences within
    bounds); RMS is NaN for a pair by cosine alone. One BLOCK x N product at a time;
    the thumbnails are compared for candidate pairs only (cosine at or above the
    lower of the two thresholds), never block x N: that work grew with N^2 and
    dominated the audit at 6k images."""
    n = unit.shape[0]
    k = max(0, min(k, n - 1))
    idx = np.zeros((n, k), dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    pairs: List[np.ndarray] = []
    floor = min(threshold, CANDIDATE_THRESHOLD) if pixels is not None else threshold
    for start in range(0, n, block):
        stop = min(start + block, n)
        s = unit[start:stop] @ unit.T                       # [b, N]
        rows = np.arange(stop - start)
        s[rows, rows + start] = -np.inf                      # never one's own neighbour
        if k:
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            top_s = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            idx[start:stop] = np.take_along_axis(top, order, axis=1)
            sims[start:stop] = np.take_along_axis(top_s, order, axis=1)
        i, j = np.nonzero(s >= floor)
        i = i + start
        keep = i < j
        i, j = i[keep], j[keep]
        for lo in range(0, len(i), PAIR_CHUNK):  # bounded even when most pairs are candidates
            found = _confirmed(i[lo:lo + PAIR_CHUNK], j[lo:lo + PAIR_CHUNK],
                               s[i[lo:lo + PAIR_CHUNK] - start, j[lo:lo + PAIR_CHUNK]], threshold, pixels)
            if len(found):
                pairs.append(found)
    found = np.concatenate(pairs) if pairs else np.zeros((0, 5))
    return idx, sims, found


def _confirmed(i: np.ndarray, j: np.ndarray, cosine: np.ndarray, threshold: float,
               pixels: Optional[Pixels]) -> np.ndarray:
    """[M, 5] rows (i, j, cosine, grey RMS, colour RMS) of the candidate pairs that
    are near-duplicates: by the pixel check where both have signatures, else by
    cosine >= threshold (RMS NaN)."""
    grey = np.full(len(i), np.nan)
    colour = np.full(len(i), np.nan)
    dup = cosine >= threshold
    if pixels is not None and len(i):
        both = pixels.has[i] & pixels.has[j]
        grey[both] = _rms(pixels.grey[i[both]], pixels.grey[j[both]])
        colour[both] = _rms(pixels.colour[i[both]], pixels.colour[j[both]])
        dup = np.where(both, pixel_rule(cosine, grey, colour), dup)
    return np.stack([i, j, cosine, grey, colour], axis=1)[dup]


def _rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise RMS difference of two equally shaped [M, D] arrays."""
    d = a - b
    return np.sqrt((d * d).mean(axis=1))


def knn_votes(idx: np.ndarray, sims: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """[N, C]: each image's neighbours' similarity-weighted vote per class, as shares
    (rows sum to 1; a row without positive similarities is all zero)."""
    n = labels.shape[0]
    votes = np.zeros((n, classes), dtype=np.float64)
    weights = np.clip(sims, 0.0, None).astype(np.float64)
    rows = np.repeat(np.arange(n), idx.shape[1])
    np.add.at(votes, (rows, labels[idx].reshape(-1)), weights.reshape(-1))
    return votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-12)


def score_against_label(dist: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(score [N] in [0, 1], suggested class [N]) from per-class shares [N, C]: the
    share not on the image's own label, and the other class with the largest share.
    A row with no evidence (all zero) scores 0."""
    rows = np.arange(len(labels))
    own = dist[rows, labels]
    score = np.where(dist.sum(axis=1) > 0, 1.0 - own, 0.0)
    others = dist.copy()
    others[rows, labels] = -1.0
    return np.clip(score, 0.0, 1.0), np.argmax(others, axis=1)


def _fit_softmax(x: np.ndarray, y: np.ndarray, classes: int,
                 iterations: int = LOGREG_ITERATIONS, l2: float = LOGREG_L2
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with an L2 penalty on the weights, by L-BFGS
    (scipy) for at most `iterations` (x: standardised rows).

    Each function evaluation costs two [N, D] x [D, C] products, so the fit costs
    O(N D C) per iteration. Full-batch gradient descent (150 steps with momentum,
    before 2026-12-01) took DataAudit 35 s on 3,707 images of 89 classes; L-BFGS
    converges in about a fifth of the evaluations and found as many planted flips
    or more (benchmarks/audit_quality.py; docs/operations.md, "Data audit")."""
    from scipy.optimize import minimize
    n, d = x.shape
    onehot = np.eye(classes, dtype=np.float32)[y]
    rows = np.arange(n)

    def loss_and_grad(theta: np.ndarray) -> Tuple[float, np.ndarray]:
        w = theta[:d * classes].reshape(d, classes).astype(np.float32)
        b = theta[d * classes:].astype(np.float32)
        p = _softmax(x @ w + b)
        loss = -np.log(p[rows, y].astype(np.float64) + 1e-12).mean() + 0.5 * l2 * float(np.sum(w * w))
        g = (p - onehot) / n
        return float(loss), np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(axis=0)]).astype(np.float64)

    found = minimize(loss_and_grad, np.zeros(d * classes + classes), jac=True, method="L-BFGS-B",
                     options={"maxiter": iterations})
    return (found.x[:d * classes].reshape(d, classes).astype(np.float32),
            found.x[d * classes:].astype(np.float32))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def oof_probabilities(unit: np.ndarray, labels: np.ndarray, classes: int, folds: int = FOLDS,
                      seed: int = 0) -> np.ndarray:
    """[N, C] out-of-fold class probabilities of a softmax regression (k folds)."""
    n = unit.shape[0]
    x = (unit - unit.mean(axis=0)) * np.float32(np.sqrt(unit.shape[1]))  # unit-variance-ish
    fold = np.random.default_rng(seed).permutation(n) % max(2, min(folds, n))
    probs = np.zeros((n, classes), dtype=np.float64)
    for f in np.unique(fold):
        test = fold == f
        w, b = _fit_softmax(x[~test], labels[~test], classes)
        probs[test] = _softmax(x[test] @ w + b)
    return probs


def mislabel_scores(method: str, unit: np.ndarray, idx: np.ndarray, sims: np.ndarray,
                    labels: np.ndarray, classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(score, suggested class) by `method`. "knn+logreg" averages the two
    distributions: they err on different images, and the average found more
    planted flips than either on both benchmark datasets."""
    if method == "knn":
        dist = knn_votes(idx, sims, labels, classes)
    elif method == "logreg":
        dist = oof_probabilities(unit, labels, classes)
    else:
        dist = (knn_votes(idx, sims, labels, classes) + oof_probabilities(unit, labels, classes)) / 2
    return score_against_label(dist, labels)


def suspect_count(scores: np.ndarray) -> int:
    """At least the top 5 % of the images, or all scoring >= 0.5, whichever is longer."""
    return int(max(np.ceil(MIN_SUSPECT_SHARE * len(scores)), np.sum(scores >= SUSPECT_SCORE)))


def audit(vectors: np.ndarray, labels: Sequence[int], splits: Sequence[str],
          paths: Sequence[str], label_names: Sequence[str], method: str = DEFAULT_METHOD,
          duplicate_threshold: float = DUPLICATE_THRESHOLD,
          min_class_images: int = MIN_CLASS_IMAGES, block: int = BLOCK,
          signatures: Optional[Sequence[Optional[np.ndarray]]] = None) -> Audit:
    """The audit of N images: vectors [N, D], label indices into label_names;
    signatures: each image's pixel_signature.signature() (None: unreadable), or
    None for none at all (near-duplicates by cosine alone)."""
    if method not in METHODS:
        raise ValueError(f"audit method must be one of {METHODS}, got {method!r}")
    y = np.asarray(labels, dtype=np.int64)
    n = len(y)
    if not (len(vectors) == len(splits) == len(paths) == n):
        raise ValueError("vectors, labels, splits and paths differ in length")
    if signatures is not None and len(signatures) != n:
        raise ValueError("signatures and labels differ in length")
    pixels = Pixels.of(signatures) if signatures is not None else None
    with_pixels = int(pixels.has.sum()) if pixels is not None else 0
    if n and (y.min() < 0 or y.max() >= len(label_names)):
        raise ValueError(f"a label index is outside the {len(label_names)} label names")
    classes = len(label_names)
    counts = np.bincount(y, minlength=classes) if n else np.zeros(classes, dtype=np.int64)
    small = {label_names[c]: int(counts[c]) for c in range(classes) if counts[c] < min_class_images}
    if n < 2:
        return Audit((), (), small, n, method, duplicate_threshold, min_class_images, 0,
                     with_pixels)
    unit = normalize(np.asarray(vectors).reshape(n, -1))
    idx, sims, pairs = neighbours_and_pairs(unit, NEIGHBOURS, duplicate_threshold, block, pixels)
    score, suggested = mislabel_scores(method, unit, idx, sims, y, classes)
    order = np.lexsort((np.asarray(paths), -score))  # most suspicious first, then by path
    suspects = tuple(Suspect(paths[i], label_names[y[i]], label_names[suggested[i]],
                             round(float(score[i]), 4))
                     for i in order[:suspect_count(score)])
    return Audit(suspects, _ranked_pairs(pairs, y, splits, paths, label_names) if len(pairs) else (),
                 small, n, method, duplicate_threshold, min_class_images, len(pairs), with_pixels)


def _ranked_pairs(pairs: np.ndarray, y: np.ndarray, splits: Sequence[str], paths: Sequence[str],
                  label_names: Sequence[str]) -> Tuple[DuplicatePair, ...]:
    """Leakage (train vs eval) first, then cross-label, then by similarity."""
    del label_names
    rows = []
    for i, j, s, grey, colour in pairs:
        i, j = int(i), int(j)
        rms = None if np.isnan(grey) else (round(float(grey), 2), round(float(colour), 2))
        a, b = sorted([i, j], key=lambda t: paths[t])
        leak, same = splits[a] != splits[b], bool(y[a] == y[b])
        rows.append(((not leak, same, -float(s), paths[a], paths[b]),
                     DuplicatePair((paths[a], paths[b]), round(min(float(s), 1.0), 4), same,
                                   (splits[a], splits[b]), rms)))
    rows.sort(key=lambda r: r[0])
    return tuple(p for _, p in rows[:MAX_DUPLICATE_PAIRS])
