"""`retrain`: the command line.

  retrain run --images DIR --workdir DIR [--backbone NAME] [--min-accuracy X] [--force] [--json]
  retrain fetch-weights [--backbone NAME]
  retrain fetch-data [--dest DIR]
  retrain predict | report | runs | bless       (pipeline/predict.py, pipeline/ops_cli.py)
  retrain audit                                 (pipeline/audit_cli.py)
  retrain compile | submit | schedule           (kubeflow/cli.py)

Exit codes: 0 the pipeline ran to the end (blessed or not), 2 bad input or
configuration (one line on stderr), 1 the pipeline failed.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
import warnings

from pipeline import beam_flags, config_flags  # TF-free; pipeline/__init__.py has set TF_USE_LEGACY_KERAS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# PipelineConfig fields `retrain run` takes as flags (pipeline/config_flags.py).
RUN_FLAGS = ("backbone", "weights", "min_accuracy", "max_accuracy_drop", "max_class_recall_drop",
             "eval_percent", "min_images_per_class", "epochs", "seed", "class_weights",
             "trainable_blocks", "activation_dtype", "cold_start", "allow_label_change",
             "max_class_share_change", "feature_batch_size", "augment_views",
             config_flags.BEAM_WORKERS, "tflite_variants", "parity_bounds", "calibration_images",
             "max_file_bytes", "min_image_side", "follow_external_symlinks", "enable_cache")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retrain", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the local pipeline")
    run.add_argument("--images", required=True,
                     help="folder of <label>/<image> files, or a uri,label CSV manifest")
    run.add_argument("--workdir", required=True, help="pipeline root, MLMD store and serving/")
    run.add_argument("--pipeline-root", default=None,
                     help="artifact root instead of <workdir>/pipeline_root, e.g. s3://bucket/root")
    run.add_argument("--serving-dir", default=None,
                     help="where versions are pushed instead of <workdir>/serving, e.g. s3://bucket/serving")
    config_flags.add_flags(run, RUN_FLAGS)
    run.add_argument("--force", action="store_true",
                     help="run even when images, settings and code are those of the last run")
    run.add_argument("--beam-runner", choices=["direct", "portable"], default=None,
                     help="where Beam steps run: direct (this machine, the default) or portable "
                          "(a Beam job service: Flink, Spark; docs/beam_runners.md)")
    beam_flags.add_portable_flags(run)
    beam_flags.add_beam_arg(run)
    run.add_argument("--json", action="store_true", help="print the run summary as JSON (last line)")
    run.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    run.add_argument("--verbose", action="store_true", help="show TFX/Beam logs")

    fw = sub.add_parser("fetch-weights", help="fetch and convert offline ImageNet weights")
    config_flags.add_flags(fw, ["backbone"])

    fd = sub.add_parser("fetch-data", help="fetch the default emoji dataset; prints its path")
    fd.add_argument("--dest", default=None)
    return p


# Subcommands defined next to what they drive; each module's register() adds
# its parsers and returns {command: handler(args) -> exit code}.
_EXTENSIONS = ("pipeline.predict", "pipeline.ops_cli", "pipeline.audit_cli", "kubeflow.cli")


def _register_extensions(parser: argparse.ArgumentParser) -> dict:
    import importlib
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    handlers = {}
    for name in _EXTENSIONS:
        handlers.update(importlib.import_module(name).register(sub))
    return handlers


def _quiet_logs(verbose: bool) -> None:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.ERROR)
    for name in ("", "tensorflow"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    # A failed step is logged by Beam (with its traceback) and by TFX's launcher
    # before the exception reaches _cmd_run, which prints it as one line: without
    # --verbose those two loggers keep only CRITICAL.
    for name in ("absl", "apache_beam"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        warnings.filterwarnings("ignore")


def _fail(message: str, code: int) -> int:
    print(f"retrain: error: {message}", file=sys.stderr)
    return code


def _print_human(summary: dict) -> None:
    acc = summary.get("accuracy")
    base = summary.get("baseline_accuracy")
    print(f"run {summary['run_id']}")
    print(f"  examples: {summary['examples']}  skipped files: {summary['skipped_files']}"
          f" (report: {summary['ingestion_report']})")
    for row in summary.get("skipped", [])[:20]:
        print(f"    skipped {row['path']}: {row['reason']}")
    print(f"  eval accuracy: {acc if acc is None else round(acc, 4)}"
          f"  baseline: {base if base is None else round(base, 4)}")
    verdict = "BLESSED" if summary["blessed"] else "NOT blessed"
    print(f"  {verdict}; pushed: {summary['pushed_dir'] or 'nothing'}"
          + (f" ({', '.join(summary['pushed_variants'])})" if summary.get("pushed_variants") else ""))
    if summary.get("not_pushed_reason"):
        print(f"    not pushed: {summary['not_pushed_reason']}")
    for variant, reason in (summary.get("not_pushed") or {}).items():
        print(f"    TFLite {variant} held back: {reason}")
    for failure in summary.get("evaluation_failures") or []:
        print(f"    gate: {failure}")
    print("  seconds: " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()))
    print(f"  report: {summary.get('report')}")


def _find_cause(error: BaseException, kind: type):
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


# How a full disk reads once TF, Beam or MLMD (SQLite) have re-raised it as text.
_ENOSPC_TEXT = os.strerror(errno.ENOSPC)  # "No space left on device"
_SQLITE_FULL_TEXT = "database or disk is full"


def _no_space_at(error: BaseException, config) -> "str | None":
    """Where a run ran out of disk space (an OSError's file, the MLMD store, or
    else the pipeline root), or None when `error` has another cause."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error.filename or config.pipeline_root
        text = str(error)
        if _SQLITE_FULL_TEXT in text:
            return config.metadata_path
        if _ENOSPC_TEXT in text:
            return config.pipeline_root
        error = error.__cause__ or error.__context__
    return None


def _native_lines_to_log(config, verbose: bool):
    """C++ libraries' terminal lines to <workdir>/logs/ unless --verbose
    (components/native_stderr.py)."""
    import contextlib
    from components import contracts, native_stderr
    if verbose:
        return contextlib.nullcontext()
    return native_stderr.sent_to(
        os.path.join(config.workdir, "logs", contracts.NATIVE_STDERR_LOG_FILE))


def _location(path):
    return path if path is None or "://" in path else os.path.abspath(path)


def _cmd_run(args) -> int:
    if "://" in args.workdir:
        return _fail(f"--workdir must be a local folder (it holds the MLMD SQLite store), got "
                     f"{args.workdir}; put artifacts and versions on s3:// with "
                     "--pipeline-root and --serving-dir", 2)
    if os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        return _fail(f"--workdir {args.workdir} is a file, not a folder: give a folder "
                     "(it is created when missing)", 2)
    from pipeline import workdir_lock
    try:  # another run: refused in a second, before TensorFlow loads
        workdir_lock.check_free(os.path.abspath(args.workdir))
    except workdir_lock.WorkdirBusy as e:
        return _fail(str(e), 2)
    from components import contracts, object_store
    from pipeline import mlmd_store
    from pipeline.config import PipelineConfig
    try:
        settings = config_flags.values(args, RUN_FLAGS)
        settings["beam_args"] = beam_flags.from_run_flags(
            args, config_flags.default(config_flags.BEAM_WORKERS))
        config = PipelineConfig(
            images=_location(args.images), pipeline_root_uri=_location(args.pipeline_root),
            serving_uri=_location(args.serving_dir), workdir=os.path.abspath(args.workdir),
            **settings)
        problem = mlmd_store.store_problem(config.metadata_path)
        if problem:
            return _fail(problem, 2)
        # Before TensorFlow and TFX load: a wrong key or endpoint fails in a second.
        object_store.prepare(config.locations())
    except ValueError as e:  # ObjectStoreError included
        return _fail(str(e), 2)
    note = beam_flags.unshared_paths_note(config.beam_args, [
        ("--images", config.images), ("--pipeline-root", config.pipeline_root),
        ("--weights", None if config.weights in contracts.NAMED_WEIGHTS else config.weights)])
    if note and not args.quiet:
        print(f"retrain: note: {note}", file=sys.stderr)
    if not args.force:  # nothing new since the last completed run: end early (pipeline/unchanged.py)
        from pipeline import unchanged
        summary = unchanged.skip_if_unchanged(config)
        if summary is not None:
            return _print_summary(summary, args.json)
    from components import backbones
    from components.label_guard import LabelSpaceError
    from pipeline import local_runner, preflight
    try:
        config = preflight.scan(config)
        if config.empty_classes:  # also in the ingestion report and the run's summary
            print("retrain: warning: empty class folder(s) skipped: "
                  + ", ".join(repr(c) for c in config.empty_classes), file=sys.stderr)
        if config.weights != "keras":  # "keras" downloads on first use
            backbones.weights_fingerprint(config.backbone, config.weights)
        backbones.check_trainable_blocks(config.backbone, config.trainable_blocks)
    except (preflight.PreflightError, backbones.BackboneWeightsError, ValueError) as e:
        return _fail(str(e), 2)
    start = time.time()
    try:
        with _native_lines_to_log(config, args.verbose):
            summary = local_runner.run(config, show_progress=not args.quiet, force=args.force)
    except workdir_lock.WorkdirBusy as e:
        return _fail(str(e), 2)
    except KeyboardInterrupt:  # Ctrl-C: the run is recorded as interrupted
        print(file=sys.stderr)
        return _fail("interrupted (Ctrl-C): `retrain runs` shows how far the run got", 130)
    except Exception as e:  # a component failed: say why, keep the traceback in --verbose
        guard = _find_cause(e, LabelSpaceError)
        if guard is not None:  # the data, not the pipeline, needs fixing
            return _fail(f"label space changed: {guard}", 2)
        full = _no_space_at(e, config)
        if full is not None:  # the disk, not the pipeline: say where
            return _fail(f"no space left on device at {full}", 1)
        if args.verbose:
            raise
        return _fail(f"pipeline failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", 1)
    summary["total_seconds"] = round(time.time() - start, 1)
    return _print_summary(summary, args.json)


def _print_summary(summary: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    elif summary.get("unchanged"):
        print(f"run {summary['run_id']}: unchanged, ended early\n  {summary['not_pushed_reason']}")
    else:
        _print_human(summary)
    return 0


def main(argv=None) -> int:
    parser = _parser()
    extensions = _register_extensions(parser)
    args = parser.parse_args(argv)
    _quiet_logs(getattr(args, "verbose", False))
    if args.command in extensions:
        return extensions[args.command](args)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "fetch-weights":
        from components import backbones
        try:
            print(backbones.fetch_weights(args.backbone))
        except (backbones.BackboneWeightsError, ValueError) as e:
            return _fail(str(e), 2)
        return 0
    if args.command == "fetch-data":
        from pipeline import datasets
        try:
            print(datasets.emoji_dataset(args.dest))
        except datasets.DatasetError as e:
            return _fail(str(e), 2)
        return 0
    return 2


def entry() -> None:
    """The `retrain` command: main() and an exit that survives tensorflow-io (object_store)."""
    from components import object_store
    object_store.exit_process(main())


if __name__ == "__main__":
    entry()
