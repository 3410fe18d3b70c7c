"""TFX's Trainer, whose ``base_model`` (the served model a fine-tuning rerun continues,
components/continuation.py) may come from a registry lookup that found nothing.

The stock executor would hand such an empty artifact to run_fn as ``fn_args.base_model``;
``as_resolved`` drops it first, as for the Evaluator's baseline. Same component id
(``Trainer``), inputs and outputs as TFX's.
"""

from __future__ import annotations

from tfx.components import Trainer as StockTrainer
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import executor_spec

from components.previous_artifacts import as_resolved


@as_resolved("base_model")
class TrainerExecutor(trainer_executor.GenericExecutor):
    """GenericExecutor (run_fn) with a "nothing found" base model passed on as none."""


class Trainer(StockTrainer):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(TrainerExecutor)
