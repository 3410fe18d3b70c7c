"""StatisticsGen with and without the image declared as bytes, same Examples, one process.

    python -m benchmarks.statistics_gen --workdir WORKDIR [--repeat 2]
        [--output benchmarks/results/statistics_gen.json]

WORKDIR is a `retrain run` workdir (on photos: `python -m benchmarks.photo_reruns
--images 600 --keep DIR`, then DIR/work). Its last StatisticsGen execution's
Examples are read from MLMD and TFX's StatisticsGen executor runs on them again,
alternating `--repeat` times: with TFX's defaults (the image bytes sketched as a
categorical string) and with components/statistics_options.py (the image is
TFDV's image_domain: bytes statistics only). Prints each one's seconds, their
ratio, and whether SchemaGen's inference and LabelGuard's class counts are the
same from both; writes them as JSON. Timings on a shared machine vary: alternate,
and compare within a run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time
from typing import Dict, List

from benchmarks.evaluator_paths import last_evaluator_io
from benchmarks.pipeline_throughput import machine_facts, write_result

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "statistics_gen.json"


def statistics(examples, folder: pathlib.Path, declared: bool, classes: int = 0):
    """Runs StatisticsGen's executor into `folder`: (seconds, its statistics artifact).
    `declared`: with the pipeline's options for `classes` classes, else TFX's defaults."""
    from tfx.components import StatisticsGen
    from tfx.components.statistics_gen import executor
    from tfx.types import channel_utils, standard_artifacts
    from components import statistics_options
    component = StatisticsGen(examples=channel_utils.as_channel([examples]),
                              stats_options=statistics_options.stats_options(classes) if declared else None)
    out = standard_artifacts.ExampleStatistics()
    out.uri = str(folder)
    props = {k: v for k, v in component.exec_properties.items() if v is not None}
    start = time.perf_counter()
    executor.Executor().Do({"examples": [examples]}, {"statistics": [out]}, props)
    return time.perf_counter() - start, out


def inferred_schema(stats, folder: pathlib.Path) -> bytes:
    """SchemaGen's executor on `stats`: its schema file's bytes."""
    from tfx.components.schema_gen import executor
    from tfx.types import standard_artifacts
    out = standard_artifacts.Schema()
    out.uri = str(folder)
    executor.Executor().Do({"statistics": [stats]}, {"schema": [out]},
                           {"infer_feature_shape": 1, "exclude_splits": "[]"})
    return (folder / "schema.pbtxt").read_bytes()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a retrain run workdir (its last StatisticsGen)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each, alternating")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = ap.parse_args(argv)
    from tfx.types import artifact_utils
    from components.label_guard import class_counts_from_statistics
    _, inputs, _ = last_evaluator_io(args.workdir, "StatisticsGen")
    (examples,) = inputs["examples"]
    splits = artifact_utils.decode_split_names(examples.split_names)
    examples_bytes = sum(f.stat().st_size for f in pathlib.Path(examples.uri).rglob("*.gz"))
    seconds: Dict[str, List[float]] = {"tfx_default": [], "image_declared": []}
    same = {}
    with tempfile.TemporaryDirectory(prefix="statistics-gen-") as tmp:
        for i in range(args.repeat):
            outs = {}
            for name in seconds:
                s, outs[name] = statistics(examples, pathlib.Path(tmp) / f"{name}-{i}", name == "image_declared")
                seconds[name].append(round(s, 2))
            if i == 0:
                schemas = {n: inferred_schema(o, pathlib.Path(tmp) / f"schema-{n}") for n, o in outs.items()}
                counts = {n: class_counts_from_statistics(o.uri, splits) for n, o in outs.items()}
                same = {"schema": len(set(schemas.values())) == 1,
                        "class_counts": counts["tfx_default"] == counts["image_declared"]}
    best = {k: min(v) for k, v in seconds.items()}
    result = {"workdir": args.workdir, "examples_mb": round(examples_bytes / 2 ** 20, 1),
              "splits": splits, "seconds": seconds,
              "declared_over_default": round(best["image_declared"] / best["tfx_default"], 3),
              "same": same, "machine": machine_facts()}
    print(f"StatisticsGen on {result['examples_mb']} MB of Examples ({os.path.basename(examples.uri)}), seconds:")
    for name, v in seconds.items():
        print(f"  {name:16} {v}")
    print(f"best ratio image_declared/tfx_default {result['declared_over_default']}; "
          f"same inferred schema: {same['schema']}; same class counts: {same['class_counts']}")
    print(f"wrote {write_result(result, args.output)}")
    return result


if __name__ == "__main__":
    main()
