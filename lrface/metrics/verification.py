"""Face verification metrics: insightface's 10-fold pair protocol, ROC, TAR@FAR and ROC AUC.

``verify_pairs`` reproduces insightface ``recognition/arcface_torch/eval/verification.py`` (``evaluate``):
L2-normalised embeddings, squared Euclidean distances (= 2 − 2·cos), a pair is predicted "same" when
distance < threshold, thresholds ``np.arange(0, 4, 0.01)``, contiguous unshuffled folds (sklearn
``KFold(n_splits, shuffle=False)``), the accuracy-maximising threshold of the other folds applied to each held-out
fold. It also computes VAL@FAR = 1e-3 on ``np.arange(0, 4, 0.001)`` as ``calculate_val`` does. ``verify_scores``
runs the same protocol on precomputed similarity scores in [-1, 1] (distance = 2 − 2·score).

``roc_curve``/``tar_at_far``/``roc_auc`` work on similarity scores (higher = more likely the same identity) and
follow sklearn's ``roc_curve`` conventions, as used by insightface ``eval_ijbc.py`` and the QMUL-SurvFace 1:1
protocol. No sklearn dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["kfold_splits", "pair_distances", "verify_pairs", "verify_scores", "roc_curve", "tar_at_far", "roc_auc"]


def _np(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def kfold_splits(n: int, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous, unshuffled k-fold split, identical to sklearn ``KFold(n_splits, shuffle=False).split``.

    The first ``n % n_folds`` folds hold one extra item. With ``n_folds == 1`` train = test = everything
    (insightface ``LFold``).

    Args:
        n: number of items.
        n_folds: number of folds (≤ n).

    Returns:
        List of (train indices, test indices).
    """
    idx = np.arange(n)
    if n_folds <= 1:
        return [(idx, idx)]
    if n_folds > n:
        raise ValueError(f"cannot split {n} pairs into {n_folds} folds")
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    out = []
    start = 0
    for size in sizes:
        test = idx[start : start + size]
        train = np.concatenate([idx[:start], idx[start + size :]])
        out.append((train, test))
        start += size
    return out


def pair_distances(emb1, emb2) -> np.ndarray:
    """Squared Euclidean distance of the L2-normalised embeddings, computed in float64.

    Args:
        emb1: P×D array or tensor.
        emb2: P×D array or tensor.

    Returns:
        P float64 distances in [0, 4].
    """
    a = _np(emb1, np.float64)
    b = _np(emb2, np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"emb1 and emb2 must both be P×D with the same shape; got {a.shape} and {b.shape}")
    # sklearn.preprocessing.normalize leaves all-zero rows at zero instead of dividing by 0.
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return np.sum(np.square(a - b), axis=1)


def _counts_below(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """TP and FP counts of ``dist < threshold`` for every threshold, plus the numbers of same/different pairs."""
    d_same = np.sort(dist[same])
    d_diff = np.sort(dist[~same])
    tp = np.searchsorted(d_same, thresholds, side="left")
    fp = np.searchsorted(d_diff, thresholds, side="left")
    return tp, fp, len(d_same), len(d_diff)


def _accuracies(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    tp, fp, n_same, n_diff = _counts_below(dist, same, thresholds)
    tn = n_diff - fp
    return (tp + tn) / float(dist.size)


def _val_threshold(far_train: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """Threshold where the (non-decreasing) train FAR reaches ``far_target`` by linear interpolation.

    insightface uses ``scipy.interpolate.interp1d(far, thresholds, kind='slinear')``, which current scipy rejects
    because FAR has repeated values; we interpolate between the last threshold with FAR ≤ target and the next one,
    which is what that call computes wherever it is defined.
    """
    if far_train.max() < far_target:
        return 0.0
    i = int(np.nonzero(far_train <= far_target)[0][-1])
    if far_train[i] == far_target or i + 1 >= len(thresholds):
        return float(thresholds[i])
    f0, f1 = far_train[i], far_train[i + 1]
    return float(thresholds[i] + (far_target - f0) / (f1 - f0) * (thresholds[i + 1] - thresholds[i]))


def verify_pairs(emb1, emb2, issame, n_folds: int = 10, far_target: float = 1e-3) -> dict:
    """insightface 10-fold pair verification (``eval/verification.py: evaluate``).

    Pass flip-summed embeddings to match the published "Accuracy-Flip" numbers (emb(x) + emb(hflip(x))).

    Args:
        emb1: P×D embeddings of the first images (numpy or torch; normalised here).
        emb2: P×D embeddings of the second images.
        issame: P bools, True for genuine pairs.
        n_folds: number of contiguous folds (10).
        far_target: FAR at which VAL is reported (1e-3).

    Returns:
        dict with ``accuracy`` (mean over folds), ``accuracy_std`` (population std over folds), ``threshold`` (mean
        of the per-fold best thresholds), ``accuracies`` and ``thresholds`` (per fold), ``val``, ``val_std``, ``far``
        (VAL@FAR mean/std and the achieved mean FAR), ``tpr`` and ``fpr`` (fold-averaged ROC over
        ``np.arange(0, 4, 0.01)``).
    """
    return _verify_distances(pair_distances(emb1, emb2), issame, n_folds, far_target)


def verify_scores(scores, issame, n_folds: int = 10, far_target: float = 1e-3) -> dict:
    """The same 10-fold protocol on precomputed similarity scores in [-1, 1] (a cosine or a cosine-like score, e.g.
    URL's confidence-weighted :func:`lrface.metrics.confidence_score.confidence_weighted_scores`).

    A score is mapped to insightface's distance scale d = 2 − 2·score (for unit embeddings the squared Euclidean
    distance), so the thresholds ``np.arange(0, 4, 0.01)`` and every fold decision are exactly :func:`verify_pairs`'
    when the scores are the pairs' cosines.

    Args:
        scores: P similarities in [-1, 1] (higher = same identity; numpy or torch).
        issame: P bools.
        n_folds: number of contiguous folds (10).
        far_target: FAR at which VAL is reported (1e-3).

    Returns:
        :func:`verify_pairs`' dict (``threshold`` / ``thresholds`` on the distance scale) plus ``score_threshold``:
        the mean per-fold threshold on the score scale (1 − threshold / 2; "same" when score > it).
    """
    s = _np(scores, np.float64).reshape(-1)
    if not np.all(np.isfinite(s)):
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"scores must be finite; score {i} is {s[i]}")
    if s.size and (s.min() < -1 - 1e-6 or s.max() > 1 + 1e-6):
        raise ValueError(f"scores must be similarities in [-1, 1] (the protocol's thresholds cover only that range); "
                         f"got min {s.min():.6g}, max {s.max():.6g}")
    result = _verify_distances(2.0 - 2.0 * np.clip(s, -1.0, 1.0), issame, n_folds, far_target)
    result["score_threshold"] = 1.0 - result["threshold"] / 2.0
    return result


def _verify_distances(dist: np.ndarray, issame, n_folds: int, far_target: float) -> dict:
    """:func:`verify_pairs` on P float64 distances in [0, 4] (smaller = same identity)."""
    same = _np(issame).astype(bool).reshape(-1)
    n_pairs = min(len(same), len(dist))
    dist, same = dist[:n_pairs], same[:n_pairs]
    folds = kfold_splits(n_pairs, n_folds)

    thresholds = np.arange(0, 4, 0.01)
    n_eff = len(folds)
    tprs = np.zeros((n_eff, len(thresholds)))
    fprs = np.zeros((n_eff, len(thresholds)))
    accuracy = np.zeros(n_eff)
    best = np.zeros(n_eff)
    for k, (train, test) in enumerate(folds):
        # np.argmax picks the first (smallest) threshold among ties, as the reference loop does.
        b = int(np.argmax(_accuracies(dist[train], same[train], thresholds)))
        best[k] = thresholds[b]
        tp, fp, n_same, n_diff = _counts_below(dist[test], same[test], thresholds)
        tprs[k] = tp / n_same if n_same else 0.0
        fprs[k] = fp / n_diff if n_diff else 0.0
        accuracy[k] = _accuracies(dist[test], same[test], thresholds[b : b + 1])[0]

    val_thresholds = np.arange(0, 4, 0.001)
    val = np.zeros(n_eff)
    far = np.zeros(n_eff)
    for k, (train, test) in enumerate(folds):
        _, fp, _, n_diff = _counts_below(dist[train], same[train], val_thresholds)
        far_train = fp / n_diff if n_diff else np.zeros(len(val_thresholds))
        thr = _val_threshold(far_train, val_thresholds, far_target)
        tp, fp, n_same, n_diff = _counts_below(dist[test], same[test], np.array([thr]))
        val[k] = tp[0] / n_same if n_same else 0.0
        far[k] = fp[0] / n_diff if n_diff else 0.0

    return {
        "accuracy": float(np.mean(accuracy)),
        "accuracy_std": float(np.std(accuracy)),
        "threshold": float(np.mean(best)),
        "accuracies": accuracy,
        "thresholds": best,
        "val": float(np.mean(val)),
        "val_std": float(np.std(val)),
        "far": float(np.mean(far)),
        "tpr": tprs.mean(0),
        "fpr": fprs.mean(0),
    }


def roc_curve(scores, labels, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of similarity scores, with sklearn ``roc_curve`` semantics.

    A pair is accepted at threshold τ when score ≥ τ. Points are taken at every distinct score (descending), preceded
    by (0, 0) at τ = +inf; with ``drop_intermediate`` collinear points inside horizontal or vertical runs are removed
    (sklearn's default, which ``eval_ijbc.py`` relies on).

    Args:
        scores: N similarities.
        labels: N bools / 0-1 ints (1 = genuine).
        drop_intermediate: drop suboptimal collinear points.

    Returns:
        (fpr, tpr, thresholds), each of length K, fpr and tpr non-decreasing from 0 to 1.
    """
    s = _np(scores, np.float64).reshape(-1)
    y = _np(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same length; got {s.shape} and {y.shape}")
    if not y.any() or y.all():
        raise ValueError("roc_curve needs both genuine (1) and impostor (0) pairs")
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(y)[last_of_run].astype(np.float64)
    fps = (last_of_run + 1) - tps
    thr = s[last_of_run]
    if drop_intermediate and len(fps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps = np.r_[0.0, fps]
    tps = np.r_[0.0, tps]
    thr = np.r_[np.inf, thr]
    return fps / fps[-1], tps / tps[-1], thr


def tar_at_far(
    scores, labels, fars: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1), mode: str = "closest"
) -> dict[float, float]:
    """True accept rate at given false accept rates.

    Args:
        scores: N similarities (higher = same identity).
        labels: N bools (1 = genuine).
        fars: target FARs.
        mode: ``"closest"``: TPR of the ROC point (:func:`roc_curve`, sklearn defaults) whose FPR is closest to the
            target, ties to the earliest point (insightface ``eval_ijbc.py``); ``"max"``: the largest TPR over ROC
            points with FPR ≤ target (the conservative operating point).

    Returns:
        dict target FAR → TAR.
    """
    if mode not in ("closest", "max"):
        raise ValueError(f"mode must be 'closest' or 'max'; got {mode!r}")
    fpr, tpr, _ = roc_curve(scores, labels, drop_intermediate=(mode == "closest"))
    out = {}
    for f in fars:
        if mode == "closest":
            out[f] = float(tpr[int(np.argmin(np.abs(fpr - f)))])
        else:
            out[f] = float(tpr[fpr <= f].max())
    return out


def roc_auc(scores, labels) -> float:
    """Area under the ROC (trapezoidal over :func:`roc_curve`; ties between a genuine and an impostor count 1/2).

    Args:
        scores: N similarities.
        labels: N bools (1 = genuine).

    Returns:
        AUC in [0, 1].
    """
    fpr, tpr, _ = roc_curve(scores, labels, drop_intermediate=False)
    return float(np.trapezoid(tpr, fpr))
