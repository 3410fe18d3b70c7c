"""Parity of the TFLite variants with the SavedModel: measured, judged, recorded.

``parity.json`` (contracts.PARITY_FILE) in a TFLiteModels artifact and in every pushed
version holds a :class:`ParityReport`: per variant its file, bound, whether it passed
and why not, its conversion (size, input/output types) and its top-1 agreement with
the SavedModel's ``serving_default`` on the eval split.  This module is its only
reader and writer; the format is the one the first TFLite export wrote, so every
pushed version reads back.  A pushed version's ``metrics.json`` also carries a
summary of it (:meth:`ParityReport.pushed_record`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from components import contracts
from components.tflite.variants import FILE_NAMES, VARIANTS

REFERENCE = f"SavedModel serving_default ({contracts.SERVING_MODEL_DIR})"
NO_EXAMPLES = "no eval examples to measure parity on"
# The gate's second way through (VariantParity.judged): a prediction is confident when the
# reference's top-1 probability is at least CONFIDENT, and the variant may cost at most
# MAX_ACCURACY_DROP of eval accuracy.  With many classes most flips are near-ties the
# SavedModel itself is unsure of (docs/tflite.md, "The parity gate").
CONFIDENT = 0.5
MAX_ACCURACY_DROP = 0.01


@dataclasses.dataclass(frozen=True)
class Conversion:
    bytes: int
    convert_seconds: float
    input_type: str  # numpy dtype name: float32, uint8
    output_type: str
    input_quantization: Tuple[float, int]  # (scale, zero point); (0.0, 0) for float input


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Top-1 agreement with the reference on the eval split.  A pushed version's
    metrics.json records only examples, agreement and accuracy: the rest is None."""
    examples: int
    agreement: Optional[float]  # None without eval examples
    accuracy: Optional[float]
    agree: Optional[int] = None
    max_abs_diff: Optional[float] = None  # of the probabilities
    mean_max_abs_diff: Optional[float] = None
    # Recorded since the confident rule; None in older files.
    confident: Optional[int] = None  # examples whose reference top-1 probability >= CONFIDENT
    confident_agree: Optional[int] = None  # of those, the ones whose top-1 agrees
    reference_accuracy: Optional[float] = None  # the reference's, on the same examples

    @property
    def confident_agreement(self) -> Optional[float]:
        return self.confident_agree / self.confident if self.confident else None

    @property
    def accuracy_drop(self) -> Optional[float]:
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.reference_accuracy - self.accuracy


@dataclasses.dataclass(frozen=True)
class VariantParity:
    variant: str
    file: str
    bound: float
    passed: bool
    reason: Optional[str]  # why it did not pass
    conversion: Optional[Conversion] = None  # None: conversion failed
    measured: Optional[Agreement] = None  # None: never measured (conversion failed or rejected)

    @property
    def agreement(self) -> Optional[float]:
        return self.measured.agreement if self.measured else None

    @property
    def accuracy(self) -> Optional[float]:
        return self.measured.accuracy if self.measured else None

    @classmethod
    def judged(cls, variant: str, bound: float, conversion: Optional[Conversion],
               measured: Agreement) -> "VariantParity":
        """Passed when the top-1 agreement meets ``bound``, or when the agreement on the
        confident predictions meets it and eval accuracy drops by at most
        MAX_ACCURACY_DROP; the reason says why not otherwise."""
        a = measured.agreement
        if a is None:
            return cls(variant, FILE_NAMES[variant], bound, False, NO_EXAMPLES, conversion, measured)
        if a >= bound:
            return cls(variant, FILE_NAMES[variant], bound, True, None, conversion, measured)
        reason = (f"top-1 agreement with the SavedModel {a:.4f} ({measured.agree}/{measured.examples}) "
                  f"is below the bound {bound:.4f}")
        confident, drop = measured.confident_agreement, measured.accuracy_drop
        if confident is None or drop is None:  # nothing confident, no labels, or an older record
            return cls(variant, FILE_NAMES[variant], bound, False,
                       reason + (" (no confident prediction)" if measured.confident == 0 else ""),
                       conversion, measured)
        passed = confident >= bound and drop <= MAX_ACCURACY_DROP + 1e-12
        if not passed:
            reason += (f"; on the confident predictions {confident:.4f} "
                       f"({measured.confident_agree}/{measured.confident}), eval accuracy "
                       f"{-drop:+.4f} (needs >= {bound:.4f} and >= {-MAX_ACCURACY_DROP:+.4f})")
        return cls(variant, FILE_NAMES[variant], bound, passed, None if passed else reason,
                   conversion, measured)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"file": self.file, "bound": self.bound, "passed": self.passed,
                               "reason": self.reason}
        if self.conversion:
            out.update(dataclasses.asdict(self.conversion),
                       input_quantization=list(self.conversion.input_quantization))
        if self.measured:  # the confident rule's fields only where recorded: older files read back as written
            out.update({k: v for k, v in dataclasses.asdict(self.measured).items()
                        if v is not None or k not in _RECORDED_SINCE_CONFIDENT})
        return out


@dataclasses.dataclass(frozen=True)
class ParityReport:
    variants: Tuple[VariantParity, ...]  # as converted (as stored: by name, when read)
    passed: Tuple[str, ...]  # the variants that may be pushed, in conversion order
    backbone: str
    label_names: Tuple[str, ...]
    calibration_examples: int
    eval_examples: int
    reference_accuracy: Optional[float]  # the SavedModel's on the eval split
    reference: str = REFERENCE

    @property
    def failed(self) -> Dict[str, str]:
        """variant -> why it may not be pushed."""
        return {v.variant: v.reason for v in self.variants if not v.passed}

    def variant(self, name: str) -> VariantParity:
        for v in self.variants:
            if v.variant == name:
                return v
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps({
            "variants": {v.variant: v.to_dict() for v in self.variants},
            "passed": list(self.passed), "failed": self.failed,
            "backbone": self.backbone, "label_names": list(self.label_names),
            "calibration_examples": self.calibration_examples, "eval_examples": self.eval_examples,
            "reference": self.reference, "reference_accuracy": self.reference_accuracy,
        }, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = contracts.PARITY_FILE) -> "ParityReport":
        """ValueError naming ``source`` and the bad field when it is not a parity report."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{source} is not JSON ({e})") from None
        r = _Reader(source)
        variants = tuple(_variant_from_dict(r, name, entry)
                         for name, entry in r.mapping(d, "variants").items())
        passed = tuple(r.string(p, f"passed[{i}]") for i, p in enumerate(r.list(d, "passed")))
        ok = {v.variant for v in variants if v.passed}
        if not set(passed) <= ok:
            raise ValueError(f"{source}: 'passed' lists {', '.join(sorted(set(passed) - ok))}, "
                             "whose entry did not pass")
        return cls(variants=variants, passed=passed, backbone=r.string(d.get("backbone"), "backbone"),
                   label_names=tuple(r.string(n, "label_names") for n in r.list(d, "label_names")),
                   calibration_examples=r.int(d.get("calibration_examples"), "calibration_examples"),
                   eval_examples=r.int(d.get("eval_examples"), "eval_examples"),
                   reference_accuracy=r.number(d.get("reference_accuracy"), "reference_accuracy", True),
                   reference=r.string(d.get("reference"), "reference"))

    def write(self, folder: str) -> None:
        import tensorflow as tf  # tf.io.gfile: folder may be gs:// or s3://
        with tf.io.gfile.GFile(os.path.join(folder, contracts.PARITY_FILE), "w") as f:
            f.write(self.to_json())

    @classmethod
    def read(cls, folder: str) -> "ParityReport":
        import tensorflow as tf
        path = os.path.join(folder, contracts.PARITY_FILE)
        with tf.io.gfile.GFile(path) as f:
            return cls.from_json(f.read(), source=path)

    def pushed_record(self) -> Dict[str, Any]:
        """The ``tflite`` record of a pushed version's metrics.json."""
        return {
            "pushed": {v: FILE_NAMES[v] for v in self.passed},
            "not_pushed": self.failed,
            "parity": {v.variant: {"agreement": v.agreement, "bound": v.bound, "accuracy": v.accuracy,
                                   "confident_agreement": v.measured.confident_agreement if v.measured else None,
                                   "bytes": v.conversion.bytes if v.conversion else None,
                                   "examples": v.measured.examples if v.measured else None}
                       for v in self.variants},
            "eval_examples": self.eval_examples,
            "calibration_examples": self.calibration_examples,
            "reference_accuracy": self.reference_accuracy,
        }


def pushed_variants(record: Mapping[str, Any], source: str = contracts.METRICS_FILE) -> List[VariantParity]:
    """The pushed variants of a metrics.json ``tflite`` record (pushed_record()): passed,
    since they were pushed (by either way through the gate); no conversion details."""
    r = _Reader(source)
    out = []
    for variant, entry in r.mapping(record, "parity").items():
        file = (record.get("pushed") or {}).get(variant)
        if not file:
            continue
        agreement = r.number(entry.get("agreement"), f"parity.{variant}.agreement", True)
        bound = r.number(entry.get("bound"), f"parity.{variant}.bound", True)
        measured = Agreement(examples=r.int(entry.get("examples") or 0, f"parity.{variant}.examples"),
                             agreement=agreement,
                             accuracy=r.number(entry.get("accuracy"), f"parity.{variant}.accuracy", True))
        out.append(VariantParity(variant, r.string(file, f"pushed.{variant}"), bound, True, None,
                                 measured=measured))
    return out


_RECORDED_SINCE_CONFIDENT = ("confident", "confident_agree", "reference_accuracy")


class ParityCounter:
    """Accumulates one variant's agreement with the reference, batch by batch."""

    def __init__(self):
        self.n = self.agree = self.correct = self.reference_correct = 0
        self.confident = self.confident_agree = 0
        self.labelled = True
        self.max_abs_diff = 0.0
        self.sum_abs_diff = 0.0

    def update(self, probs: np.ndarray, reference: np.ndarray, labels: Optional[np.ndarray] = None):
        top, ref_top = probs.argmax(1), reference.argmax(1)
        self.n += len(probs)
        self.agree += int((top == ref_top).sum())
        confident = reference.max(1) >= CONFIDENT if len(probs) else np.zeros(0, bool)
        self.confident += int(confident.sum())
        self.confident_agree += int(((top == ref_top) & confident).sum())
        if len(probs):
            diff = np.abs(probs - reference)
            self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
            self.sum_abs_diff += float(diff.max(axis=1).sum())
        if labels is None:
            self.labelled = False
        else:
            self.correct += int((top == labels).sum())
            self.reference_correct += int((ref_top == labels).sum())

    def result(self) -> Agreement:
        n = self.n
        labelled = bool(n) and self.labelled
        return Agreement(examples=n, agreement=self.agree / n if n else None,
                         accuracy=self.correct / n if labelled else None, agree=self.agree,
                         max_abs_diff=self.max_abs_diff, mean_max_abs_diff=self.sum_abs_diff / n if n else None,
                         confident=self.confident if n else None,
                         confident_agree=self.confident_agree if n else None,
                         reference_accuracy=self.reference_correct / n if labelled else None)


class _Reader:
    """Typed access to untrusted JSON: a ValueError naming the file and the field."""

    def __init__(self, source: str):
        self.source = source

    def _bad(self, field: str, what: str, value: Any):
        return ValueError(f"{self.source}: {field} must be {what}, got {value!r:.80}")

    def mapping(self, d: Any, key: str) -> Dict[str, Any]:
        value = d.get(key) if isinstance(d, dict) else None
        if not isinstance(value, dict):
            raise self._bad(key, "an object", value)
        return value

    def list(self, d: Any, key: str) -> List[Any]:
        value = d.get(key) if isinstance(d, dict) else None
        if not isinstance(value, list):
            raise self._bad(key, "a list", value)
        return value

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self._bad(field, "a string", value)
        return value

    def number(self, value: Any, field: str, optional: bool = False) -> Optional[float]:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(field, "a number", value)
        return value

    def int(self, value: Any, field: str, optional: bool = False) -> Optional[int]:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(field, "an integer", value)
        return value


def _variant_from_dict(r: _Reader, name: str, e: Any) -> VariantParity:
    where = f"variants.{name}"
    if name not in VARIANTS:
        raise ValueError(f"{r.source}: unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
    if not isinstance(e, dict):
        raise r._bad(where, "an object", e)
    if not isinstance(e.get("passed"), bool):
        raise r._bad(f"{where}.passed", "true or false", e.get("passed"))
    reason = e.get("reason")
    conversion = measured = None
    if "bytes" in e:
        q = e.get("input_quantization")
        if not (isinstance(q, list) and len(q) == 2):
            raise r._bad(f"{where}.input_quantization", "[scale, zero point]", q)
        conversion = Conversion(
            bytes=r.int(e["bytes"], f"{where}.bytes"),
            convert_seconds=r.number(e.get("convert_seconds"), f"{where}.convert_seconds"),
            input_type=r.string(e.get("input_type"), f"{where}.input_type"),
            output_type=r.string(e.get("output_type"), f"{where}.output_type"),
            input_quantization=(r.number(q[0], f"{where}.input_quantization"),
                                r.int(q[1], f"{where}.input_quantization")))
    if "examples" in e:
        measured = Agreement(
            examples=r.int(e["examples"], f"{where}.examples"),
            agreement=r.number(e.get("agreement"), f"{where}.agreement", True),
            accuracy=r.number(e.get("accuracy"), f"{where}.accuracy", True),
            agree=r.int(e.get("agree"), f"{where}.agree"),
            max_abs_diff=r.number(e.get("max_abs_diff"), f"{where}.max_abs_diff"),
            mean_max_abs_diff=r.number(e.get("mean_max_abs_diff"), f"{where}.mean_max_abs_diff", True),
            confident=r.int(e.get("confident"), f"{where}.confident", True),
            confident_agree=r.int(e.get("confident_agree"), f"{where}.confident_agree", True),
            reference_accuracy=r.number(e.get("reference_accuracy"), f"{where}.reference_accuracy", True))
    return VariantParity(
        variant=name, file=r.string(e.get("file"), f"{where}.file"),
        bound=r.number(e.get("bound"), f"{where}.bound"), passed=e["passed"],
        reason=None if reason is None else r.string(reason, f"{where}.reason"),
        conversion=conversion, measured=measured)
