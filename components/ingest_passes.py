"""ImageExampleGen's two passes over the files, as Beam DoFns (the pipeline that
joins them: components/image_example_gen.py ``_ImagesToExample``).

Pass 1 (:class:`HashFn`) hashes each file; the hashes are grouped and
:class:`ResolveFn` keeps one file per content (duplicates and label conflicts);
pass 2 (:class:`DecodeFn`) reads each kept file again, checks it, or takes an
earlier run's checks of the same content (components/ingest_checks.py), and
emits its record, its report rows and its line of this run's checks.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

import apache_beam as beam

from components import image_decode, image_io, ingest_checks, pixel_signature, progress_counts
from components.settings import IngestSettings

PROGRESS_STAGE = "ImageExampleGen"  # the live bar's name for this step (components.progress_counts)
REPORT_TAG = "report"
# Pass 2's verdicts per kept file, also the names of its Beam counters (METRICS_NAMESPACE).
DECODED, REUSED, REJECTED = "decoded", "reused_checks", "rejected"
METRICS_NAMESPACE = "image_example_gen"
CHECKS_TAG = "checks"
# Pass 2 checks batches of DECODE_BATCH files on decode_threads() threads: one decoded
# image per thread in memory at once, and a batch's records until they are written.
DECODE_BATCH, MAX_DECODE_THREADS = 16, 4


def decode_threads() -> int:
    """Threads for decoding images (pass 2, DataAudit's signatures of older Examples):
    one per core this process may use, at most MAX_DECODE_THREADS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_DECODE_THREADS, cores))


class CountingFn(beam.DoFn):
    """A DoFn that adds to the live bar's count of files read (``self._progress``)."""

    def setup(self):
        self._progress = progress_counts.Counter(PROGRESS_STAGE)

    def finish_bundle(self):
        self._progress.close()


class HashFn(CountingFn):
    """Pass 1. Candidate -> (sha, (relpath, label, path)), or a report row when
    unreadable. Only the hash travels on: the bytes are read again in pass 2."""

    def __init__(self, settings: IngestSettings):
        self._max_file_bytes = settings.max_file_bytes
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, REJECTED)

    def process(self, cand: image_io.Candidate):
        try:
            raw = image_io.read_bytes(cand.path, self._max_file_bytes)
        except image_io.ImageRejected as e:
            yield from self._reject(cand, str(e))
            return
        except Exception as e:  # permissions, vanished file, remote error
            yield from self._reject(cand, f"unreadable file: {e}")
            return
        yield image_io.content_hash(raw), (cand.relpath, cand.label, cand.path)

    def _reject(self, cand, reason):
        self._rejected.inc()
        self._progress.add()
        yield beam.pvalue.TaggedOutput(REPORT_TAG, row(cand.relpath, cand.label, reason))


class ResolveFn(CountingFn):
    """One content hash, all files with it -> (sha, kept file, its duplicates) or, for
    a label conflict, its report rows. Hashes and paths only: no image bytes."""

    def __init__(self, exclude_conflicts: bool):
        self._exclude_conflicts = exclude_conflicts

    def process(self, item):
        sha, files = item
        files = sorted(files)
        labels = sorted({label for _, label, _ in files})
        if len(labels) > 1 and self._exclude_conflicts:
            self._progress.add(len(files))  # pass 2 counts the files it decides on
            paths = ", ".join(relpath for relpath, _, _ in files)
            for relpath, label, _ in files:
                yield beam.pvalue.TaggedOutput(REPORT_TAG, row(
                    relpath, label, f"label conflict: identical content filed under labels {labels} ({paths})"))
            return
        yield sha, files[0], [(relpath, label) for relpath, label, _ in files[1:]]


class DecodeFn(CountingFn):
    """Pass 2. Batches of (sha, kept file, duplicates) -> the records to write, and the
    report rows of each file and its duplicates, in order. The bytes are read again and
    must still hash to ``sha``; an image is decoded and checked here, once per content,
    unless an earlier run's checks (``checks``: location, key; components/ingest_checks.py)
    hold it: then its record is built from those and the bytes just read. Each accepted
    image whose original bytes are kept also yields its line of this run's checks.

    The files of a batch are checked on ``threads`` threads (default: decode_threads()
    of the machine the DoFn runs on): reading, hashing and Pillow's and TensorFlow's
    decoders release the GIL, and Beam's in-memory runner otherwise runs this step on
    one core (a photo takes some 50 ms). Beam's metrics and the live count are updated
    from the DoFn's own thread (a metric updated from another thread is lost)."""

    def __init__(self, label_index: Dict[str, int], settings: IngestSettings, threads: Optional[int] = None,
                 checks: Optional[Tuple[str, str]] = None):
        self._label_index = label_index
        self._checks_source = checks
        self._max_pixels = settings.max_pixels
        self._max_file_bytes = settings.max_file_bytes
        self._min_side = settings.min_image_side
        self._threads = threads  # None: decode_threads() where the DoFn runs
        self._decoded = beam.metrics.Metrics.counter(METRICS_NAMESPACE, DECODED)
        self._reused = beam.metrics.Metrics.counter(METRICS_NAMESPACE, REUSED)
        self._rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, REJECTED)

    def setup(self):
        super().setup()
        self._checks = ingest_checks.load(*self._checks_source) if self._checks_source else {}
        threads = self._threads or decode_threads()
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown()

    def process(self, groups):
        results = self._pool.map(self._check, groups) if self._pool else map(self._check, groups)
        for group, (verdict, outputs) in zip(groups, results):
            self._progress.add(1 + len(group[2]))
            if verdict == REJECTED:  # the kept file and each duplicate
                self._rejected.inc(len(outputs))
            else:
                (self._reused if verdict == REUSED else self._decoded).inc()
            yield from outputs

    def _check(self, group) -> Tuple[str, List[Any]]:
        """One kept file's verdict (DECODED, REUSED or REJECTED) and outputs: its record,
        report row and check, or the rejection rows."""
        sha, (relpath, label, path), duplicates = group
        try:
            raw = image_io.read_bytes(path, self._max_file_bytes)
            if image_io.content_hash(raw) != sha:
                raise image_io.ImageRejected("the file changed while it was being ingested")
            known = self._checks.get(sha)
            if known is not None:  # accepted before, original bytes kept: the same record
                return REUSED, self._accepted(sha, relpath, label, duplicates, raw, known)
            img = image_io.decode(raw, self._max_pixels, min_side=self._min_side)
        except image_io.ImageRejected as e:
            return REJECTED, self._reject(relpath, label, duplicates, str(e))
        except Exception as e:  # permissions, vanished file, remote error
            return REJECTED, self._reject(relpath, label, duplicates, f"unreadable file: {e}")
        if not img.reencoded and not image_decode.decodes(img.data):
            # Pillow read it but TF's decoder would fail in Transform: hand TF a PNG.
            img = image_io.decode(raw, self._max_pixels, keep_original=False, min_side=self._min_side)
        # DataAudit's thumbnail, from the pixels just decoded: it need not decode again.
        check = ingest_checks.Check(img.height, img.width, pixel_signature.to_feature(pixel_signature.of_decoded(img)))
        return DECODED, self._accepted(sha, relpath, label, duplicates, img.data, check, kept=not img.reencoded)

    def _accepted(self, sha, relpath, label, duplicates, data: bytes, check: "ingest_checks.Check",
                  kept: bool = True) -> List[Any]:
        """An accepted image's record, its report row and its duplicates', and (when
        its original bytes are the record's, ``kept``) its line of this run's checks."""
        record = {"image": data, "label": self._label_index[label], "label_name": label, "relpath": relpath,
                  "height": check.height, "width": check.width, "sha256": sha, "signature": check.signature}
        return [record, beam.pvalue.TaggedOutput(REPORT_TAG, row(relpath, label, None))] + [
            beam.pvalue.TaggedOutput(REPORT_TAG, row(dup_path, dup_label, f"duplicate of {relpath} (identical content)"))
            for dup_path, dup_label in duplicates] + (
            [beam.pvalue.TaggedOutput(CHECKS_TAG, ingest_checks.line(sha, check))] if kept else [])

    @staticmethod
    def _reject(relpath, label, duplicates, reason) -> List[Any]:
        """The same content, the same verdict: the kept file and each duplicate."""
        return [beam.pvalue.TaggedOutput(REPORT_TAG, row(path, lab, reason))
                for path, lab in [(relpath, label), *duplicates]]


def row(relpath: str, label: Optional[str], reason: Optional[str]) -> str:
    status = "skipped" if reason else "used"
    return json.dumps({"path": relpath, "label": label, "status": status, "reason": reason},
                      ensure_ascii=False, sort_keys=True)
