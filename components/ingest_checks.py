"""Ingestion checks kept between runs: content a run accepted is not decoded again.

ImageExampleGen's pass 2 decodes every kept file up to three times: Pillow's full
decode and checks, TensorFlow's decoder (image_decode.decodes) and the pixel
signature's thumbnail. A 1920 x 1280 JPEG costs about 29 ms, so a rerun on 2,000
photos with 200 new ones spent most of its ingestion re-checking the 1,800 it had
already accepted (docs/performance.md). The verdict on given bytes is a function
of those bytes, the limits (``max_pixels``, ``min_image_side``), the library
versions and the ingestion code; so for content accepted with its original bytes
kept, this module keeps (height, width, signature) per content hash, and pass 2
builds the same record from the bytes it reads (and re-hashes) anyway.

Where the checks live: each run writes ``contracts.INGEST_CHECKS_FILE`` (gzipped
JSON lines) into its Examples folder, one line per accepted image whose original
bytes were kept (re-encoded images are decoded every run). When the run checked
any content itself it adds a record with that folder and the checks' :func:`key`
under :func:`location` (``<pipeline_root>/_cache/<pipeline>/ingest_checks/``,
written and read as components/previous_artifacts.py does its registry: whole
records, the newest whose file exists wins), in every lookup mode: it is a cache
of this step's own, not an input that a lookup step passes on. A record with
another key (other limits, library versions or ingestion code) is not used.
The pipeline root is trusted like MLMD, but the file is still read as untrusted:
a malformed file is ignored as a whole (logged) and every image is decoded. A
cache that cannot be read or written costs time, never the run.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import os
import re
from typing import Dict, Iterable, NamedTuple, Optional

from absl import logging

from components import contracts, pixel_signature

FORMAT = 1
CACHE_DIR = "_cache"  # under the pipeline root, beside the lookups' _registry
# The modules whose code decides a verdict: an edit to any of them invalidates every check.
_VERDICT_MODULES = ("image_io.py", "image_decode.py", "pixel_signature.py", "ingest_passes.py",
                    "ingest_checks.py")
_SHA = re.compile(r"[0-9a-f]{64}")


class Check(NamedTuple):
    """What pass 2 would find again for one content hash."""
    height: int
    width: int
    signature: bytes  # the Example's pixel_signature feature (b"": none)


# The libraries whose decoders give a verdict (Pillow's checks, TensorFlow's decoder).
_LIBRARIES = ("pillow", "tensorflow")


@functools.lru_cache(maxsize=None)
def _code_digest() -> str:
    from importlib import metadata
    digest = hashlib.sha256(f"format {FORMAT}\n".encode())
    for dist in _LIBRARIES:
        try:
            digest.update(f"{dist}=={metadata.version(dist)}\n".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{dist} absent\n".encode())
    here = os.path.dirname(os.path.abspath(__file__))
    for name in _VERDICT_MODULES:
        with open(os.path.join(here, name), "rb") as f:
            digest.update(name.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def key(max_pixels: int, min_image_side: int) -> str:
    """The checks' validity key: the limits a verdict depends on, the libraries and the code.
    (``max_file_bytes`` is checked on every read, before a check is looked up.)"""
    text = json.dumps({"code": _code_digest(), "max_pixels": int(max_pixels),
                       "min_image_side": int(min_image_side)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def line(sha: str, check: Check) -> str:
    """One line of the checks file."""
    return json.dumps({"sha256": sha, "height": check.height, "width": check.width,
                       "signature": base64.b64encode(check.signature).decode("ascii")}, sort_keys=True)


def parse(lines: Iterable[str]) -> Dict[str, Check]:
    """The checks of a file's lines; ValueError naming the first bad line."""
    out: Dict[str, Check] = {}
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            d = json.loads(text)
            sha, h, w = d["sha256"], d["height"], d["width"]
            sig = base64.b64decode(d["signature"], validate=True)
            ok = (isinstance(sha, str) and _SHA.fullmatch(sha) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (h, w))
                and len(sig) in (0, pixel_signature.DIM))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"line {n}: {type(e).__name__}: {str(e)[:100]}") from None
        if not ok:
            raise ValueError(f"line {n}: not a check: {text[:120]!r}")
        out[sha] = Check(h, w, sig)
    return out


def location(pipeline_root: str, pipeline_name: str) -> str:
    """Where a pipeline's runs record their checks (ImageExampleGen's ``checks_location``)."""
    return contracts.join(pipeline_root, CACHE_DIR, pipeline_name)


def load(where: str, expected_key: str) -> Dict[str, Check]:
    """The checks of the newest run recorded under ``where`` (:func:`location`) with
    ``expected_key``; {} when there is none, its key differs, or its file (or the
    records) cannot be read whole (logged)."""
    from components import previous_artifacts
    import tensorflow as tf
    try:
        entry = previous_artifacts.latest(where, previous_artifacts.INGEST_CHECKS)
    except (tf.errors.OpError, OSError, ValueError) as e:
        logging.warning("Ingestion: checks under %s not readable, every image is decoded: %s", where, e)
        return {}
    if entry is None:
        return {}
    if entry.get("key") != expected_key:
        logging.info("Ingestion: the recorded checks (%s) are for other limits, libraries or code: "
                     "every image is decoded", entry["record"])
        return {}
    path = contracts.join(entry["uri"], contracts.INGEST_CHECKS_FILE)
    try:
        with tf.io.gfile.GFile(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
            checks = parse(text.decode("utf-8") for text in f)
    except (OSError, EOFError, ValueError, UnicodeDecodeError, tf.errors.OpError) as e:
        logging.warning("Ingestion: checks file %s ignored, every image is decoded: %s", path, e)
        return {}
    logging.info("Ingestion: %d images' checks from %s", len(checks), path)
    return checks


def record(where: str, examples_uri: str, checks_key: str, checked: int) -> Optional[str]:
    """Records a run's checks file under ``where`` (when it checked any content itself:
    otherwise the newest record already covers every image it accepted); its path,
    or None (also when it cannot be written: logged, the next run decodes again)."""
    if not checked:
        return None
    from components import previous_artifacts
    import tensorflow as tf
    try:
        return previous_artifacts.record(where, previous_artifacts.INGEST_CHECKS,
                                         {"uri": examples_uri, "key": checks_key})
    except (tf.errors.OpError, OSError) as e:
        logging.warning("Ingestion: checks not recorded under %s: %s", where, e)
        return None
