"""components/audit_math.py: the data audit's arithmetic on synthetic vectors."""

import tracemalloc

import numpy as np
import pytest

from components import audit_math

CLASSES = ["ant", "bee", "cat", "dog"]


def _clusters(per_class=60, dim=128, seed=0, spread=1.5):
    """Non-negative vectors around one centre per class (backbone features are ReLU outputs)."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((len(CLASSES), dim))) * 2
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    x = np.abs(centres[labels] + spread * rng.standard_normal((len(labels), dim)))
    paths = [f"{CLASSES[c]}/{i}.png" for i, c in enumerate(labels)]
    splits = ["eval" if i % 5 == 0 else "train" for i in range(len(labels))]
    return x.astype(np.float32), labels, paths, splits


@pytest.mark.parametrize("method", audit_math.METHODS)
def test_planted_flips_rank_first_with_the_true_class_suggested(method):
    x, labels, paths, splits = _clusters()
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(labels), 12, replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1) % len(CLASSES)
    audit = audit_math.audit(x, noisy, splits, paths, CLASSES, method=method)
    top = audit.suspected_mislabels[:2 * len(flipped)]
    found = [s for s in top if s.path in {paths[i] for i in flipped}]
    assert len(found) >= 0.7 * len(flipped)
    truth = {paths[i]: CLASSES[labels[i]] for i in flipped}
    assert all(s.suggested_label == truth[s.path] for s in found)
    assert all(s.label != s.suggested_label for s in audit.suspected_mislabels)


def test_scores_in_range_sorted_and_list_length_follows_the_rule():
    x, labels, paths, splits = _clusters(seed=3)
    noisy = labels.copy()
    noisy[:30] = (labels[:30] + 2) % len(CLASSES)
    audit = audit_math.audit(x, noisy, splits, paths, CLASSES)
    scores = [s.score for s in audit.suspected_mislabels]
    assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    at_least_half = sum(1 for s in scores if s >= 0.5)
    assert len(scores) == max(int(np.ceil(0.05 * len(labels))), at_least_half)
    assert at_least_half >= 20  # the flipped images dominate their neighbours' vote
    clean = audit_math.audit(*_clusters(seed=3)[:1], labels, splits, paths, CLASSES)
    assert len(clean.suspected_mislabels) == int(np.ceil(0.05 * len(labels)))  # 5 % floor


def test_near_duplicates_found_with_leakage_then_cross_label_first():
    x, labels, paths, splits = _clusters(seed=2)
    rng = np.random.default_rng(2)
    extra, ex_labels, ex_paths, ex_splits = [], [], [], []
    # (source, label of the copy, split of the copy): same-label train copy,
    # cross-label train copy, and a copy across the split (leakage).
    plan = [(1, labels[1], "train"), (2, (labels[2] + 1) % 4, "train"), (3, labels[3], "eval")]
    for src, lab, split in plan:
        assert splits[src] == "train"
        extra.append(x[src] * 1.05 + 0.01 * rng.standard_normal(x.shape[1]))
        ex_labels.append(lab)
        ex_paths.append(f"{CLASSES[lab]}/copy_{src}.jpg")
        ex_splits.append(split)
    audit = audit_math.audit(np.vstack([x, extra]), np.concatenate([labels, ex_labels]),
                             splits + ex_splits, paths + ex_paths, CLASSES)
    pairs = [set(p.paths) for p in audit.near_duplicates]
    planted = [{paths[src], ex_paths[k]} for k, (src, _, _) in enumerate(plan)]
    assert all(p in pairs for p in planted)
    first, second = audit.near_duplicates[:2]
    assert set(first.paths) == planted[2] and set(first.splits) == {"train", "eval"}
    assert set(second.paths) == planted[1] and not second.same_label
    assert all(audit.duplicate_threshold <= p.similarity <= 1.0 for p in audit.near_duplicates)
    # Different images of one class stay below the threshold.
    assert len(audit.near_duplicates) == len(plan)
    assert audit.to_json()["near_duplicates"][0]["splits"] == list(first.splits)


def test_small_classes_are_named_with_their_counts():
    x, labels, paths, splits = _clusters(per_class=25)
    keep = (labels != 3) | (np.arange(len(labels)) % 25 < 7)
    audit = audit_math.audit(x[keep], labels[keep], [s for s, k in zip(splits, keep) if k],
                             [p for p, k in zip(paths, keep) if k], CLASSES)
    assert audit.small_classes == {"dog": 7}


def test_blocked_products_match_one_block_and_never_hold_n_by_n():
    rng = np.random.default_rng(4)
    unit = audit_math.normalize(np.abs(rng.standard_normal((4000, 16))))
    unit[7] = unit[3500]  # one exact duplicate across blocks
    tracemalloc.start()
    idx, sims, pairs = audit_math.neighbours_and_pairs(unit, 5, 0.999, block=64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4000 * 4000 * 4 / 4  # a quarter of one N x N float32 matrix
    full_idx, full_sims, full_pairs = audit_math.neighbours_and_pairs(unit, 5, 0.999, block=4000)
    np.testing.assert_allclose(sims, full_sims, rtol=1e-5)
    assert [tuple(p[:2]) for p in pairs] == [tuple(p[:2]) for p in full_pairs] == [(7.0, 3500.0)]
    assert idx[7, 0] == 3500 and (idx != np.arange(4000)[:, None]).all()


def test_bad_input_is_one_line_naming_it():
    x, labels, paths, splits = _clusters(per_class=3)
    with pytest.raises(ValueError, match="method"):
        audit_math.audit(x, labels, splits, paths, CLASSES, method="forest")
    with pytest.raises(ValueError, match="outside"):
        audit_math.audit(x, labels + 4, splits, paths, CLASSES)
    with pytest.raises(ValueError, match="length"):
        audit_math.audit(x, labels, splits[:-1], paths, CLASSES)
    empty = audit_math.audit(np.zeros((0, 4)), [], [], [], CLASSES)
    assert empty.suspected_mislabels == () and empty.small_classes == {c: 0 for c in CLASSES}


def _clock(hour: int, side: int = 64) -> "PIL.Image.Image":
    """A clock face with one hand: lookalike images that differ in a small detail."""
    import math

    from PIL import Image, ImageDraw
    img = Image.new("RGB", (side, side), "white")
    d = ImageDraw.Draw(img)
    d.ellipse([4, 4, side - 5, side - 5], fill=(250, 220, 120), outline="black", width=3)
    angle = math.radians(hour * 30 - 90)
    c = side / 2
    d.line([c, c, c + 0.4 * side * math.cos(angle), c + 0.4 * side * math.sin(angle)],
           fill="black", width=5)
    return img


def _encoded(img, fmt="PNG", scale=1.0, quality=85) -> bytes:
    import io

    from PIL import Image
    if scale != 1.0:
        img = img.resize((int(img.width * scale), int(img.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def test_pixel_check_pairs_a_shrunk_copy_and_not_a_lookalike():
    """The clock-face case: a shrunk JPEG copy whose cosine is under DUPLICATE_THRESHOLD
    pairs, two different clock faces above it do not; without signatures (or for an
    image whose pixels cannot be read) the cosine alone decides, as before."""
    from components import pixel_signature
    x, labels, paths, splits = _clusters(per_class=20, seed=5)
    rng = np.random.default_rng(5)
    base = np.abs(rng.standard_normal(x.shape[1])).astype(np.float32) * 3

    def near(cosine):  # a vector at the given cosine from `base`
        noise = rng.standard_normal(x.shape[1]).astype(np.float32)
        noise -= (noise @ base) / (base @ base) * base
        noise *= np.linalg.norm(base) / np.linalg.norm(noise)
        return cosine * base + np.sqrt(1 - cosine ** 2) * noise

    images = {"cat/clock3.png": (_encoded(_clock(3)), base),
              "cat/clock4.png": (_encoded(_clock(4)), near(0.97)),
              "dog/copy_of_clock3.jpg": (_encoded(_clock(3), "JPEG", 0.75, 85), near(0.85))}
    sigs = [pixel_signature.signature(b"not an image")] * len(labels)  # None: cosine alone
    assert sigs[0] is None
    sigs += [pixel_signature.signature(data) for data, _ in images.values()]
    vectors = np.vstack([x] + [v for _, v in images.values()])
    all_labels = np.concatenate([labels, [0, 0, 1]])
    all_paths, all_splits = paths + list(images), splits + ["train"] * 3
    pairs = lambda audit: {frozenset(p.paths) for p in audit.near_duplicates}  # noqa: E731
    checked = audit_math.audit(vectors, all_labels, all_splits, all_paths, CLASSES, signatures=sigs)
    assert pairs(checked) == {frozenset({"cat/clock3.png", "dog/copy_of_clock3.jpg"})}
    pair = checked.near_duplicates[0]
    assert audit_math.CANDIDATE_THRESHOLD <= pair.similarity < audit_math.DUPLICATE_THRESHOLD
    assert pair.pixel_rms[0] <= audit_math.PIXEL_GREY_RMS and not pair.same_label
    assert checked.to_json()["duplicate_rule"]["images_with_pixels"] == 3
    cosine_alone = audit_math.audit(vectors, all_labels, all_splits, all_paths, CLASSES)
    assert pairs(cosine_alone) == {frozenset({"cat/clock3.png", "cat/clock4.png"})}
    assert cosine_alone.near_duplicates[0].pixel_rms is None
    sigs[-2] = None  # clock4's pixels unreadable: its pair with clock3 falls back to the cosine
    fallback = audit_math.audit(vectors, all_labels, all_splits, all_paths, CLASSES, signatures=sigs)
    assert pairs(fallback) == pairs(checked) | pairs(cosine_alone)


def test_pixel_pairs_match_every_pair_checked_by_hand_across_chunks(monkeypatch):
    """The thumbnails are compared for candidate pairs only, a chunk at a time: the
    pairs equal a brute-force check of every pair by the documented rule, on vectors
    so alike that nearly every pair is a candidate, with pixels missing for some."""
    rng = np.random.default_rng(11)
    n = 300
    unit = audit_math.normalize(np.abs(rng.standard_normal((n, 32))) + 3.0)  # cosines ~0.9
    sigs = [rng.integers(0, 256, 768, dtype=np.uint8) for _ in range(n)]
    for i in range(0, n, 7):  # close thumbnails: within the RMS bounds of their neighbour
        sigs[i + 1 if i + 1 < n else i] = np.clip(sigs[i].astype(int) + rng.integers(-3, 4, 768), 0, 255).astype(np.uint8)
    sigs = [None if i % 11 == 0 else s for i, s in enumerate(sigs)]
    unit[0] = unit[150]  # image 0 has no signature: pairs by cosine alone
    pixels = audit_math.Pixels.of(sigs)
    monkeypatch.setattr(audit_math, "PAIR_CHUNK", 97)
    _, _, pairs = audit_math.neighbours_and_pairs(unit, 3, 0.999, block=64, pixels=pixels)
    expected = set()
    for i in range(n):
        for j in range(i + 1, n):
            cosine = float(unit[i] @ unit[j])
            if pixels.has[i] and pixels.has[j]:
                grey = np.sqrt(((pixels.grey[i] - pixels.grey[j]) ** 2).mean())
                colour = np.sqrt(((pixels.colour[i] - pixels.colour[j]) ** 2).mean())
                if audit_math.pixel_rule(cosine, grey, colour):
                    expected.add((i, j))
            elif cosine >= 0.999:
                expected.add((i, j))
    found = {(int(p[0]), int(p[1])) for p in pairs}
    assert found == expected and (0, 150) in found and len(found) > 30
    assert all(np.isnan(p[3]) == (not (pixels.has[int(p[0])] and pixels.has[int(p[1])])) for p in pairs)
