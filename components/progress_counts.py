"""Counts a running component reports for the live progress bar (`retrain run`).

The local runner sets RETRAIN_PROGRESS_DIR for the run; executors (and their
Beam workers, in this process or in worker processes, which inherit the
environment) write how far they are into small JSON files there, and
pipeline.progress reads them. Without the variable (Kubeflow pods, tests,
library use) every call is a no-op, so no component depends on it.

Layout: <dir>/<stage>/total.json {"total": N, "unit": "images"} from the
executor, and one <pid>-<n>.json {"done": k} per counting worker; the reader
adds the workers up. Files are replaced atomically, at most every `interval`
seconds per worker, and always on close.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from typing import Callable, Dict, Optional

ENV = "RETRAIN_PROGRESS_DIR"
_STAGE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ids = itertools.count()


def _stage_dir(stage: str) -> Optional[str]:
    root = os.environ.get(ENV)
    if not root or not _STAGE.match(stage):
        return None
    path = os.path.join(root, stage)
    os.makedirs(path, exist_ok=True)
    return path


def _write_json(path: str, value: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def set_total(stage: str, total: int, unit: str) -> None:
    """The count a stage is heading for (e.g. 2000 images, 100 epochs)."""
    path = _stage_dir(stage)
    if path:
        _write_json(os.path.join(path, "total.json"), {"total": int(total), "unit": unit})


class Counter:
    """One worker's share of a stage's count; cheap to call per element."""

    def __init__(self, stage: str, interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        folder = _stage_dir(stage)
        self._path = folder and os.path.join(folder, f"{os.getpid()}-{next(_ids)}.json")
        self._done = 0
        self._interval = interval
        self._clock = clock  # injectable so tests decide when the interval has passed
        self._last: Optional[float] = None

    def add(self, n: int = 1) -> None:
        if not self._path:
            return
        self._done += int(n)
        now = self._clock()
        if self._last is None or now - self._last >= self._interval:
            self._last = now
            _write_json(self._path, {"done": self._done})

    def close(self) -> None:
        if self._path:
            _write_json(self._path, {"done": self._done})


def read(root: str) -> Dict[str, Dict]:
    """{stage: {"done": k, "total": N or None, "unit": str}} for every stage seen so far."""
    out: Dict[str, Dict] = {}
    if not root or not os.path.isdir(root):
        return out
    for stage in sorted(os.listdir(root)):
        path = os.path.join(root, stage)
        if not os.path.isdir(path):
            continue
        entry = {"done": 0, "total": None, "unit": ""}
        for name in os.listdir(path):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(path, name)) as f:
                    value = json.load(f)
            except (OSError, ValueError):
                continue  # being replaced right now; the next poll sees it
            if name == "total.json":
                entry["total"], entry["unit"] = value.get("total"), value.get("unit", "")
            else:
                entry["done"] += int(value.get("done", 0))
        out[stage] = entry
    return out
