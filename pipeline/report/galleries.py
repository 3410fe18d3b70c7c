"""The report's two image galleries, with small embedded thumbnails.

  audit          "Data audit": DataAudit's audit.json (components/data_audit.py):
                 the top suspected mislabels (label, suggested label, score),
                 near-duplicate pairs (leakage and cross-label pairs first),
                 classes below the recommended size.
  misclassified  "Misclassified eval images": the Trainer's head (head/head.h5)
                 on the eval split's bottleneck vectors; true label, predicted
                 label and confidence, grouped by true class.

Thumbnails are THUMB_PX JPEGs (about 2 KB each) of the images ImageExampleGen
stored, and each list is cut at a fixed length, so the page stays small
whatever the dataset's size (well under 5 MB at 2,000 images).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
from typing import Dict, List, Optional, Sequence, Set, Tuple

from components import contracts
from pipeline.report.html import e, num, table
from pipeline.run_record import RunRecord

THUMB_PX = 56
MAX_SUSPECTS = 24
MAX_PAIRS = 12
MAX_MISCLASSIFIED = 60
MAX_PER_CLASS = 12
MAX_IMAGE_BYTES = 32 << 20  # ImageExampleGen bounds its files; never decode more
CSS = (".thumb{width:%dpx;height:%dpx;object-fit:contain;border:1px solid #ddd;background:#fff}"
       % (THUMB_PX, THUMB_PX))


@dataclasses.dataclass(frozen=True)
class Misclassified:
    path: str
    true_label: str
    predicted: str
    confidence: float


def thumbnail(data: bytes) -> Optional[str]:
    """A data: URI of a THUMB_PX JPEG of encoded image `data` (None: undecodable)."""
    from PIL import Image
    if len(data) > MAX_IMAGE_BYTES:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))  # JPEG: decode at a reduced size
            rgba = img.convert("RGBA")
            rgba.thumbnail((THUMB_PX, THUMB_PX))
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            buf = io.BytesIO()
            flat.save(buf, format="JPEG", quality=70)
    except Exception:  # noqa: BLE001 - a broken image shows as a missing thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(uri: Optional[str], alt: str) -> str:
    if uri is None:
        return '<span class="na">(no image)</span>'
    return f'<img class="thumb" src="{uri}" alt="{e(alt)}">'


def image_bytes(examples_uri: Optional[str], paths: Set[str]) -> Dict[str, bytes]:
    """path -> the stored image bytes, for `paths` only (ImageExampleGen's Examples)."""
    if not examples_uri or not paths:
        return {}
    import tensorflow as tf
    spec = {contracts.RELATIVE_PATH_KEY: tf.io.FixedLenFeature([], tf.string),
            contracts.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-*", "*")))
    found: Dict[str, bytes] = {}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(256):
        parsed = tf.io.parse_example(batch, spec)
        for path, data in zip(parsed[contracts.RELATIVE_PATH_KEY].numpy(),
                              parsed[contracts.IMAGE_KEY].numpy()):
            name = path.decode("utf-8", "replace")
            if name in paths:
                found[name] = data
        if len(found) == len(paths):
            break
    return found


def misclassified(record: RunRecord) -> Optional[List[Misclassified]]:
    """Eval images the run's head gets wrong, most confident first (None: no model or vectors)."""
    if not record.uris.model or not record.uris.bottlenecks or not record.uris.examples:
        return None
    import numpy as np
    import tensorflow as tf

    from components import data_audit, trainer
    if not tf.io.gfile.exists(os.path.join(trainer.head_dir(record.uris.model), trainer.HEAD_INFO_FILE)):
        return None  # a model from before the head was saved on its own
    head, info = trainer.load_head(record.uris.model)
    x, y, shas = data_audit.read_vectors(record.uris.bottlenecks, "eval")
    if not len(y):
        return []
    # Called directly, as the serving signatures call it: Keras' predict() traced a
    # predict function with AutoGraph first, 3 s of every run's report at 2,000 images.
    probs = np.concatenate([head(tf.constant(x[i:i + 1024]), training=False).numpy()
                            for i in range(0, len(x), 1024)])
    predicted = np.argmax(probs, axis=1)
    paths = data_audit.read_paths(record.uris.examples, ["eval"])
    names = list(info["label_names"])
    wrong = [i for i in np.argsort(-probs.max(axis=1), kind="stable") if predicted[i] != y[i]]
    return [Misclassified(paths.get(shas[i], shas[i]), names[y[i]], names[predicted[i]],
                          float(probs[i, predicted[i]])) for i in wrong]


def section_audit(record: RunRecord) -> str:
    from pipeline import audit_cli
    audit = audit_cli.read_audit(record.uris.data_audit)
    if audit is None:
        return '<p class="na">No data audit in this run (it stopped before DataAudit, or predates it).</p>'
    suspects = audit["suspected_mislabels"][:MAX_SUSPECTS]
    pairs = audit["near_duplicates"][:MAX_PAIRS]
    images = image_bytes(record.uris.examples,
                         {s["path"] for s in suspects} | {p for pair in pairs for p in pair["paths"]})
    thumbs = {path: thumbnail(data) for path, data in images.items()}
    parts = [f'<p>{e(audit.get("images"))} images audited from their backbone '
             f'vectors (method {e(audit.get("method"))}). '
             f'<code>retrain audit --workdir &hellip; --json</code> lists everything.</p>']
    total = len(audit["suspected_mislabels"])
    parts.append(f"<h3>Suspected mislabels ({total}; top {len(suspects)} shown)</h3>")
    parts.append(table(["image", "path", "label", "suggested label", "score"], [
        [_thumb(thumbs.get(s["path"]), s["path"]), f"<code>{e(s['path'])}</code>", e(s["label"]),
         e(s["suggested_label"]), num(s["score"], 2)] for s in suspects], cls="gallery")
        if suspects else '<p class="na">none</p>')
    leaks = sum(1 for p in audit["near_duplicates"] if len(set(p["splits"])) > 1)
    parts.append(f"<h3>Near-duplicates ({len(audit['near_duplicates'])} pairs, {leaks} across "
                 f"train/eval; {_duplicate_rule(audit)})</h3>")
    parts.append(table(["images", "paths", "similarity", "splits", "labels"], [
        [" ".join(_thumb(thumbs.get(p), p) for p in pair["paths"]),
         "<br>".join(f"<code>{e(p)}</code>" for p in pair["paths"]), num(pair["similarity"], 3),
         e(" / ".join(pair["splits"])) + (' <span class="bad">leakage</span>'
                                          if len(set(pair["splits"])) > 1 else ""),
         "same" if pair["same_label"] else '<span class="bad">differ</span>']
        for pair in pairs], cls="gallery") if pairs else '<p class="na">none</p>')
    small = audit["small_classes"]
    parts.append(f"<p>Classes under {e(audit.get('min_class_images'))} images: "
                 + (", ".join(f"{e(k)} ({e(v)})" for k, v in sorted(small.items())) or "none")
                 + "</p>")
    return "".join(parts)


def _duplicate_rule(audit: dict) -> str:
    """How the pairs were found; an audit.json from before the pixel check has no rule."""
    cosine = f"cosine similarity &ge; {num(audit.get('duplicate_threshold'), 2)}"
    rule = audit.get("duplicate_rule")
    if not isinstance(rule, dict) or not rule.get("images_with_pixels"):
        return cosine
    return (f"cosine &ge; {num(rule.get('candidate_threshold'), 2)} and thumbnails alike: "
            f"16&times;16 grey RMS &le; {num(rule.get('pixel_grey_rms'), 1)}, 8&times;8 colour RMS "
            f"&le; {num(rule.get('pixel_colour_rms'), 1)}; images without pixels: {cosine}")


def section_misclassified(record: RunRecord) -> str:
    found = misclassified(record)
    if found is None:
        return '<p class="na">No trained model (or no saved head) in this run.</p>'
    if not found:
        return "<p>Every eval image is classified right.</p>"
    shown = _per_class(found)
    images = image_bytes(record.uris.examples, {m.path for m in shown})
    parts = [f"<p>{len(found)} eval image(s) misclassified"
             + (f"; {len(shown)} shown, the most confident mistakes first" if len(shown) < len(found)
                else "") + ".</p>"]
    for label in sorted({m.true_label for m in shown}):
        rows = [[_thumb(thumbnail(images[m.path]) if m.path in images else None, m.path),
                 f"<code>{e(m.path)}</code>", e(m.true_label), e(m.predicted), num(m.confidence, 2)]
                for m in shown if m.true_label == label]
        parts.append(f"<h3>true class {e(label)}</h3>"
                     + table(["image", "path", "true", "predicted", "confidence"], rows, cls="gallery"))
    return "".join(parts)


def _per_class(found: Sequence[Misclassified]) -> List[Misclassified]:
    """At most MAX_PER_CLASS per true class and MAX_MISCLASSIFIED in all, in `found`'s order."""
    taken: Dict[str, int] = {}
    shown: List[Misclassified] = []
    for m in found:
        if taken.get(m.true_label, 0) < MAX_PER_CLASS and len(shown) < MAX_MISCLASSIFIED:
            taken[m.true_label] = taken.get(m.true_label, 0) + 1
            shown.append(m)
    return shown


__all__: Tuple[str, ...] = ("section_audit", "section_misclassified", "thumbnail", "misclassified")
