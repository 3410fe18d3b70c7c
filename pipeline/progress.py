"""Live progress for `retrain run`: which component runs, for how long.

LocalDagRunner runs components one after another and records each in MLMD as
it starts and ends; a background thread reads that record (read-only) once a
second and prints to stderr, so stdout stays clean for `--json`. Components
that know a count (images read, images embedded, epochs) report it through
components.progress_counts into a scratch folder this class owns for the run.
On a terminal the running component's line is a bar updated in place;
elsewhere start and end lines are printed, with a count line at most every
`log_every` seconds.

A job service's or cluster's Beam workers (pipeline.beam_flags.workers_are_local
false) have neither that folder nor its environment variable: the counts of the
Beam steps stay on them. Those steps then show their elapsed time and say so,
never a bar stuck at zero.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable, Collection, Dict, Optional, TextIO

from components import progress_counts
from pipeline import beam_flags, mlmd_store
from pipeline.config import PipelineConfig

_DONE_STATES = {"COMPLETE": "done", "CACHED": "cached", "FAILED": "FAILED", "CANCELED": "canceled",
                "EMPTY": "empty"}


class Progress:
    def __init__(self, config: PipelineConfig, total_components: int,
                 stream: Optional[TextIO] = None, interval: float = 1.0, log_every: float = 10.0,
                 beam_steps: Collection[str] = (), clock: Callable[[], float] = time.time):
        self._config = config
        self._clock = clock  # injectable: tests step it past log_every instead of sleeping
        # Steps whose counts are lost on remote Beam workers (empty: all workers local).
        self._uncounted = frozenset() if beam_flags.workers_are_local(config.beam_args) \
            else frozenset(beam_steps)
        self._total = total_components
        # sys.stderr now, not when this module was imported (a default argument
        # would keep whatever stream was stderr then, e.g. a test's closed capture).
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._tty = self._stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = clock()
        self._reported: Dict[str, str] = {}
        self._known_runs: Optional[set] = None
        self._log_every = log_every
        self._counts_dir: Optional[str] = None
        self._saved_env: Optional[str] = None
        self._last_count_line: Dict[str, float] = {}

    def __enter__(self):
        self._known_runs = self._run_names()
        self._counts_dir = tempfile.mkdtemp(prefix="retrain-progress-")
        self._saved_env = os.environ.get(progress_counts.ENV)
        os.environ[progress_counts.ENV] = self._counts_dir
        if self._uncounted:
            runner = beam_flags.option(self._config.beam_args, "runner")
            self._line(f"note: the Beam steps run on {runner} workers; the images they read and "
                       "embed are counted on the Beam workers, not here: those steps show elapsed "
                       "time only", final=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._poll()  # final states
        finally:
            if self._saved_env is None:
                os.environ.pop(progress_counts.ENV, None)
            else:
                os.environ[progress_counts.ENV] = self._saved_env
            shutil.rmtree(self._counts_dir, ignore_errors=True)
        if self._tty:
            self._stream.write("\n")
        self._stream.flush()

    def _run_names(self) -> set:
        if not os.path.exists(self._config.metadata_path):
            return set()
        try:
            store = mlmd_store.open_store(self._config)
            return {c.name for c in mlmd_store.run_contexts(store, self._config.pipeline_name)}
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
        store = mlmd_store.open_store(self._config)
        runs = [c for c in mlmd_store.run_contexts(store, self._config.pipeline_name)
                if c.name not in (self._known_runs or set())]
        if not runs:
            return
        summary = mlmd_store.component_states(store, runs[0], self._config.pipeline_name)
        counts = {stage: count for stage, count in progress_counts.read(self._counts_dir).items()
                  if stage not in self._uncounted}
        done = sum(1 for _, state, _ in summary if state in _DONE_STATES)
        for node, state, seconds in summary:
            if self._reported.get(node) == state:
                continue
            if state in _DONE_STATES:
                count = counts.get(node)
                tail = f"  {count['done']} {count['unit']}".rstrip() if count else ""
                self._line(f"[{done:>2}/{self._total}] {node:<32} {_DONE_STATES[state]:<7}"
                           f" {seconds:7.1f}s{tail}", final=True)
            elif node not in self._reported:
                self._line(f"[{done:>2}/{self._total}] {node:<32} running", final=not self._tty)
            self._reported[node] = state
        running = [(n, s) for n, st, s in summary if st not in _DONE_STATES]
        if not running:
            return
        node, _ = running[-1]
        count = counts.get(node)
        if self._tty:
            if count and count["total"]:
                bar = _bar(count["done"], count["total"])
                text = f"{bar} {count['unit']}, {node}"
            elif node in self._uncounted:
                text = f"{_bar(done, self._total)} {node} running on the Beam workers"
            else:
                text = f"{_bar(done, self._total)} {node} running"
            self._line(f"{text}, {self._clock() - self._started:5.0f}s total", final=False)
        elif count and self._clock() - self._last_count_line.get(node, self._started) >= self._log_every:
            self._last_count_line[node] = self._clock()
            total = f"/{count['total']}" if count["total"] else ""
            self._line(f"      {node:<32} {count['done']}{total} {count['unit']}", final=True)

    def _line(self, text: str, final: bool):
        if self._tty:
            self._stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = min(width, int(width * done / max(total, 1)))
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"
