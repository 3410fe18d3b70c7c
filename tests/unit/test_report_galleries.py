"""pipeline/report/galleries.py without a pipeline run: thumbnails and the lists' caps."""

import base64
import io
import json

from PIL import Image

from components import contracts
from conftest import png_bytes
from pipeline.report import galleries
from pipeline.run_record import ArtifactUris, RunRecord


def test_thumbnail_is_a_small_embedded_jpeg_and_junk_is_none():
    uri = galleries.thumbnail(png_bytes(1, size=(640, 480), mode="RGBA"))
    assert uri.startswith("data:image/jpeg;base64,")
    data = base64.b64decode(uri.split(",", 1)[1])
    assert len(data) < 4000
    assert max(Image.open(io.BytesIO(data)).size) == galleries.THUMB_PX
    assert galleries.thumbnail(b"not an image") is None


def test_audit_section_caps_its_lists_whatever_the_audit_holds(tmp_path):
    audit = {"images": 2000, "method": "knn+logreg", "duplicate_threshold": 0.95,
             "min_class_images": 20, "small_classes": {"owl": 3},
             "suspected_mislabels": [{"path": f"cat/{i}<b>.png", "label": "cat",
                                      "suggested_label": "dog", "score": 1 - i / 2000}
                                     for i in range(2000)],
             "near_duplicates": [{"paths": [f"cat/{i}.png", f"dog/{i}.png"], "similarity": 0.97,
                                  "same_label": False, "splits": ["train", "eval"]}
                                 for i in range(1000)]}
    (tmp_path / contracts.AUDIT_FILE).write_text(json.dumps(audit))
    record = RunRecord(run_id="r", uris=ArtifactUris(data_audit=str(tmp_path)))
    html = galleries.section_audit(record)
    assert html.count("<tr>") == 1 + galleries.MAX_SUSPECTS + 1 + galleries.MAX_PAIRS  # headers too
    assert "cat/0&lt;b&gt;.png" in html and "<b>.png" not in html  # paths are escaped
    assert "Suspected mislabels (2000; top 24 shown)" in html and "1000 pairs, 1000 across" in html
    assert "owl (3)" in html and len(html) < 100_000
    assert "cosine similarity &ge; 0.95" in html  # an audit.json from before the pixel check
    audit["duplicate_rule"] = {"candidate_threshold": 0.75, "pixel_grey_rms": 8.0,
                               "pixel_colour_rms": 8.0, "images_with_pixels": 2000}
    (tmp_path / contracts.AUDIT_FILE).write_text(json.dumps(audit))
    assert ("cosine &ge; 0.75 and thumbnails alike: 16&times;16 grey RMS &le; 8.0"
            in galleries.section_audit(record))
    empty = galleries.section_audit(RunRecord(run_id="old"))
    assert "No data audit" in empty


def test_misclassified_are_capped_per_class_and_in_all():
    found = [galleries.Misclassified(f"{c}/{i}.png", c, "x", 0.9) for c in "abcdefgh" for i in range(20)]
    shown = galleries._per_class(found)
    assert len(shown) == galleries.MAX_MISCLASSIFIED
    assert max(sum(1 for m in shown if m.true_label == c) for c in "abcdefgh") == galleries.MAX_PER_CLASS
