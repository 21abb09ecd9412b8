"""Average precision per column of a multi-label problem (CelebA's 40 attributes; seed paper Appendix C reports
the attribute classifier's per-attribute AP and their mean, mAP)."""
from __future__ import annotations

import numpy as np

__all__ = ["average_precision", "mean_average_precision"]


def _column_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    # one operating point per distinct score (ties enter together), as scikit-learn's average_precision_score
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def average_precision(scores, labels) -> np.ndarray:
    """AP of each column: Σ_n (R_n − R_{n−1})·P_n over the decreasing score thresholds.

    Args:
        scores: N×A scores (logits or probabilities; only their order matters).
        labels: N×A labels (positive: > 0.5).

    Returns:
        A float64 APs; NaN for a column without positives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64) > 0.5
    if scores.ndim == 1:
        scores, labels = scores[:, None], labels[:, None]
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ")
    return np.array([_column_ap(scores[:, a], labels[:, a]) for a in range(scores.shape[1])])


def mean_average_precision(scores, labels) -> float:
    """Mean of :func:`average_precision` over the columns that have positives (NaN if none has)."""
    ap = average_precision(scores, labels)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
