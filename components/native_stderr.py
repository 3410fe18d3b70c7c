"""Lines C++ libraries write straight to file descriptor 2, kept off the terminal.

The TFLite converter (``W0000 ... Ignored output_format``) and interpreter
(``INFO: Created TensorFlow Lite XNNPACK delegate``) log through C++, below
Python's logging, so neither absl's verbosity nor TF_CPP_MIN_LOG_LEVEL hides
them. `retrain run` without --verbose names a log file in the environment while the
pipeline runs (`sent_to`; NATIVE_STDERR_LOG_ENV, so a Beam worker process sees
it too); around the calls that print, `to_log()` points fd 2 at that file. Unset (Kubeflow pods, tests,
--verbose), nothing is redirected: those lines stay in the pod's log.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Iterator

from components.contracts import NATIVE_STDERR_LOG_ENV


@contextlib.contextmanager
def sent_to(path: str) -> Iterator[None]:
    """For the duration, to_log() in this process (and its children) appends fd 2
    to `path`. Python's own sys.stderr is moved to a copy of the terminal's
    descriptor, so progress lines and errors printed meanwhile still reach it.
    Both are restored after: a later run or test in this process is unaffected."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    saved_env, saved_stream = os.environ.get(NATIVE_STDERR_LOG_ENV), sys.stderr
    os.environ[NATIVE_STDERR_LOG_ENV] = path
    terminal = None
    try:
        if sys.stderr.fileno() == 2:
            sys.stderr.flush()
            terminal = io.TextIOWrapper(os.fdopen(os.dup(2), "wb", buffering=0),
                                        encoding=sys.stderr.encoding or "utf-8",
                                        errors="backslashreplace", line_buffering=True)
            sys.stderr = terminal
    except (AttributeError, ValueError, io.UnsupportedOperation):  # captured (pytest)
        pass
    try:
        yield
    finally:
        if terminal is not None:
            terminal.flush()
            sys.stderr = saved_stream
            terminal.close()
        if saved_env is None:
            os.environ.pop(NATIVE_STDERR_LOG_ENV, None)
        else:
            os.environ[NATIVE_STDERR_LOG_ENV] = saved_env


@contextlib.contextmanager
def to_log() -> Iterator[None]:
    """fd 2 appended to the log sent_to() named, for the duration; else nothing."""
    path = os.environ.get(NATIVE_STDERR_LOG_ENV)
    if not path:
        yield
        return
    try:
        log = open(path, "ab")
    except OSError:  # the log's folder is gone: leave fd 2 alone
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
