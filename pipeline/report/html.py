"""HTML building blocks of the report: escaping, number formats, tables, marks."""

from __future__ import annotations

import html
import logging
from typing import Any, Optional, Sequence

log = logging.getLogger("pipeline.report")

DASH = "&ndash;"


def e(value: Any) -> str:
    """`value` as escaped text (None: empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Optional[float], digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def pct(value: Optional[float]) -> str:
    return DASH if value is None else f"{100.0 * value:.1f}%"


def size(n: Optional[float]) -> str:
    if n is None:
        return DASH
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape text with e())."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def mark(ok: Optional[bool]) -> str:
    if ok is None:
        return '<span class="na">n/a</span>'
    return '<span class="good">yes</span>' if ok else '<span class="bad">no</span>'


def delta(value: Optional[float], base: Optional[float]) -> str:
    """value - base, red when worse, green when better."""
    if value is None or base is None:
        return DASH
    diff = value - base
    cls = "bad" if diff < -1e-9 else ("good" if diff > 1e-9 else "")
    return f'<span class="{cls}">{diff:+.3f}</span>'


def img(data_uri: str, ident: str, alt: str) -> str:
    return (f'<figure><img id="{ident}" src="{data_uri}" alt="{e(alt)}">'
            f'<figcaption>{e(alt)}</figcaption></figure>')


def error(what: str, exc: BaseException) -> str:
    """A plot or part that could not be drawn: said in the page, and logged."""
    log.warning("report: %s failed: %s: %s", what, type(exc).__name__, exc)
    return (f'<p class="error">Could not draw the {e(what)}: '
            f'{e(type(exc).__name__)}: {e(exc)}</p>')


def figure_or_error(what: str, ident: str, alt: str, draw) -> str:
    """img() of draw()'s data URI, or error() when drawing fails."""
    try:
        return img(draw(), ident, alt)
    except Exception as exc:  # noqa: BLE001 - a broken plot must not lose its section
        return error(what, exc)
