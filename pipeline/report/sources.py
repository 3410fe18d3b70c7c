"""What the report reads besides the RunRecord: the files the run's artifacts
and the serving dir hold, and TFLite latency measured here. Each reader returns
plain typed data for the sections (pipeline/report/sections.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from components import contracts, model_info
from pipeline.run_record import RunRecord

LATENCY_RUNS = 20
LEGACY_TFLITE_DIR = "tflite"  # in a Trainer's Model: where older Trainers exported TFLite files


@dataclasses.dataclass(frozen=True)
class ClassCounts:
    splits: Tuple[str, ...]
    counts: Dict[str, Dict[str, int]]  # class -> split -> images


@dataclasses.dataclass(frozen=True)
class TrainingLog:
    folder: str  # the TensorBoard log dir
    history: Dict[str, List[float]]  # metric -> value per epoch ({}: not recorded)
    event_files: int


@dataclasses.dataclass(frozen=True)
class LabelCheck:
    had_baseline: bool
    problems: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Parity:
    """A TFLite variant's record (parity.json, or a version's metrics.json)."""
    variant: str
    agreement: Optional[float] = None  # top-1 agreement with the SavedModel
    bound: Optional[float] = None
    passed: Optional[bool] = None
    accuracy: Optional[float] = None
    confident_agreement: Optional[float] = None  # where the SavedModel's top-1 is >= 0.5


@dataclasses.dataclass(frozen=True)
class TFLiteFile:
    name: str
    bytes: int
    parity: Optional[Parity]  # None: not recorded
    latency_ms: Optional[float]
    latency_source: str  # "recorded", "measured here, ...", "not measured: ..."


@dataclasses.dataclass(frozen=True)
class TFLiteFiles:
    origin: str  # "pushed version 2", "TFLite export output", ...
    folder: str
    files: Tuple[TFLiteFile, ...]


def _read_json(path: str) -> Optional[Any]:
    import tensorflow as tf  # local, gs:// or s3://
    if not path or not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def class_counts(record: RunRecord) -> Optional[ClassCounts]:
    """Images per class and split, from StatisticsGen's label_name histogram."""
    if record.uris.statistics is None:
        return None
    from components.label_guard import class_counts_from_statistics
    counts: Dict[str, Dict[str, int]] = {}
    for split in record.statistics_splits:
        for label, n in class_counts_from_statistics(record.uris.statistics, [split]).items():
            counts.setdefault(label, {})[split] = n
    return ClassCounts(tuple(record.statistics_splits), counts)


def label_check(record: RunRecord) -> Optional[LabelCheck]:
    if record.uris.label_check is None:
        return None
    found = _read_json(os.path.join(record.uris.label_check, contracts.LABEL_CHECK_FILE))
    if not isinstance(found, dict):
        return None
    return LabelCheck(bool(found.get("baseline")), tuple(str(p) for p in found.get("problems") or []))


def training_log(record: RunRecord) -> Optional[TrainingLog]:
    """The Trainer's history.json and TensorBoard event files (None: no Trainer output)."""
    if record.uris.model_run is None:
        return None
    import tensorflow as tf
    folder = os.path.join(record.uris.model_run, contracts.TRAINING_DIR)
    history = _read_json(os.path.join(folder, contracts.TRAINING_HISTORY_FILE))
    events = (sum(1 for _, _, files in tf.io.gfile.walk(folder) for f in files if "tfevents" in f)
              if tf.io.gfile.isdir(folder) else 0)
    history = {str(k): [float(x) for x in v] for k, v in history.items()
               if isinstance(v, list)} if isinstance(history, dict) else {}
    return TrainingLog(folder, history, events)


def served_models(serving_dir: str) -> Dict[int, str]:
    """Complete pushed versions -> the model URI each was made from (its metrics.json)."""
    out = {}
    for version in contracts.list_versions(serving_dir):
        metrics = _read_json(contracts.join(serving_dir, str(version), contracts.METRICS_FILE))
        if isinstance(metrics, dict) and metrics.get("model_uri"):
            out[version] = str(metrics["model_uri"])
    return out


def fine_tune_choice(record: RunRecord) -> Optional[Dict[str, Any]]:
    """With N > 0, what the Trainer kept: head.json's ``fine_tune`` (components/
    head_training.py FineTuneChoice) with its ``start`` (components/continuation.py
    Plan) as ``start``; None when neither is recorded."""
    if record.uris.model is None:
        return None
    info = model_info.read_head_info(record.uris.model) or {}
    choice = info.get("fine_tune") if isinstance(info.get("fine_tune"), dict) else {}
    if "start" in info:
        choice = dict(choice, start=info["start"])
    return choice or None


def export_backbone(record: RunRecord) -> Optional[str]:
    """The backbone the TFLite export recorded in its parity.json."""
    if record.uris.tflite_models is None:
        return None
    if _read_json(os.path.join(record.uris.tflite_models, contracts.PARITY_FILE)) is None:
        return None
    from components.tflite.parity import ParityReport
    return ParityReport.read(record.uris.tflite_models).backbone


def tflite_folders(record: RunRecord) -> List[Tuple[str, str]]:
    """[(origin, folder)] where this run's TFLite files may be, best first."""
    out = []
    push = record.push
    if push is not None and push.pushed and push.destination:
        out.append((f"pushed version {push.version}", push.destination))
    if record.uris.tflite_models is not None:
        out.append(("TFLite export output", record.uris.tflite_models))
    if record.uris.model is not None:
        out.append(("Trainer output", os.path.join(record.uris.model, LEGACY_TFLITE_DIR)))
    return out


def _parity(folder: str) -> Dict[str, Parity]:
    """file name -> its variant's record (parity.json, or metrics.json's tflite record),
    read through components.tflite.parity (one parser for both files)."""
    from components.tflite.parity import ParityReport, pushed_variants

    def entry(v) -> Parity:
        return Parity(variant=v.variant, agreement=v.agreement, bound=v.bound, passed=v.passed,
                      accuracy=v.accuracy,
                      confident_agreement=v.measured.confident_agreement if v.measured else None)

    by_file: Dict[str, Parity] = {}
    if _read_json(os.path.join(folder, contracts.PARITY_FILE)) is not None:
        by_file = {v.file: entry(v) for v in ParityReport.read(folder).variants}
    metrics_path = os.path.join(folder, contracts.METRICS_FILE)
    tflite = (_read_json(metrics_path) or {}).get("tflite")
    if tflite:
        for v in pushed_variants(tflite, metrics_path):
            by_file.setdefault(v.file, entry(v))
    return by_file


def measure_latency_ms(path: str, runs: int = LATENCY_RUNS, num_threads: int = 2) -> float:
    """Median wall time of one single-image invoke() (random pixels), after 2 warm-ups."""
    import numpy as np
    import tensorflow as tf
    from components import native_stderr
    with native_stderr.to_log():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        interp = tf.lite.Interpreter(model_path=path, num_threads=num_threads)
        interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=inp["shape"]).astype(inp["dtype"])
    times = []
    for i in range(runs + 2):
        interp.set_tensor(inp["index"], data)
        start = time.perf_counter()
        interp.invoke()
        if i >= 2:
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def tflite_files(folders: Sequence[Tuple[str, str]], measure: bool = True) -> Optional[TFLiteFiles]:
    """The first folder holding .tflite files: each file's size, parity record and
    latency (the recorded one, else measured here when `measure`)."""
    import tensorflow as tf
    for origin, folder in folders:
        if not tf.io.gfile.isdir(folder):
            continue
        names = sorted(f for f in tf.io.gfile.listdir(folder) if f.endswith(".tflite"))
        if not names:
            continue
        parity = _parity(folder)
        files = []
        for name in names:
            path = os.path.join(folder, name)
            p = parity.get(name)
            latency, source = None, "not measured"
            if measure:
                try:
                    latency = measure_latency_ms(path)
                    source = f"measured here, median of {LATENCY_RUNS}"
                except Exception as exc:  # noqa: BLE001 - e.g. an op this interpreter lacks
                    source = f"not measured: {type(exc).__name__}"
            files.append(TFLiteFile(name, tf.io.gfile.stat(path).length, p, latency, source))
        return TFLiteFiles(origin, folder, tuple(files))
    return None
