"""Lines C++ libraries write straight to file descriptor 2, kept off the terminal.

The TFLite converter (``W0000 ... Ignored output_format``) and interpreter
(``INFO: Created TensorFlow Lite XNNPACK delegate``) log through C++, below
Python's logging, so neither absl's verbosity nor TF_CPP_MIN_LOG_LEVEL hides
them. `retrain run` without --verbose names a log file in the environment
(NATIVE_STDERR_LOG_ENV, so a Beam worker process sees it too); around the calls
that print, `to_log()` points fd 2 at that file. Unset (Kubeflow pods, tests,
--verbose), nothing is redirected: those lines stay in the pod's log.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Iterator

from components.contracts import NATIVE_STDERR_LOG_ENV


def send_to(path: str) -> None:
    """From now on in this process, to_log() appends fd 2 to `path`. Python's own
    sys.stderr is moved to a copy of the terminal's descriptor first, so progress
    lines and errors printed meanwhile still reach it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.environ[NATIVE_STDERR_LOG_ENV] = path
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, ValueError, io.UnsupportedOperation):  # captured (pytest)
        return
    sys.stderr.flush()
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(2), "wb", buffering=0),
                                  encoding=sys.stderr.encoding, errors="backslashreplace",
                                  line_buffering=True)


@contextlib.contextmanager
def to_log() -> Iterator[None]:
    """fd 2 appended to the log send_to() named, for the duration; else nothing."""
    path = os.environ.get(NATIVE_STDERR_LOG_ENV)
    if not path:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
