"""Classification figures reported by training and evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.interface import EMOTIONS, MODALITIES


def classification_report(
    y: np.ndarray,
    pred: np.ndarray,
    weights: np.ndarray | None = None,
    names: tuple[str, ...] = EMOTIONS,
) -> dict[str, Any]:
    """weighted_f1, accuracy, macro_f1, n, per_class_f1 (by class ``names``) and mean weights."""
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(range(len(names)))
    per = f1_score(y, pred, labels=labels, average=None, zero_division=0)
    present_labels = sorted(set(y.tolist()))
    out: dict[str, Any] = {
        "weighted_f1": round(float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)), 4),
        "accuracy": round(float(accuracy_score(y, pred)), 4),
        "macro_f1": round(float(np.mean([per[i] for i in present_labels])), 4) if present_labels else 0.0,
        "n": int(y.shape[0]),
        "per_class_f1": {names[i]: round(float(per[i]), 4) for i in labels},
    }
    if weights is not None:
        out["mean_weights"] = {m: round(float(weights[:, k].mean()), 4) for k, m in enumerate(MODALITIES)}
    return out


def confusion_counts(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y.astype(np.int64), pred.astype(np.int64)), 1)
    return cm


def subset_report(
    y: np.ndarray, pred: np.ndarray, weights: np.ndarray, mask: np.ndarray, names: tuple[str, ...]
) -> dict[str, Any]:
    """weighted_f1, accuracy, n and mean weights of the utterances where ``mask`` holds."""
    if not mask.any():
        return {"weighted_f1": None, "accuracy": None, "n": 0, "mean_weights": dict.fromkeys(MODALITIES)}
    rep = classification_report(y[mask], pred[mask], weights[mask], names)
    return {k: rep[k] for k in ("weighted_f1", "accuracy", "n", "mean_weights")}
