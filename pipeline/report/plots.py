"""The report's charts: plain data in, a PNG data: URI out (matplotlib Agg, no pyplot state)."""

from __future__ import annotations

import base64
import io
from typing import Dict, List, Optional, Sequence


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
    fig = _figure(max(4.0, 0.7 * len(classes) + 2.0), 3.0)
    ax = fig.add_subplot()
    bottom = [0] * len(classes)
    for split in splits:
        values = [counts[c].get(split, 0) for c in classes]
        ax.bar(range(len(classes)), values, bottom=bottom, label=split)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
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
    """Counts in the cells, coloured by the share of the actual class (row)."""
    import numpy as np
    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = max(4.0, 0.65 * n + 2.5)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.6 else "black", fontsize=9 if n < 15 else 6)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    fig.colorbar(im, ax=ax, label="share of the actual class")
    return _png(fig)
