"""LabelGuard: stop a run whose label space drifted from the blessed model's.

Runs after StatisticsGen, before the expensive Transform. It compares the class
distribution in this run's statistics (feature ``label_name``, train + eval)
with the one the latest blessed model was trained on (``label_space.json``,
written by the Trainer into every Model artifact):

  * a class appeared or disappeared -> fail, naming the classes; a model with a
    different label space can't be gated against that baseline;
  * a class's share of the images moved by more than ``max_class_share_change``
    (absolute, e.g. 0.2 = 20 points) -> fail, naming the class and both shares.

No baseline (first run, or nothing blessed yet) -> nothing to compare, passes.
``allow_label_change`` turns the label-set check off for a deliberate change.
The verdict is written to ``label_check.json`` in the output artifact.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import previous_artifacts
from components.contracts import LABEL_CHECK_FILE, LABEL_CHECK_TYPE, LABEL_NAME_KEY, LABEL_SPACE_FILE


class LabelSpaceError(RuntimeError):
    """The data's label space differs from the blessed model's; message names the class."""


class IncompleteClassCounts(RuntimeError):
    """The statistics' label histogram leaves classes out (TFDV cuts it at a size)."""


class LabelCheck(Artifact):
    TYPE_NAME = LABEL_CHECK_TYPE  # importable: see components/__init__.py


class LabelGuardSpec(ComponentSpec):
    PARAMETERS = {
        "allow_label_change": ExecutionParameter(type=int),
        "max_class_share_change": ExecutionParameter(type=float),
    }
    INPUTS = {
        "statistics": ChannelParameter(type=standard_artifacts.ExampleStatistics),
        "baseline_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {"label_check": ChannelParameter(type=LabelCheck)}


def class_counts_from_statistics(stats_uri: str, splits: List[str]) -> Dict[str, int]:
    """Images per class name in `splits`, from the label name's rank histogram. Raises
    IncompleteClassCounts when the histogram holds fewer classes than the split has."""
    counts: Dict[str, int] = {}
    for split in splits:
        path = os.path.join(stats_uri, f"Split-{split}", "FeatureStats.pb")
        stats = tfdv.load_stats_binary(path)
        for feature in stats.datasets[0].features:
            if feature.path.step and feature.path.step[0] == LABEL_NAME_KEY:
                buckets = feature.string_stats.rank_histogram.buckets
                if feature.string_stats.unique > len(buckets):
                    raise IncompleteClassCounts(
                        f"the {split} split's statistics count {len(buckets)} of its "
                        f"{feature.string_stats.unique} classes: StatisticsGen's stats_options "
                        f"need num_rank_histogram_buckets >= {feature.string_stats.unique} "
                        "(components/statistics_options.py)")
                for bucket in buckets:
                    counts[bucket.label] = counts.get(bucket.label, 0) + int(bucket.sample_count)
    return counts


def check(current: Dict[str, int], baseline: Optional[Dict[str, int]],
          allow_label_change: bool, max_share_change: float) -> List[str]:
    """Problems found (empty: fine). Each names the class."""
    if not baseline:
        return []
    problems = []
    new = sorted(set(current) - set(baseline))
    gone = sorted(set(baseline) - set(current))
    if not allow_label_change:
        problems += [f"class '{c}' is new: the blessed model knows only {sorted(baseline)}"
                     for c in new]
        problems += [f"class '{c}' is gone: the blessed model was trained with it" for c in gone]
    total_now, total_then = sum(current.values()) or 1, sum(baseline.values()) or 1
    for c in sorted(set(current) & set(baseline)):
        now, then = current[c] / total_now, baseline[c] / total_then
        if abs(now - then) > max_share_change:
            problems.append(f"class '{c}' share changed from {then:.1%} to {now:.1%} of the images "
                            f"(limit: {max_share_change:.0%} points)")
    return problems


def read_label_space(model_uri: str) -> Optional[Dict[str, int]]:
    path = os.path.join(model_uri, LABEL_SPACE_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return {k: int(v) for k, v in json.load(f)["class_counts"].items()}


@previous_artifacts.as_resolved("baseline_model")
class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict, output_dict, exec_properties):
        stats = artifact_utils.get_single_instance(input_dict["statistics"])
        splits = artifact_utils.decode_split_names(stats.split_names)
        current = class_counts_from_statistics(stats.uri, splits)
        baseline_models = input_dict.get("baseline_model") or []
        baseline = read_label_space(baseline_models[0].uri) if baseline_models else None
        problems = check(current, baseline, bool(exec_properties["allow_label_change"]),
                         float(exec_properties["max_class_share_change"]))
        out = artifact_utils.get_single_instance(output_dict["label_check"])
        report = {"current": current, "baseline": baseline, "problems": problems,
                  "baseline_model": baseline_models[0].uri if baseline_models else None}
        with tf.io.gfile.GFile(os.path.join(out.uri, LABEL_CHECK_FILE), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
        out.set_int_custom_property("ok", int(not problems))
        if problems:
            raise LabelSpaceError("; ".join(problems) + " (rerun with --allow-label-change "
                                  "after a deliberate change, or fix the images)")


class LabelGuard(base_component.BaseComponent):
    SPEC_CLASS = LabelGuardSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, statistics: types.BaseChannel, baseline_model: types.BaseChannel,
                 allow_label_change: bool, max_class_share_change: float):
        super().__init__(spec=LabelGuardSpec(
            statistics=statistics, baseline_model=baseline_model,
            allow_label_change=int(allow_label_change),
            max_class_share_change=float(max_class_share_change),
            label_check=types.Channel(type=LabelCheck)))
