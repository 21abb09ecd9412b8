"""Angles between face embeddings and the separating threshold angle α_thr of the seed paper.

Seed paper (identity-preserving upscaling, ``seeds/000_*.txt``): two images are "the same person" when the angle
θ(F(i), F(j)) between their embeddings is small (§4.1, following ArcFace). Table 1 reports mean ± SD angles per
pair set, and α_thr, the threshold of the similarity measure sim(i, j, tgt) = ‖σ((θ(F(i), F(j)) − α_thr)/γ_temp) − tgt‖
(Eq. 4), is found by ``calc-best-angle-threshold`` (Appendix A, Algorithm 1): "a brute-force threshold search to find
the best linear separation threshold angle α_thr, which achieves the highest classification accuracy on the
CelebA-Same and CelebA-Diff datasets together", accuracy being "the percentage of images correctly classified as same
or different" (§4.1, Table 1 bottom).

So the criterion is plain (pooled) accuracy over all pairs of both sets, not balanced error: a pair is predicted
"same" when θ < α_thr. The paper's sets have 3,000 pairs each, where the two coincide. For the paper's "Opt 2"
(CelebA-Same vs CelebA-Diff + Lookalike-Baseline), concatenate the different-identity sets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["AngleStats", "angle_stats", "angles_deg", "best_angle_threshold", "separation_accuracy"]


def angles_deg(e1, e2):
    """Angle between paired embeddings, in degrees.

    Computed as 2·atan2(‖â − b̂‖, ‖â + b̂‖) on the L2-normalised vectors: exact to rounding at every angle, where
    arccos(cos) loses half the digits near 0° and 180°. Not meant for backpropagation (its gradient is undefined at
    0°); losses use cosines.

    Args:
        e1: P×D (or D) embeddings, numpy or torch.
        e2: P×D (or D) embeddings.

    Returns:
        P angles in [0, 180] (a scalar for D-vectors): float64 numpy for numpy input, a tensor of e1's float dtype
        (at least fp32) for torch input.
    """
    if isinstance(e1, torch.Tensor) or isinstance(e2, torch.Tensor):
        a = torch.as_tensor(e1)
        b = torch.as_tensor(e2, device=a.device)
        dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        a = torch.nn.functional.normalize(a.to(dtype), dim=-1)
        b = torch.nn.functional.normalize(b.to(dtype), dim=-1)
        return torch.rad2deg(2.0 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1)))
    a = np.asarray(e1, dtype=np.float64)
    b = np.asarray(e2, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"e1 and e2 must have the same shape; got {a.shape} and {b.shape}")
    tiny = np.finfo(np.float64).tiny
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), tiny)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), tiny)
    return np.degrees(2.0 * np.arctan2(np.linalg.norm(a - b, axis=-1), np.linalg.norm(a + b, axis=-1)))


class AngleStats(NamedTuple):
    """Mean and standard deviation of pair angles in degrees (seed paper Table 1 reports ``mean°±SD``)."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.1f}°±{self.std:.1f}"


def angle_stats(e1, e2, ddof: int = 0) -> AngleStats:
    """Mean ± SD of the angles between paired embeddings.

    Args:
        e1: P×D embeddings.
        e2: P×D embeddings.
        ddof: 0 for the population SD (numpy's default; the paper does not say which), 1 for the sample SD.

    Returns:
        :class:`AngleStats` (mean, std, n) in degrees.
    """
    ang = angles_deg(e1, e2)
    ang = ang.detach().double().cpu().numpy() if isinstance(ang, torch.Tensor) else ang
    ang = np.atleast_1d(ang)
    if ang.size == 0:
        raise ValueError("angle_stats needs at least one pair")
    return AngleStats(float(ang.mean()), float(ang.std(ddof=ddof)) if ang.size > ddof else float("nan"), ang.size)


def _as_angles(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def separation_accuracy(same_angles, diff_angles, alpha_thr: float) -> float:
    """Fraction of pairs classified correctly by α_thr: same-identity pairs need θ < α_thr, different ones θ ≥ α_thr.

    Args:
        same_angles: angles (degrees) of same-identity pairs.
        diff_angles: angles of different-identity pairs.
        alpha_thr: threshold angle in degrees.

    Returns:
        Pooled accuracy in [0, 1] (seed paper §4.1 / Table 1).
    """
    same, diff = _as_angles(same_angles), _as_angles(diff_angles)
    n = same.size + diff.size
    if n == 0:
        raise ValueError("no angles given")
    return float((np.sum(same < alpha_thr) + np.sum(diff >= alpha_thr)) / n)


def best_angle_threshold(same_angles, diff_angles) -> float:
    """``calc-best-angle-threshold`` (seed paper Appendix A, Algorithm 1): the α_thr of highest pooled accuracy.

    Brute force over every distinct decision: candidates are the midpoints between consecutive distinct angles of
    the pooled set plus one value below the smallest and one above the largest (only the position of α_thr among
    the sorted angles changes the accuracy, so this search is exhaustive). Among equally accurate candidates the
    smallest angle is returned.

    Args:
        same_angles: angles (degrees) of same-identity pairs (CelebA-Same).
        diff_angles: angles of different-identity pairs (CelebA-Diff; for Opt 2 concatenate Lookalike-Baseline).

    Returns:
        α_thr in degrees; pairs with θ < α_thr are "same".
    """
    same, diff = _as_angles(same_angles), _as_angles(diff_angles)
    if same.size + diff.size == 0:
        raise ValueError("no angles given")
    values = np.unique(np.concatenate([same, diff]))
    gaps = np.diff(values)
    step = float(gaps.min()) if gaps.size else 1.0
    candidates = np.concatenate([[values[0] - step], (values[:-1] + values[1:]) / 2.0, [values[-1] + step]])
    same_sorted, diff_sorted = np.sort(same), np.sort(diff)
    correct = np.searchsorted(same_sorted, candidates, side="left") + (
        diff.size - np.searchsorted(diff_sorted, candidates, side="left")
    )
    return float(candidates[int(np.argmax(correct))])
