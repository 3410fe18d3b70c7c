"""`retrain runs`' fixed-width table of pipeline.history.list_runs() rows."""

from __future__ import annotations

from typing import Any, Dict, List


def _fmt(v, digits=4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_runs(rows: List[Dict[str, Any]]) -> str:
    """A fixed-width table of list_runs() rows; '*' marks the next run's baseline."""
    header = f"  {'time':25} {'kind':6} {'status':11} {'examples':>9} {'accuracy':>8} " \
             f"{'baseline':>8} {'blessed':7} {'pushed':>6}  id / note"
    lines = [header]
    for r in rows:
        mark = "*" if r.get("baseline") else " "
        if r["kind"] == "run":
            n = sum(r["examples"].values()) if r["examples"] else None
            lines.append(
                f"{mark} {r['time']:25} {'run':6} {r['status']:11} {_fmt(n):>9} "
                f"{_fmt(r['accuracy']):>8} {_fmt(r['baseline_accuracy']):>8} "
                f"{('revoked' if r.get('revoked') else 'yes') if r['blessed'] else 'no':7} "
                f"{_fmt(r['pushed_version']):>6}  {r['id']}"
                + (f" (top {r['trainable_blocks']} blocks fine-tuned"
                   + (f"; {r['start']}" if r.get("start") else "") + ")" if r.get("trainable_blocks") else "")
                + (f": {r['reason']}" if r.get("reason") else "")
                + ("  (push read from the version's manifest: MLMD lacks it)"
                   if r.get("push_recorded") is False else ""))
        else:
            what = (f"version {r['version']} made the baseline" if r["kind"] == "bless"
                    else f"baseline reset ({r.get('revoked') or 0} blessing(s) revoked)")
            note = f"{what}; by {r.get('user') or '?'}"
            if r.get("reason"):
                note += f": {r['reason']}"
            lines.append(f"{mark} {r['time']:25} {r['kind']:6} {'':11} {'':>9} {'':>8} {'':>8} "
                         f"{'':7} {'':>6}  {note}")
    lines.append("* = the baseline the next run is compared with")
    return "\n".join(lines)
