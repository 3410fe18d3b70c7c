"""TFLiteExport's seconds per part, on both parity references, same model, same data.

    python -m benchmarks.tflite_export_parts --workdir WORKDIR [--repeat 1]
        [--output benchmarks/results/tflite_export_parts.json]

WORKDIR is a `retrain run` workdir. Its last TFLiteExport execution's inputs (the
model, the raw Examples, the blessing and, when the run had it, BottleneckGen's
bottlenecks; from an older run, the last BottleneckGen's output) are read from
MLMD and the TFLiteExport executor runs on them again, alternating the two parity
references (components/tflite/reference.py): the head on the cached eval features,
and without the bottlenecks input the SavedModel pass over the images (the path
every run took before). Prints the table of the parts the executor records
(``part_seconds``: head load, pixel model, calibration read, reference,
SavedModel load, eval records read, decode, each variant's conversion and parity),
what they leave unaccounted and the executor's wall seconds; writes them as JSON. Timings on a shared machine vary: alternate,
and compare within a run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time
from typing import Dict, List

from benchmarks.evaluator_paths import last_evaluator_io
from benchmarks.pipeline_throughput import machine_facts, write_result

DEFAULT_OUTPUT = pathlib.Path(__file__).parent / "results" / "tflite_export_parts.json"


def export(props, inputs, folder: pathlib.Path) -> Dict:
    """Runs TFLiteExport's executor on `inputs` into `folder`: its record of the run."""
    from components.tflite import component
    from components.tflite.parity import ParityReport
    out = component.TFLiteModels()
    out.uri = str(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    component.Executor().Do(inputs, {"tflite_models": [out]}, props)
    seconds = time.perf_counter() - start
    report = ParityReport.read(str(folder))
    return {"wall": round(seconds, 2),
            "reference": out.get_string_custom_property(component.PARITY_REFERENCE),
            "parts": json.loads(out.get_string_custom_property(component.PART_SECONDS)),
            "eval_examples": report.eval_examples, "reference_accuracy": report.reference_accuracy,
            "agreement": {v.variant: v.agreement for v in report.variants}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a retrain run workdir (its last TFLiteExport)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each path, alternating")
    ap.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = ap.parse_args(argv)
    from components.tflite import component, reference
    props, inputs, _ = last_evaluator_io(args.workdir, "TFLiteExport")
    if not inputs.get(component.BOTTLENECKS):  # a run from before the input existed
        inputs[component.BOTTLENECKS] = last_evaluator_io(args.workdir, "BottleneckGen")[2]["bottlenecks"]
    without = {k: v for k, v in inputs.items() if k != component.BOTTLENECKS}
    runs: Dict[str, List[Dict]] = {reference.FEATURES: [], reference.SAVED_MODEL: []}
    with tempfile.TemporaryDirectory(prefix="tflite-export-parts-") as tmp:
        for i in range(args.repeat):
            for name, given in ((reference.SAVED_MODEL, without), (reference.FEATURES, inputs)):
                record = export(props, given, pathlib.Path(tmp) / f"{name}-{i}")
                if record["reference"] != name:
                    raise SystemExit(f"the {name} run took the {record['reference']} path: see its log")
                runs[name].append(record)
    best = {k: min(r["wall"] for r in v) for k, v in runs.items()}
    result = {"workdir": args.workdir, "eval_examples": runs[reference.FEATURES][0]["eval_examples"],
              "runs": runs, "features_over_saved_model": round(best[reference.FEATURES]
                                                               / best[reference.SAVED_MODEL], 3),
              "same_reference_accuracy": len({r["reference_accuracy"] for v in runs.values() for r in v}) == 1,
              "machine": machine_facts()}
    parts = sorted({p for v in runs.values() for r in v for p in r["parts"]})
    print(f"TFLiteExport on {result['eval_examples']} eval examples, seconds (first run of each path)")
    print(f"{'part':24} {'saved_model':>12} {'features':>10}")
    for run in (r for v in runs.values() for r in v):  # what no part covers (imports, GC, writes)
        run["unaccounted"] = round(run["wall"] - sum(run["parts"].values()), 2)
    for p in parts + ["unaccounted", "wall"]:
        cells = [(r[0]["parts"] if p not in ("wall", "unaccounted") else r[0]).get(p) for r in
                 (runs[reference.SAVED_MODEL], runs[reference.FEATURES])]
        print(f"{p:24} " + " ".join(f"{'-' if c is None else c:>{w}}" for c, w in zip(cells, (12, 10))))
    print(f"best wall ratio features/saved_model {result['features_over_saved_model']}; "
          f"same reference accuracy: {result['same_reference_accuracy']}")
    print(f"wrote {write_result(result, args.output)}")
    return result


if __name__ == "__main__":
    main()
