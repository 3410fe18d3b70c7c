"""Continuing the served model's fine-tuning on a rerun (`--trainable-blocks N`).

A cold fine-tuning run trains the top N blocks over every cached activation for up to
``epochs`` epochs, from ImageNet weights: a scheduled rerun with 10 % new images paid
the first run's training again, and more (docs/performance.md). When the served (last
blessed) model was trained with the same settings on the same cut, the Trainer starts
from its top blocks and head instead and trains for the share of the epochs the new
training rows owe: ceil(epochs x new rows / rows), at least MIN_EPOCHS, at
LEARNING_RATE_FACTOR of the run's step sizes (a converged model that a fresh Adam's
full-size first steps would shake: measured in docs/performance.md). The Evaluator
still gates the candidate against that same served model, and the head alone on the
frozen blocks is still the fallback (components/trainer.py).

Which rows are new: the Trainer writes the sorted sha256 digests of its train rows
(label and feature vector, as the training fingerprint hashes them) beside the head;
a row of the current data whose digest the served model's file lacks is new (a new
image, a relabelled one, a new augmented view). A served model without that file, or
one trained with other settings, backbone weights or cut, is not continued.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np

from components import contracts

MIN_EPOCHS = 2
LEARNING_RATE_FACTOR = 0.1
DIGEST_BYTES = 32
MAX_ROWS_FILE_BYTES = 64 * 2 ** 20  # 2 M rows; a larger (or damaged) file is not read


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this run's fine-tuning starts: from the served model (``source`` set) or
    from ImageNet weights, and why."""
    source: Optional[str]  # the served Model artifact's URI; None: a cold start
    reason: str
    epochs: int = 0        # with a source: the epochs to train
    new_rows: int = 0
    rows: int = 0

    @property
    def warm(self) -> bool:
        return self.source is not None

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _digest(row: np.ndarray, label) -> bytes:
    return hashlib.sha256(np.int64(label).tobytes() + np.ascontiguousarray(row, "<f4").tobytes()).digest()


def row_digests(x: np.ndarray, y: np.ndarray) -> List[bytes]:
    """Sorted sha256 of each (label, float32 feature row): the rows' identity in any order."""
    return sorted(_digest(row, label) for row, label in zip(x, y))


def in_digest_order(x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray, List[bytes]]:
    """(x, y, row_digests(x, y)) with the rows sorted by their digests.

    Beam writes BottleneckGen's records in an order that varies from run to run,
    and a seeded shuffle of rows in another order is another shuffle: the same
    2,200 emoji trained 25 or 27 epochs (eval accuracy 0.8349 or 0.8394) from one
    run to the next. In this order the same rows give the same model."""
    digests = [_digest(row, label) for row, label in zip(x, y)]
    order = np.asarray(sorted(range(len(digests)), key=digests.__getitem__), dtype=np.int64)
    return x[order], y[order], [digests[i] for i in order]


def rows_path(model_uri: str) -> str:
    return contracts.join(model_uri, contracts.HEAD_DIR, contracts.TRAIN_ROWS_FILE)


def write_rows(model_uri: str, digests: Iterable[bytes]) -> None:
    import tensorflow as tf
    with tf.io.gfile.GFile(rows_path(model_uri), "wb") as f:
        f.write(b"".join(digests))


def read_rows(model_uri: str) -> Optional[Set[bytes]]:
    """The served model's train row digests, or None when absent, oversized or damaged."""
    import tensorflow as tf
    path = rows_path(model_uri)
    try:
        if not tf.io.gfile.exists(path) or tf.io.gfile.stat(path).length > MAX_ROWS_FILE_BYTES:
            return None
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read(MAX_ROWS_FILE_BYTES + 1)
    except tf.errors.OpError:
        return None
    if not data or len(data) % DIGEST_BYTES:
        return None
    return {data[i:i + DIGEST_BYTES] for i in range(0, len(data), DIGEST_BYTES)}


def warm_epochs(epochs: int, new_rows: int, rows: int) -> int:
    """The epochs a continued run trains: the new rows' share of ``epochs``, rounded up,
    at least MIN_EPOCHS (early stopping needs an epoch to compare), at most ``epochs``."""
    owed = math.ceil(epochs * new_rows / rows) if rows else epochs
    return max(1, min(epochs, max(MIN_EPOCHS, owed)))


def plan(base_model_uri: Optional[str], base_info: Optional[Dict[str, Any]], settings_json: str,
         namespace: Optional[str], digests: List[bytes], epochs: int, cold_start: bool) -> Plan:
    """Whether and how to continue the served model at ``base_model_uri`` (its head.json
    ``base_info``; model_info.read_head_info) for a run with these settings (TrainerSettings
    JSON), feature namespace (bottleneck_gen.cache_namespace) and train ``digests``."""
    if cold_start:
        return Plan(None, "--cold-start: from the ImageNet weights")
    if not base_model_uri:
        return Plan(None, "no served model to continue: from the ImageNet weights")
    training = (base_info or {}).get("training")
    served_settings = _comparable(training.get("settings")) if isinstance(training, dict) else None
    if served_settings is None or served_settings != _comparable(settings_json):
        return Plan(None, "the served model was trained with other settings: from the ImageNet weights")
    if not namespace or base_info.get("feature_namespace") != namespace:
        return Plan(None, "the served model was trained on another backbone, weights or cut: "
                          "from the ImageNet weights")
    served = read_rows(base_model_uri)
    if served is None:
        return Plan(None, f"the served model has no readable {contracts.TRAIN_ROWS_FILE}: "
                          "from the ImageNet weights")
    new = sum(1 for d in digests if d not in served)
    return Plan(base_model_uri, f"continued from the served model: {new} of {len(digests)} train rows new",
                warm_epochs(epochs, new, len(digests)), new, len(digests))


def describe(plan_json: Optional[Dict[str, Any]]) -> Optional[str]:
    """One line for the report from head.json's ``warm_start`` (None: not recorded)."""
    if not isinstance(plan_json, dict) or not isinstance(plan_json.get("reason"), str):
        return None
    if plan_json.get("source"):
        epochs = plan_json.get("epochs")
        return (f"{plan_json['reason']}; {epochs} epoch{'' if epochs == 1 else 's'} at "
                f"{LEARNING_RATE_FACTOR:g} x the step sizes")
    return plan_json["reason"]


def _comparable(settings_json: Any) -> Optional[Dict[str, Any]]:
    """TrainerSettings JSON (head.json's ``training.settings``) without ``cold_start``,
    which says how a run starts, not what it trains: a --cold-start run's model is
    continued by the next run without it."""
    try:
        config = json.loads(settings_json) if isinstance(settings_json, str) else None
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    config.pop("cold_start", None)
    return config
