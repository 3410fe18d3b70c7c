"""`retrain audit --workdir W [--run-id ID] [--json]`: a run's data audit.

The DataAudit step's audit.json (components/data_audit.py): suspected mislabels,
near-duplicate pairs (leakage across train/eval and pairs under different
labels first) and classes below the recommended size. Read-only. Exit codes as
for `retrain report`: 0 done, 2 bad input (no runs, no such run, a run without
an audit), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional

from components import contracts
from pipeline import ops_cli

MAX_AUDIT_BYTES = 64 << 20  # audit.json is bounded (audit_math caps its lists); refuse worse
SHOWN = 20                  # rows per list in the text form (--json has them all)


class AuditUnreadable(ValueError):
    """audit.json is missing its keys, too large or not JSON; the message names the file."""


def read_audit(uri: Optional[str]) -> Optional[Dict[str, Any]]:
    """The audit.json object under a DataAudit artifact's `uri` (None: no audit)."""
    if not uri:
        return None
    path = contracts.join(uri, contracts.AUDIT_FILE)
    if "://" in path:  # gs://, s3://: TensorFlow's file systems
        import tensorflow as tf
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read(MAX_AUDIT_BYTES + 1)
    elif not os.path.isfile(path):
        return None
    else:
        with open(path, "rb") as f:
            data = f.read(MAX_AUDIT_BYTES + 1)
    if len(data) > MAX_AUDIT_BYTES:
        raise AuditUnreadable(f"{path} is larger than {MAX_AUDIT_BYTES} bytes")
    try:
        audit = json.loads(data.decode("utf-8"))
    except ValueError as e:
        raise AuditUnreadable(f"{path} is not JSON: {e}") from None
    keys = ("suspected_mislabels", "near_duplicates", "small_classes")
    if not isinstance(audit, dict) or not all(k in audit for k in keys):
        raise AuditUnreadable(f"{path} lacks one of {keys}")
    return audit


def summary_audit(uri: Optional[str]) -> Optional[Dict[str, Any]]:
    """read_audit() for the run summary: an unreadable audit is logged, never fails a run."""
    try:
        return read_audit(uri)
    except AuditUnreadable as e:
        logging.getLogger(__name__).warning("data audit left out of the summary: %s", e)
        return None


def register(subparsers) -> Dict[str, Callable[[argparse.Namespace], int]]:
    p = subparsers.add_parser("audit", help="a run's data audit: suspected mislabels, "
                              "near-duplicates and leakage, small classes")
    p.add_argument("--workdir", required=True, help="the workdir of `retrain run`")
    p.add_argument("--pipeline-name", default="image-retrain", help=argparse.SUPPRESS)
    p.add_argument("--run-id", default=None, help="a run id from `retrain runs` (default: latest)")
    p.add_argument("--json", action="store_true", help="the whole audit as one JSON object")
    return {"audit": ops_cli._store_errors(cmd_audit)}


def cmd_audit(args) -> int:
    from pipeline import mlmd_store
    from pipeline.run_record import RunRecord
    config = ops_cli._config(args)
    try:
        store = mlmd_store.open_store(config)
    except FileNotFoundError as e:
        return ops_cli._fail(str(e))
    runs = mlmd_store.run_contexts(store, config.pipeline_name)
    if not runs:
        return ops_cli._fail(f"no runs in {config.workdir}")
    chosen = runs[0]
    if args.run_id:
        chosen = next((c for c in runs if c.name == args.run_id), None)
        if chosen is None:
            return ops_cli._fail(f"no run {args.run_id!r} in {config.workdir} (see `retrain runs`)")
    record = RunRecord.from_store(store, chosen, config, read_files=False)
    try:
        audit = read_audit(record.uris.data_audit)
    except AuditUnreadable as e:
        return ops_cli._fail(str(e))
    if audit is None:
        return ops_cli._fail(f"run {chosen.name!r} has no data audit (it stopped before the "
                             "DataAudit step, or predates it)")
    print(json.dumps(audit, sort_keys=True, ensure_ascii=False) if args.json
          else format_audit(chosen.name, audit))
    return 0


def format_audit(run_id: str, audit: Dict[str, Any]) -> str:
    suspects: List[dict] = audit["suspected_mislabels"]
    pairs: List[dict] = audit["near_duplicates"]
    lines = [f"data audit of run {run_id}: {audit.get('images', '?')} images "
             f"(method {audit.get('method', '?')})", "",
             f"suspected mislabels: {len(suspects)} listed, most suspicious first"]
    lines += [f"  {s['score']:.2f}  {s['path']}  ({s['label']} -> {s['suggested_label']}?)"
              for s in suspects[:SHOWN]]
    leaks = sum(1 for p in pairs if len(set(p["splits"])) > 1)
    cross = sum(1 for p in pairs if not p["same_label"])
    lines += ["", f"near-duplicates: {len(pairs)} pair(s), {leaks} across train/eval (leakage), "
              f"{cross} under different labels"]
    for p in pairs[:SHOWN]:
        notes = (["leakage"] if len(set(p["splits"])) > 1 else []) + \
                ([] if p["same_label"] else ["labels differ"])
        lines.append(f"  {p['similarity']:.3f}  {p['paths'][0]}  {p['paths'][1]}"
                     + (f"  [{', '.join(notes)}]" if notes else ""))
    small = audit["small_classes"]
    lines += ["", f"classes under {audit.get('min_class_images', '?')} images: "
              + (", ".join(f"{k} ({v})" for k, v in sorted(small.items())) or "none")]
    if len(suspects) > SHOWN or len(pairs) > SHOWN:
        lines.append(f"(first {SHOWN} of each list shown; --json prints all)")
    return "\n".join(lines)


def main(argv=None) -> int:
    return ops_cli.standalone(register, argv)


if __name__ == "__main__":
    import sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
