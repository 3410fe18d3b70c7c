"""The gate a run's blessing was decided by, read back from the Evaluator's output.

Runs record it as ``contracts.GATE_FILE`` (components/evaluation.write_gate); runs
made before that are read from TFMA's eval config, then the Pusher's ``gate``
setting, then the run's config (``read_gate``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Dict, Optional

from components import contracts
from pipeline import mlmd_store
from pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Gate:
    """The thresholds that decided the blessing, and where they were read."""
    min_accuracy: Optional[float]
    max_accuracy_drop: Optional[float]
    baseline_compared: Optional[bool]  # None: not recorded (runs before gate.json)
    source: str
    max_class_recall_drop: Optional[float] = None  # the opt-in per-class gate; None: off



def read_gate(evaluation_uri: Optional[str], pusher_gate: Optional[str],
              config: PipelineConfig) -> Gate:
    """The thresholds the Evaluator applied: its gate.json; for runs made before
    it recorded one, its eval config (the change threshold is missing there when
    there was no baseline), then the Pusher's ``gate`` setting, then `config`."""
    recorded = _read_gate_file(evaluation_uri) if evaluation_uri else None
    if recorded is not None:
        return recorded
    found: Dict[str, float] = {}
    if evaluation_uri:
        try:
            from tensorflow_model_analysis.writers import eval_config_writer

            from components import evaluation
            found = evaluation.gate_thresholds(eval_config_writer.load_eval_run(evaluation_uri)[0])
        except Exception as e:  # noqa: BLE001 - a missing config falls back like an old one
            log.warning("eval config of %s unreadable: %s", evaluation_uri, e)
        if "min_accuracy" in found and "max_accuracy_drop" in found:
            return Gate(found["min_accuracy"], found["max_accuracy_drop"], None,
                        "the Evaluator's eval config")
    setting = mlmd_store.json_property(pusher_gate, dict, {})
    source = "the Pusher's gate setting" if setting else "the run settings"
    values = {"min_accuracy": setting.get("min_accuracy", config.min_accuracy),
              "max_accuracy_drop": setting.get("max_accuracy_drop", config.max_accuracy_drop)}
    if found:
        values.update(found)
        source = f"the Evaluator's eval config (max_accuracy_drop: {source})"
    return Gate(values["min_accuracy"], values["max_accuracy_drop"], None, source)


def _read_gate_file(evaluation_uri: str) -> Optional[Gate]:
    import tensorflow as tf
    path = os.path.join(evaluation_uri, contracts.GATE_FILE)
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            data = json.load(f)
        numbers = [data[k] for k in ("min_accuracy", "max_accuracy_drop")]
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
            raise ValueError("thresholds are not numbers")
        compared, per_class = data.get("baseline_compared"), data.get("max_class_recall_drop")
        return Gate(float(numbers[0]), float(numbers[1]), compared if isinstance(compared, bool)
                    else None, f"the Evaluator's record ({contracts.GATE_FILE})",
                    None if per_class is None else float(per_class))  # malformed: ValueError
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s is unreadable (%s): thresholds from the eval config instead", path, e)
        return None
