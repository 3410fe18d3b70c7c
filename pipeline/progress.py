"""Live progress for `retrain run`: which component runs, for how long.

LocalDagRunner runs components one after another and records each in MLMD as
it starts and ends; a background thread reads that record (read-only) once a
second and prints to stderr, so stdout stays clean for `--json`. On a terminal
the running component's line updates in place; elsewhere only start and end
lines are printed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Dict, Optional, TextIO

from pipeline import run_summary
from pipeline.config import PipelineConfig

_DONE_STATES = {"COMPLETE": "done", "CACHED": "cached", "FAILED": "FAILED", "CANCELED": "canceled",
                "EMPTY": "empty"}


class Progress:
    def __init__(self, config: PipelineConfig, total_components: int, stream: TextIO = sys.stderr,
                 interval: float = 1.0):
        self._config = config
        self._total = total_components
        self._stream = stream
        self._interval = interval
        self._tty = stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = time.time()
        self._reported: Dict[str, str] = {}
        self._known_runs: Optional[set] = None

    def __enter__(self):
        self._known_runs = self._run_names()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()  # final states
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def _run_names(self) -> set:
        if not os.path.exists(self._config.metadata_path):
            return set()
        try:
            store = run_summary.open_store(self._config)
            return {c.name for c in run_summary.run_contexts(store, self._config.pipeline_name)}
        except Exception:
            return set()

    def _loop(self):
        while not self._stop.wait(self._interval):
            try:
                self._poll()
            except Exception:  # the store may be mid-write; try again next tick
                pass

    def _poll(self):
        if not os.path.exists(self._config.metadata_path):
            return
        store = run_summary.open_store(self._config)
        runs = [c for c in run_summary.run_contexts(store, self._config.pipeline_name)
                if c.name not in (self._known_runs or set())]
        if not runs:
            return
        summary = run_summary.component_states(store, runs[0], self._config.pipeline_name)
        done = sum(1 for _, state, _ in summary if state in _DONE_STATES)
        for node, state, seconds in summary:
            if self._reported.get(node) == state:
                continue
            if state in _DONE_STATES:
                self._line(f"[{done:>2}/{self._total}] {node:<32} {_DONE_STATES[state]:<7}"
                           f" {seconds:7.1f}s", final=True)
            elif node not in self._reported:
                self._line(f"[{done:>2}/{self._total}] {node:<32} running", final=not self._tty)
            self._reported[node] = state
        running = [(n, s) for n, st, s in summary if st not in _DONE_STATES]
        if running and self._tty:
            node, _ = running[-1]
            bar = _bar(done, self._total)
            self._line(f"{bar} {node} running, {time.time() - self._started:5.0f}s total",
                       final=False)

    def _line(self, text: str, final: bool):
        if self._tty:
            self._stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"
