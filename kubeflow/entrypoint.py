"""Container entry point: ``python -m kubeflow.entrypoint MODULE ARGS...`` runs
``python -m MODULE ARGS...`` (TFX's Kubeflow V2 executor or driver, see
kubeflow/runner.py) after the object-store set-up every task needs.

A task touches s3:// when its arguments (artifact URIs, parameters) name an
s3:// location: then the login is checked and tf.io.gfile gets tensorflow-io's
S3 plugin before any TFX code runs, and the process ends through
object_store.exit_process with the module's own exit code (a plain exit would
abort once tensorflow-io was used, tensorflow/io#2039, failing a task that had
succeeded).
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from components import object_store  # noqa: E402  (no TensorFlow import)


def _exit_code(exit: SystemExit) -> int:
    if exit.code is None or isinstance(exit.code, int):
        return exit.code or 0
    print(exit.code, file=sys.stderr)  # what sys.exit("message") prints
    return 1


def run(argv) -> int:
    if not argv:
        print("usage: python -m kubeflow.entrypoint MODULE [ARGS...]", file=sys.stderr)
        return 2
    module, args = argv[0], list(argv[1:])
    try:
        # The buckets the task's artifacts and parameters name: settings, one
        # checked listing each (a wrong secret is one line in the pod log), plugin.
        object_store.prepare(object_store.buckets_in(" ".join(args)))
    except object_store.ObjectStoreError as e:
        print(f"retrain: error: {e}", file=sys.stderr)
        return 2
    sys.argv = [module] + args
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return _exit_code(e)
    except BaseException:  # what the interpreter would print and return
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    object_store.exit_process(run(sys.argv[1:]))
