"""Operating commands for `retrain`: report, runs, bless.

  retrain report --workdir DIR [--run-id ID]         (re)build a run's HTML report
                                                     (latest.html: the newest run's only)
  retrain runs   --workdir DIR [--limit N] [--json]   past runs, newest first
  retrain bless  --workdir DIR --version V [--reason TEXT]
  retrain bless  --workdir DIR --reset    [--reason TEXT]
  retrain bless  --pipeline-root URI [--serving-dir URI] --version V | --reset   (Kubeflow)

`register(subparsers)` adds them to the `retrain` parser and returns
{command: handler(args) -> exit code}. Exit codes as for `retrain run`: 0 done,
2 bad input (no runs in the workdir, no such version or run), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict

from pipeline.config import PipelineConfig


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="the workdir of `retrain run`")
    p.add_argument("--pipeline-name", default="image-retrain", help=argparse.SUPPRESS)


def register(subparsers) -> Dict[str, Callable[[argparse.Namespace], int]]:
    rp = subparsers.add_parser("report", help="build the HTML report of a run (default: the latest)")
    _common(rp)
    rp.add_argument("--run-id", default=None, help="a run id from `retrain runs` (default: latest)")
    rp.add_argument("--no-latency", action="store_true",
                    help="don't time the TFLite files (recorded latencies are still shown)")

    ls = subparsers.add_parser("runs", help="list past runs from the workdir's MLMD store")
    _common(ls)
    ls.add_argument("--limit", type=int, default=None, help="at most this many runs")
    ls.add_argument("--json", action="store_true", help="one JSON list instead of a table")

    bl = subparsers.add_parser(
        "bless", help="make a pushed version the baseline again, or reset the baseline")
    where = bl.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="the workdir of `retrain run`")
    where.add_argument("--pipeline-root", help="Kubeflow runs (`retrain compile --target kfp`): "
                       "records the baseline in the registry under this root (local, gs://, s3://)")
    bl.add_argument("--serving-dir", default=None,
                    help="with --pipeline-root: where versions were pushed "
                         "(default: <pipeline-root>/serving)")
    bl.add_argument("--pipeline-name", default="image-retrain", help=argparse.SUPPRESS)
    what = bl.add_mutually_exclusive_group(required=True)
    what.add_argument("--version", type=int, help="pushed version (serving/<V>) to compare new models with")
    what.add_argument("--reset", action="store_true",
                      help="no baseline: the next run is judged by --min-accuracy alone "
                           "(e.g. after a deliberate label-space change)")
    bl.add_argument("--reason", default="", help="why; recorded in MLMD with the operation")
    bl.add_argument("--json", action="store_true", help="print the result as JSON")
    return {"report": _store_errors(cmd_report), "runs": _store_errors(cmd_runs),
            "bless": _store_errors(cmd_bless)}


def _store_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`handler`, with a corrupt or foreign MLMD store said in one line (exit 2),
    never a traceback quoting SQL."""
    def guarded(args: argparse.Namespace) -> int:
        from ml_metadata import errors as mlmd_errors

        from pipeline import mlmd_store
        try:
            return handler(args)
        except mlmd_store.StoreError as e:
            return _fail(str(e))
        except (mlmd_errors.StatusError, RuntimeError) as e:
            if not args.workdir or (isinstance(e, RuntimeError) and "query" not in str(e)):
                raise  # not the workdir's store (bless --pipeline-root has none)
            return _fail(str(mlmd_store.store_failure(_config(args).metadata_path, e)))
    return guarded


def _config(args) -> PipelineConfig:
    return PipelineConfig(images="", workdir=os.path.abspath(args.workdir),
                          pipeline_name=args.pipeline_name)


def _fail(message: str, code: int = 2) -> int:
    print(f"retrain: error: {message}", file=sys.stderr)
    return code


def cmd_report(args) -> int:
    from pipeline import mlmd_store, report
    from pipeline.run_record import RunRecord
    config = _config(args)
    try:
        store = mlmd_store.open_store(config)
    except FileNotFoundError as e:
        return _fail(str(e))
    runs = mlmd_store.run_contexts(store, config.pipeline_name)
    if not runs:
        return _fail(f"no runs in {config.workdir}")
    chosen = runs[0]
    if args.run_id:
        chosen = next((c for c in runs if c.name == args.run_id), None)
        if chosen is None:
            return _fail(f"no run {args.run_id!r} in {config.workdir} (see `retrain runs`)")
    record = RunRecord.from_store(store, chosen, config)
    # latest.html is the newest run's report: an older run's never replaces it.
    print(report.build_report(config, record, measure_latency=not args.no_latency,
                              latest=chosen.id == runs[0].id))
    return 0


def cmd_runs(args) -> int:
    from pipeline import history
    config = _config(args)
    try:
        rows = history.list_runs(config, limit=args.limit)
    except (FileNotFoundError, history.HistoryError) as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "time_ms"} for r in rows],
                         sort_keys=True))
    elif not rows:
        print(f"no runs in {config.workdir}")
    else:
        print(history.format_runs(rows))
    return 0


def cmd_bless(args) -> int:
    if args.pipeline_root:
        return _bless_registry(args)
    from pipeline import history
    config = _config(args)
    try:
        if args.reset:
            result = history.reset_baseline(config, reason=args.reason)
            message = (f"baseline reset: {len(result['revoked'])} blessing(s) revoked; the next run "
                       "has no baseline and is judged by the minimum accuracy alone "
                       f"(recorded as {result['operation']})")
        else:
            result = history.bless_version(config, args.version, reason=args.reason)
            acc = result.get("accuracy")
            message = (f"version {result['version']} is the baseline again"
                       + (f" (eval accuracy {acc:.4f} when pushed)" if acc is not None else "")
                       + f": the next run is compared with model {result['model_uri']} "
                       f"(recorded as {result['operation']})")
    except (FileNotFoundError, history.HistoryError) as e:
        return _fail(str(e))
    print(json.dumps(result, sort_keys=True) if args.json else message)
    return 0


def _bless_registry(args) -> int:
    from pipeline import history, registry_ops
    root = args.pipeline_root if "://" in args.pipeline_root else os.path.abspath(args.pipeline_root)
    try:
        if args.reset:
            result = registry_ops.reset_baseline(root, args.pipeline_name, reason=args.reason)
            message = ("baseline reset: the next Kubeflow run has no baseline and is judged by the "
                       f"minimum accuracy alone (recorded as {result['operation']})")
        else:
            result = registry_ops.bless_version(root, args.pipeline_name, args.version,
                                                serving_dir=args.serving_dir, reason=args.reason)
            acc = result.get("accuracy")
            message = (f"version {result['version']} is the baseline again"
                       + (f" (eval accuracy {acc:.4f} when pushed)" if acc is not None else "")
                       + f": the next Kubeflow run is compared with model {result['model_uri']} "
                       f"(recorded as {result['operation']})")
    except history.HistoryError as e:
        return _fail(str(e))
    print(json.dumps(result, sort_keys=True) if args.json else message)
    return 0


def standalone(register_commands, argv=None) -> int:
    """A module's commands alone, as `retrain` parses them (for tests and `python -m`)."""
    parser = argparse.ArgumentParser(prog="retrain")
    handlers = register_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return handlers[args.command](args)


def main(argv=None) -> int:
    return standalone(register, argv)


if __name__ == "__main__":
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for _name in ("", "tensorflow", "absl", "apache_beam"):
        logging.getLogger(_name).setLevel(logging.ERROR)
    sys.exit(main())
