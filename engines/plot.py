"""Figures written by the offline commands (matplotlib, imported lazily with the Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Write the confusion matrix ``cm`` (rows = true, columns = predicted) as a PNG: counts on the
    left, row-normalised (recall per true class) on the right, class names on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.int64)
    c = len(names)
    assert cm.shape == (c, c), (cm.shape, c)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = max(4.0, 0.6 * c + 2.0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.0, size), constrained_layout=True)
    panels = ((cm, "counts", "d"), (norm, "row-normalised (recall)", ".2f"))
    for ax, (mat, label, fmt) in zip(axes, panels, strict=True):
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(float(mat.max()), 1e-9))
        ax.set_xticks(range(c), labels=list(names), rotation=45, ha="right")
        ax.set_yticks(range(c), labels=list(names))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(label)
        top = float(mat.max()) if mat.size else 0.0
        for i in range(c):
            for j in range(c):
                v = mat[i, j]
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=8,
                        color="white" if top and v > 0.6 * top else "black")  # fmt: skip
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
