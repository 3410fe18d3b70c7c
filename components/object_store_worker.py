"""s3:// in Beam SDK worker processes: imported there through ``--beam_plugins``
(components.object_store.beam_args) before any DoFn, TFX's own included, runs.

DirectRunner workers inherit the submitting process's environment, already
configured; a job service's or cluster's workers configure s3:// from their own
(docs/beam_runners.md): nothing secret travels in Beam options.
The harness ends with exit code 0 whatever happened (it logs failures); with
tensorflow-io's S3 plugin loaded that exit would abort (tensorflow/io#2039), so
it is made without C++ static destructors.
"""

import atexit
import logging
import os
import sys

from components import object_store

object_store.enable_tensorflow()


def _exit_quietly() -> None:
    logging.shutdown()
    object_store.flush_streams()
    os._exit(0)


_main = getattr(sys.modules.get("__main__"), "__spec__", None)
if getattr(_main, "name", "") == "apache_beam.runners.worker.sdk_worker_main":
    atexit.register(_exit_quietly)  # only where exit code 0 is the harness's own answer
