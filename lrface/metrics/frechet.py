"""Fréchet distance between two feature distributions, each fitted by a Gaussian (Heusel et al., NeurIPS 2017).

FD = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}). Tr((Σ1 Σ2)^{1/2}) is computed as Σ sqrt(λ_i) of the symmetric PSD
matrix Σ1^{1/2} Σ2 Σ1^{1/2} (same eigenvalues as Σ1 Σ2), which avoids scipy's non-symmetric ``sqrtm`` and its
complex round-off. With Inception features this is FID; the suite has no Inception weights offline, so its generator
reports use other features (downsampled pixels, or a face-recognition network's embeddings) and say which.
"""
from __future__ import annotations

import torch

__all__ = ["gaussian_stats", "frechet_distance", "pixel_features"]


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D×D) of N×D features, in float64."""
    x = features.detach().double().reshape(features.shape[0], -1)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                     b: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> float:
    """Fréchet distance between two sets of N×D features (or their ``(mean, cov)`` from :func:`gaussian_stats`)."""
    mu1, s1 = a if isinstance(a, tuple) else gaussian_stats(a)
    mu2, s2 = b if isinstance(b, tuple) else gaussian_stats(b)
    root = _psd_sqrt(s1)
    cross = torch.linalg.eigvalsh(root @ s2 @ root).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)


def pixel_features(images: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Area-downsampled pixels as features: B×3×H×W in [0, 1] → B×(3·size²); a cheap, network-free FD space."""
    return torch.nn.functional.adaptive_avg_pool2d(images.float(), size).flatten(1)
