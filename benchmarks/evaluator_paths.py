"""The Evaluator on cached features vs on the images, same models, same data, one process.

    python -m benchmarks.evaluator_paths --workdir WORKDIR [--repeat 2]
        [--output benchmarks/results/evaluator_paths.json]

WORKDIR is a `retrain run` workdir. Its last Evaluator execution's inputs (the
candidate, the baseline, the eval examples and BottleneckGen's features) are read
from MLMD and the Evaluator's executor runs on them again, alternating the two
paths (components/evaluator.py) `--repeat` times each: with the features input
(the head-only signature on the cached features, when both models have it) and
without (TFMA over the images: the whole serving model, backbone included).
Prints the seconds of each path, their ratio and whether the gates agree; writes
them as JSON. Timings on a shared machine vary: alternate, and compare within a run.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time
from typing import Dict, List, Tuple

from benchmarks.pipeline_throughput import machine_facts, write_result

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "evaluator_paths.json"


def last_evaluator_io(workdir, component: str = "Evaluator"
                      ) -> Tuple[Dict[str, str], Dict[str, list], Dict[str, list]]:
    """(exec properties, {input key: [artifact]}, {output key: [artifact]}) of the
    workdir's last `component` execution, read from its MLMD store as TFX artifacts."""
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from tfx.types import artifact_utils
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(pathlib.Path(workdir) / "metadata.sqlite")
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    types = {t.id: t for t in store.get_execution_types()}
    execution = max((e for e in store.get_executions() if types[e.type_id].name.endswith("." + component)),
                    key=lambda e: e.id)
    props = {k: v.string_value if v.HasField("string_value") else v.int_value
             for k, v in execution.custom_properties.items()
             if v.HasField("string_value") or v.HasField("int_value")}
    events = store.get_events_by_execution_ids([execution.id])
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    artifact_types = {t.id: t for t in store.get_artifact_types()}
    sides: Tuple[Dict[str, list], Dict[str, list]] = ({}, {})
    for e in events:
        a = artifacts[e.artifact_id]
        side = sides[0] if e.type == metadata_store_pb2.Event.INPUT else sides[1]
        side.setdefault(e.path.steps[0].key, []).append(
            artifact_utils.deserialize_artifact(artifact_types[a.type_id], a))
    return props, sides[0], sides[1]


def evaluate(props, inputs, folder: pathlib.Path) -> Tuple[float, str, Dict]:
    """Runs the Evaluator's executor on `inputs` into `folder`: (seconds, path taken, summary)."""
    from tfx.types import standard_artifacts
    from components import evaluation, evaluator
    outputs = {}
    for key, cls in (("evaluation", standard_artifacts.ModelEvaluation),
                     ("blessing", standard_artifacts.ModelBlessing)):
        (folder / key).mkdir(parents=True)
        outputs[key] = [cls()]
        outputs[key][0].uri = str(folder / key)
    start = time.perf_counter()
    evaluator.EvaluatorExecutor().Do(inputs, outputs, props)
    seconds = time.perf_counter() - start
    path = outputs["evaluation"][0].get_string_custom_property(evaluator.EVAL_INPUT)
    from components import model_info
    labels = (model_info.read_head_info(inputs["model"][0].uri) or {}).get("label_names") or []
    return seconds, path, evaluation.summarize(str(folder / "evaluation"), labels)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a retrain run workdir (its last Evaluator)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each path, alternating")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = ap.parse_args(argv)
    props, inputs, _ = last_evaluator_io(args.workdir)
    images_only = {k: v for k, v in inputs.items() if k != "features"}
    seconds: Dict[str, List[float]] = {"features": [], "images": []}
    summaries = {}
    with tempfile.TemporaryDirectory(prefix="evaluator-paths-") as tmp:
        for i in range(args.repeat):
            for name, given in (("features", inputs), ("images", images_only)):
                took, path, summary = evaluate(props, given, pathlib.Path(tmp) / f"{name}-{i}")
                if path != name:
                    raise SystemExit(f"the {name} run took the {path} path: see the Evaluator's log")
                seconds[name].append(round(took, 2))
                summaries[name] = summary
    same = all(summaries["features"][k] == summaries["images"][k]
               for k in ("confusion_matrix", "example_count", "validation_ok"))
    best = {k: min(v) for k, v in seconds.items()}
    result = {"workdir": args.workdir, "eval_examples": summaries["images"]["example_count"],
              "baseline": bool(inputs.get("baseline_model")), "seconds": seconds,
              "features_over_images": round(best["features"] / best["images"], 3),
              "same_counts_and_verdict": same, "machine": machine_facts()}
    print(f"Evaluator on {result['eval_examples']} eval examples "
          f"({'with' if result['baseline'] else 'without'} baseline): features {seconds['features']} s, "
          f"images {seconds['images']} s, best ratio {result['features_over_images']}; "
          f"same counts and verdict: {same}")
    print(f"wrote {write_result(result, args.output)}")
    return result


if __name__ == "__main__":
    main()
