"""The report's charts: plain data in, a PNG data: URI out (matplotlib Agg, no pyplot state)."""

from __future__ import annotations

import base64
import io
from typing import Dict, List, Optional, Sequence


# A chart's longest side, inches (x 96 dpi = pixels); many classes make smaller cells.
MAX_INCHES = 20.0
MIN_TEXT_CELL = 0.3  # inches: smaller confusion-matrix cells get no count text


def _label_size(n: int) -> float:
    """Tick label font size for n classes: 10 up to 30, down to 5."""
    return 10.0 if n <= 30 else max(5.0, 10.0 * 30 / n)


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def plot_class_counts(classes: Sequence[str], splits: Sequence[str],
                      counts: Dict[str, Dict[str, int]]) -> str:
    """Stacked bars: images per class (x), one colour per split."""
    n = len(classes)
    fig = _figure(min(max(4.0, 0.7 * n + 2.0), MAX_INCHES), 3.0 if n <= 30 else 4.5)
    ax = fig.add_subplot()
    bottom = [0] * n
    for split in splits:
        values = [counts[c].get(split, 0) for c in classes]
        ax.bar(range(n), values, bottom=bottom, label=split)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(n), classes, rotation=30 if n <= 30 else 90, ha="right" if n <= 30 else "center",
                  fontsize=_label_size(n))
    ax.set_ylabel("images")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def plot_history(history: Dict[str, List[float]], best: Optional[int]) -> str:
    """Loss and accuracy per epoch (train and eval), the best epoch marked."""
    fig = _figure(9.0, 3.2)
    for i, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, i + 1)
        for key, label in ((metric, "train"), (f"val_{metric}", "eval")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="." if len(values) < 40 else None,
                        label=label)
        if best:
            ax.axvline(best, color="grey", linestyle=":", label=f"best (epoch {best})")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    return _png(fig)


def plot_confusion(matrix: List[List[int]], labels: Sequence[str]) -> str:
    """Counts in the cells, coloured by the share of the actual class (row).

    The figure's side is at most MAX_INCHES whatever the classes: at 0.65 inch a
    class, 89 classes made a 5,760 px square with 7,921 texts, 19 s and 1.4 GB
    of the report. Above 30 classes only non-zero cells get their count, and
    none once a cell is under MIN_TEXT_CELL inches: the colours and the
    section's most-confused table carry them then."""
    import numpy as np
    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(max(4.0, 0.65 * n + 2.5), MAX_INCHES)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    if side / max(n, 1) >= MIN_TEXT_CELL:
        cells = zip(*np.nonzero(m)) if n > 30 else ((i, j) for i in range(n) for j in range(n))
        for i, j in cells:
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.6 else "black", fontsize=9 if n < 15 else 6)
    size = _label_size(n)
    ax.set_xticks(range(n), labels, rotation=45 if n <= 30 else 90,
                  ha="right" if n <= 30 else "center", fontsize=size)
    ax.set_yticks(range(n), labels, fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    fig.colorbar(im, ax=ax, label="share of the actual class")
    return _png(fig)
