"""TFLite variants: names, file names, defaults and the validation of settings.

* ``float32`` -- ``model.tflite``: float32 in, float32 out.
* ``fp16``    -- ``model_fp16.tflite``: float16 weights, float32 in/out.
* ``dynamic`` -- ``model_dynamic.tflite``: int8 weights, dynamic-range activations.
* ``int8``    -- ``model_int8.tflite``: full-integer (``TFLITE_BUILTINS_INT8``), uint8
  input (the raw RGB pixel values: input scale 1, zero point 0) and uint8 output
  (probabilities, scale 1/256); calibrated on a few hundred training images.

Pure Python: the CLI's settings check imports it without TensorFlow or TFX.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

VARIANTS: Tuple[str, ...] = ("float32", "fp16", "dynamic", "int8")
FILE_NAMES: Dict[str, str] = {
    "float32": "model.tflite",
    "fp16": "model_fp16.tflite",
    "dynamic": "model_dynamic.tflite",
    "int8": "model_int8.tflite",
}
DEFAULT_VARIANTS: Tuple[str, ...] = ("float32", "int8")
# Minimum top-1 agreement with the SavedModel on the eval split.
DEFAULT_PARITY_BOUNDS: Dict[str, float] = {"float32": 0.99, "fp16": 0.99, "dynamic": 0.97, "int8": 0.97}
DEFAULT_CALIBRATION_IMAGES = 100  # as in TF's post-training integer quantization guide
# The uint8 input of the int8 variant carries raw pixels: scale 1, zero point 0.
INT8_INPUT_QUANTIZATION = (1.0, 0)
# How each variant is described in the file's metadata.
KINDS: Dict[str, str] = {"float32": "float32", "fp16": "float16 weights",
                         "dynamic": "dynamic-range int8 weights",
                         "int8": "full-integer int8, uint8 input/output"}


def check_variants(variants: Iterable[str]) -> List[str]:
    """Validated, de-duplicated list; ValueError naming the valid variants otherwise."""
    out = []
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown TFLite variant {v!r}; valid variants: {', '.join(VARIANTS)}")
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError(f"no TFLite variant selected; valid variants: {', '.join(VARIANTS)}")
    return out


def parity_bounds(overrides: Optional[Mapping[str, float]] = None) -> Dict[str, float]:
    """DEFAULT_PARITY_BOUNDS updated with ``overrides``; ValueError on bad names/values."""
    bounds = dict(DEFAULT_PARITY_BOUNDS)
    for k, v in (overrides or {}).items():
        check_variants([k])
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"parity bound for {k} must be a number between 0 and 1, got {v!r}")
        bounds[k] = float(v)
    return bounds


def validate_settings(variants: Iterable[str], bounds: Optional[Mapping[str, float]],
                      calibration_images: int) -> Optional[str]:
    """One-line description of the first invalid TFLite setting, or None."""
    try:
        variants = check_variants(variants)
        parity_bounds(bounds)
    except ValueError as e:
        return str(e)
    if "int8" in variants and int(calibration_images) < 1:
        return f"calibration_images must be >= 1 for the int8 variant, got {calibration_images}"
    return None
