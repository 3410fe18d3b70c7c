"""What a run takes from earlier runs, and what it leaves for the next: the one
place that reads ``PipelineConfig.lookup``.

* "resolver" (the local runner, Vertex AI Pipelines): TFX Resolver nodes query
  MLMD (LatestBlessedModelStrategy; LatestArtifactStrategy over FeatureCache);
  an empty channel when nothing matches. MLMD is the record: no recorder nodes.
* "registry" (open-source KFP v2, whose backend rejects resolver tasks):
  container steps of components/previous_artifacts.py read and write JSON
  records under <pipeline_root>/_registry/<pipeline_name>/. Their "nothing
  found" output reaches consumers as an empty list (previous_artifacts.as_resolved).

Each function returns the nodes to add to the pipeline and, for lookups, the
channel to wire: the pipeline definition itself has no mode.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

# Not `from tfx import v1`: it imports the Google Cloud extensions (Vertex AI,
# BigQuery), seconds of start-up every run and every pod (pipeline/pipeline.py).
from tfx.dsl.components.base.base_node import BaseNode
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_artifact_strategy import LatestArtifactStrategy
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy)
from tfx.types import BaseChannel, standard_artifacts
from tfx.types.channel import Channel

from components import contracts, previous_artifacts
from pipeline.config import PipelineConfig


def _registry(config: PipelineConfig) -> Optional[str]:
    """The registry URI with registry lookups, None with resolvers."""
    if config.lookup == "resolver":
        return None
    if config.lookup == "registry":
        return previous_artifacts.registry_uri(config.pipeline_root, config.pipeline_name)
    raise ValueError(f"config.lookup must be 'resolver' or 'registry', got {config.lookup!r}")


def previous_baseline(config: PipelineConfig) -> Tuple[List[BaseNode], BaseChannel]:
    """(nodes, channel of the latest blessed Model): the Evaluator's baseline, LabelGuard's label space."""
    registry = _registry(config)
    if registry is None:
        node = Resolver(
            strategy_class=LatestBlessedModelStrategy,
            model=Channel(type=standard_artifacts.Model),
            model_blessing=Channel(type=standard_artifacts.ModelBlessing),
        ).with_id(contracts.BLESSED_MODEL_RESOLVER)
    else:
        node = previous_artifacts.LatestBlessedModelLookup(registry).with_id(
            contracts.BLESSED_MODEL_LOOKUP)
    return [node], node.outputs["model"]


def previous_feature_cache(config: PipelineConfig) -> Tuple[List[BaseNode], BaseChannel]:
    """(nodes, channel of the latest FeatureCache): what BottleneckGen reuses."""
    registry = _registry(config)
    if registry is None:
        node = Resolver(
            strategy_class=LatestArtifactStrategy,
            cache=Channel(type=previous_artifacts.FeatureCache),
        ).with_id(contracts.FEATURE_CACHE_RESOLVER)
    else:
        node = previous_artifacts.LatestFeatureCacheLookup(registry).with_id(
            contracts.FEATURE_CACHE_LOOKUP)
    return [node], node.outputs["cache"]


def recorders(config: PipelineConfig, model: BaseChannel, model_blessing: BaseChannel,
              feature_cache: BaseChannel, last_step: Optional[BaseNode] = None) -> List[BaseNode]:
    """Nodes that leave this run's artifacts for the next run's lookups: the model
    once blessed, and the FeatureCache. None with resolvers (MLMD holds them).

    The blessed model is recorded only after `last_step` (the Pusher) finished:
    an unfinished run's blessing is never a baseline (docs/operations.md; with
    resolvers pipeline/run_outcome.py abandons it)."""
    registry = _registry(config)
    if registry is None:
        return []
    record_blessed = previous_artifacts.RecordBlessedModel(
        model=model, model_blessing=model_blessing, registry=registry,
    ).with_id(contracts.RECORD_BLESSED_MODEL)
    if last_step is not None:
        record_blessed.add_upstream_node(last_step)
    return [
        record_blessed,
        previous_artifacts.RecordFeatureCache(
            feature_cache=feature_cache, registry=registry,
        ).with_id(contracts.RECORD_FEATURE_CACHE),
    ]
