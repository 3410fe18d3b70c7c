"""Checks a component image can run every task: `python -m kubeflow.image_check [BACKBONE...]`.

Run by kubeflow/Dockerfile at build time (a broken image fails the build, not a
pod at 3 a.m.) and by the tests here. It imports the TFX entry points the
compiled spec starts, the pipeline (and so every component's executor) and
the Transform/Trainer module files, checks Keras 2 is the Keras in use, and
that the named backbones' ImageNet weights are on disk (pods have no network).
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Sequence


def modules() -> List[str]:
    from kubeflow import runner
    from pipeline import pipeline
    return [runner.SHIM_ENTRYPOINT[-1], runner.EXECUTOR_ENTRYPOINT[-1], runner.DRIVER_ENTRYPOINT[-1],
            "pipeline.pipeline", "components.object_store_worker", "tensorflow_io",
            pipeline.PREPROCESSING_FN.rsplit(".", 1)[0], pipeline.RUN_FN.rsplit(".", 1)[0]]


def check(backbones: Sequence[str] = ()) -> None:
    for name in modules():
        importlib.import_module(name)
    import tensorflow as tf
    import tf_keras
    if tf.keras.Model is not tf_keras.Model:
        raise RuntimeError("tf.keras is not Keras 2 (tf_keras); TFX 1.16 needs it: "
                           "set TF_USE_LEGACY_KERAS=1 in the image")
    from components import backbones as registry
    for name in backbones:
        registry.weights_fingerprint(name, "imagenet")  # raises if not on disk


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check(args)
    print(f"image check ok: {len(modules())} entry modules, weights for {', '.join(args) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
