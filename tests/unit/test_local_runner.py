"""pipeline.local_runner: what a first run shows on the console."""

import logging

from components.contracts import BLESSED_MODEL_RESOLVER, FEATURE_CACHE_RESOLVER
from pipeline import local_runner


def _record(level, node, detail):
    return logging.LogRecord("absl", level, __file__, 1, "[%s] Input resolution error: %s",
                             (node, detail), None)


def test_first_run_cache_miss_traceback_is_dropped_other_errors_kept():
    keep = local_runner._FirstRunCacheFilter().filter
    none = f"Error while resolving inputs for {FEATURE_CACHE_RESOLVER}: <LatestArtifactStrategy> returned None."
    assert not keep(_record(logging.ERROR, FEATURE_CACHE_RESOLVER, none))
    # Any other resolution failure, and anything that is not an error, still shows.
    assert keep(_record(logging.ERROR, BLESSED_MODEL_RESOLVER,
                        f"Error while resolving inputs for {BLESSED_MODEL_RESOLVER}: returned None."))
    assert keep(_record(logging.ERROR, FEATURE_CACHE_RESOLVER, "store unavailable"))
    assert keep(_record(logging.INFO, FEATURE_CACHE_RESOLVER, none))
    assert keep(logging.LogRecord("absl", logging.ERROR, __file__, 1, "Trainer failed", (), None))
