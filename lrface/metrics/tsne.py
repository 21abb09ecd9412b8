"""Exact t-SNE (van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 9:2579–2605, 2008).

Seed 003 (supplementary Fig. 4–5) shows t-SNE maps of the expression embedding f_e and its complement f_¬e; this is the
O(N²) algorithm of the JMLR paper (its ref. [1]), fine for the few thousand points of those figures:

- optional PCA of the input to ``pca_dims`` dimensions first (as the paper does, §4.2);
- per point, the Gaussian conditional p_{j|i} ∝ exp(−β_i‖x_i − x_j‖²) (Eq. 1) with β_i = 1/(2σ_i²) found by binary
  search so that its Shannon entropy H(P_i) = −Σ_j p_{j|i} log₂ p_{j|i} equals log₂ Perp (Eq. 4), tolerance 1e-5,
  at most 50 steps;
- the joint p_ij = (p_{j|i} + p_{i|j}) / 2N (§3.1);
- map similarities from a Student-t with one degree of freedom, q_ij = (1 + ‖y_i − y_j‖²)⁻¹ / Σ_{k≠l}(1 + ‖y_k − y_l‖²)⁻¹
  (Eq. 4 of §3.3), cost C = KL(P‖Q) = Σ p_ij log(p_ij / q_ij) (Eq. 2 with the joint P);
- gradient δC/δy_i = 4 Σ_j (p_ij − q_ij)(y_i − y_j)(1 + ‖y_i − y_j‖²)⁻¹ (Eq. 5);
- gradient descent with momentum (0.5 for the first 250 iterations, then 0.8, Eq. 7), the per-parameter adaptive gains
  of Jacobs (1988) (+0.2 when the gradient's sign flips against the last update, ×0.8 otherwise, floor 0.01) and
  "early exaggeration" (P multiplied by ``early_exaggeration`` for the first ``exaggeration_iters`` iterations, §3.4);
  the map is initialised from N(0, 10⁻⁴ I) (Algorithm 1).

``learning_rate="auto"`` is max(N / early_exaggeration / 4, 50) (Belkina et al., "Automated optimized parameters for
t-distributed stochastic neighbor embedding improve visualization and analysis of large datasets", Nat. Commun. 2019,
as adopted by openTSNE / scikit-learn). Exaggeration 12 for 250 iterations follows the same implementations; the JMLR
paper used 4 for 50 iterations.

Everything runs in float64 on the CPU with torch. Each iteration walks the upper triangle of the N×N map kernel in
row blocks (cache-sized, symmetric halves shared): N = 2,000 and 1,000 iterations take about 15 s on one core.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["conditional_probabilities", "finite_matrix", "initial_embedding", "joint_probabilities", "kl_divergence",
           "pca", "tsne"]

_EPS = 1e-12
_BLOCK = 256


def finite_matrix(x, name: str = "x") -> np.ndarray:
    """x (array or tensor) as an N×D float64 array; raises naming the first non-finite entry or a wrong shape."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be an N×D array; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} must be finite; found {a[tuple(bad)]} at row {bad[0]}, column {bad[1]}")
    return a


def pca(x, n_components: int) -> np.ndarray:
    """Project centred data onto its top principal components (SVD, float64).

    Args:
        x: N×D array or tensor.
        n_components: number of components to keep (≤ min(N, D)).

    Returns:
        N×n_components float64 scores, columns in decreasing variance.
    """
    a = finite_matrix(x)
    a = a - a.mean(axis=0, keepdims=True)
    k = min(n_components, *a.shape)
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    # Fix each component's sign (largest |loading| positive) so that the result does not depend on LAPACK's choice.
    u = u[:, :k] * s[:k]
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(k)])
    signs[signs == 0] = 1.0
    return u * signs


def _squared_distances(a: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", a, a)
    d = sq[:, None] + sq[None, :] - 2.0 * (a @ a.T)
    np.maximum(d, 0.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def conditional_probabilities(
    distances, perplexity: float, tol: float = 1e-5, max_steps: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian conditionals p_{j|i} whose entropies match log₂ ``perplexity`` (binary search on β_i = 1/2σ_i²).

    All rows are searched together. The search is on H in nats against log(perplexity) (the same condition as Eq. 4's
    bits up to the constant factor ln 2); β doubles / halves until the target is bracketed, then bisects.

    Args:
        distances: N×N squared distances (the diagonal is ignored).
        perplexity: target perplexity, 0 < perplexity < N − 1.
        tol: tolerance on the entropy, in nats.
        max_steps: maximum number of search steps per row.

    Returns:
        (P, beta): N×N float64 row-stochastic conditionals with a zero diagonal (row i is p_{·|i}), and the N
        precisions β_i.
    """
    d = np.array(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square N×N matrix; got shape {d.shape}")
    n = d.shape[0]
    if not 0 < perplexity < n - 1:
        raise ValueError(f"perplexity must be in (0, N − 1) = (0, {n - 1}); got {perplexity}")
    off = ~np.eye(n, dtype=bool)
    # Shifting each row by its smallest distance leaves p_{·|i} unchanged and keeps exp() from underflowing to 0.
    d -= np.min(d, axis=1, where=off, initial=np.inf)[:, None]
    d[~off] = 0.0
    target = math.log(perplexity)
    beta = 1.0 / np.maximum(d.sum(axis=1) / (n - 1), np.finfo(np.float64).tiny)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    p = np.empty_like(d)
    evaluated = beta.copy()
    active = np.arange(n)
    for _ in range(max_steps):
        b = beta[active]
        rows = np.exp(-b[:, None] * d[active])
        rows[np.arange(active.size), active] = 0.0
        total = rows.sum(axis=1)
        entropy = np.log(total) + b * np.sum(d[active] * rows, axis=1) / total
        # Rows that run out of steps keep their last evaluated distribution and its β.
        p[active] = rows / total[:, None]
        evaluated[active] = b
        diff = entropy - target
        done = np.abs(diff) < tol
        # Entropy too high: the Gaussian is too wide, raise β.
        up = active[~done & (diff > 0)]
        lo[up] = beta[up]
        beta[up] = np.where(np.isinf(hi[up]), beta[up] * 2.0, (beta[up] + hi[up]) / 2.0)
        down = active[~done & (diff <= 0)]
        hi[down] = beta[down]
        beta[down] = (beta[down] + lo[down]) / 2.0
        active = active[~done]
        if active.size == 0:
            break
    return p, evaluated


def joint_probabilities(x, perplexity: float = 30.0, pca_dims: int | None = 50) -> np.ndarray:
    """The symmetric joint P of t-SNE: p_ij = (p_{j|i} + p_{i|j}) / 2N, after the optional PCA.

    Args:
        x: N×D array or tensor.
        perplexity: target perplexity (< N − 1).
        pca_dims: PCA to this many dimensions first when D is larger; None or 0 skips it.

    Returns:
        N×N float64, symmetric, zero diagonal, summing to 1.
    """
    a = finite_matrix(x)
    n = a.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points; got N = {n}")
    if not 0 < perplexity < n - 1:
        raise ValueError(f"perplexity must be in (0, N − 1) = (0, {n - 1}) for N = {n} points; got {perplexity}")
    if pca_dims and a.shape[1] > pca_dims:
        a = pca(a, pca_dims)
    cond, _ = conditional_probabilities(_squared_distances(a), perplexity)
    return (cond + cond.T) / (2.0 * n)


def initial_embedding(n: int, dims: int = 2, seed: int = 0) -> np.ndarray:
    """The random start of the map: N(0, 10⁻⁴ I) draws (JMLR 2008, Algorithm 1), from ``numpy.random.default_rng(seed)``.

    Returns:
        n×dims float64.
    """
    return np.random.default_rng(seed).normal(0.0, 1e-4, size=(n, dims))


def kl_divergence(P, Y) -> float:
    """t-SNE's cost KL(P‖Q) = Σ_{i≠j} p_ij log(p_ij / q_ij) with the Student-t Q of the map Y.

    Args:
        P: N×N joint probabilities (from :func:`joint_probabilities`).
        Y: N×dims map.

    Returns:
        The divergence in nats.
    """
    p = np.asarray(P, dtype=np.float64)
    y = finite_matrix(Y, "Y")
    num = 1.0 / (1.0 + _squared_distances(y))
    np.fill_diagonal(num, 0.0)
    q = np.maximum(num / num.sum(), _EPS)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _gradient(P: torch.Tensor, Y: torch.Tensor, exaggeration: float) -> torch.Tensor:
    """Eq. 5 with P scaled by ``exaggeration``, over the upper triangle of the N×N kernel in row blocks.

    With W = 1 / (1 + ‖y_i − y_j‖²) (zero diagonal) and Z = Σ W, (p_ij − q_ij)·W_ij = p_ij W_ij − W_ij² / Z, so both
    parts' row sums and products with Y are accumulated block by block and combined once Z is known. P and W are
    symmetric, so row block I only evaluates columns j ≥ start(I) and hands the part right of its diagonal block to
    those columns as well (half the elementwise work of the full matrix).

    Args:
        P: N×N joint probabilities (float64).
        Y: N×dims map (float64).
        exaggeration: factor on P.

    Returns:
        N×dims gradient.
    """
    n, dims = Y.shape
    sq = (Y * Y).sum(dim=1, keepdim=True)
    ones = torch.ones(n, 1, dtype=Y.dtype)
    # left @ right_t = 1 + s_i + s_j − 2 y_i·y_j in one matmul.
    left = torch.cat([Y, sq, ones], dim=1)
    right_t = torch.cat([-2.0 * Y, ones, sq + 1.0], dim=1).T.contiguous()
    # The trailing row of ones turns each product into the row sums as well. Products are taken as
    # (dims+1)×b @ b×n: MKL is several times faster in that shape than n×b @ b×(dims+1).
    y1_t = torch.cat([Y, ones], dim=1).T.contiguous()
    attract = torch.zeros(dims + 1, n, dtype=Y.dtype)
    repulse = torch.zeros(dims + 1, n, dtype=Y.dtype)
    z = 0.0
    for r0 in range(0, n, _BLOCK):
        r1 = min(r0 + _BLOCK, n)
        b = r1 - r0
        w = left[r0:r1] @ right_t[:, r0:]
        w.reciprocal_()
        w[:, :b].fill_diagonal_(0.0)
        z += 2.0 * float(w.sum()) - float(w[:, :b].sum())
        a = P[r0:r1, r0:] * w
        attract[:, r0:r1] += y1_t[:, r0:] @ a.T
        attract[:, r1:] += y1_t[:, r0:r1] @ a[:, b:]
        w.square_()
        repulse[:, r0:r1] += y1_t[:, r0:] @ w.T
        repulse[:, r1:] += y1_t[:, r0:r1] @ w[:, b:]
    a = attract[dims:].T * Y - attract[:dims].T
    r = repulse[dims:].T * Y - repulse[:dims].T
    return 4.0 * (exaggeration * a - r / z)


def tsne(
    x,
    dims: int = 2,
    perplexity: float = 30.0,
    n_iter: int = 1000,
    seed: int = 0,
    early_exaggeration: float = 12.0,
    exaggeration_iters: int = 250,
    learning_rate: float | str = "auto",
    pca_dims: int | None = 50,
    return_kl: bool = False,
):
    """Exact t-SNE map of ``x`` (van der Maaten & Hinton 2008).

    Args:
        x: N×D features (numpy or torch), N ≥ 4, all finite.
        dims: map dimensionality.
        perplexity: effective number of neighbours, < N − 1.
        n_iter: gradient-descent iterations.
        seed: seeds the N(0, 10⁻⁴) initial map; the result is a deterministic function of (x, seed, options).
        early_exaggeration: factor on P during the first ``exaggeration_iters`` iterations.
        exaggeration_iters: length of the early-exaggeration phase.
        learning_rate: step size η, or "auto" = max(N / early_exaggeration / 4, 50).
        pca_dims: PCA to this many dimensions first when D is larger; None or 0 skips it.
        return_kl: also return the final KL(P‖Q).

    Returns:
        N×dims float64 map, or (map, KL in nats) with ``return_kl``.
    """
    if dims < 1:
        raise ValueError(f"dims must be ≥ 1; got {dims}")
    if learning_rate == "auto":
        n = finite_matrix(x).shape[0]
        eta = max(n / early_exaggeration / 4.0, 50.0)
    elif isinstance(learning_rate, (int, float)) and learning_rate > 0:
        eta = float(learning_rate)
    else:
        raise ValueError(f"learning_rate must be 'auto' or a positive number; got {learning_rate!r}")
    p_np = joint_probabilities(x, perplexity, pca_dims)
    n = p_np.shape[0]
    p_floor = np.maximum(p_np, _EPS)
    np.fill_diagonal(p_floor, 0.0)
    P = torch.from_numpy(p_floor)

    Y = torch.from_numpy(initial_embedding(n, dims, seed))
    update = torch.zeros_like(Y)
    gains = torch.ones_like(Y)
    for it in range(n_iter):
        exaggeration = early_exaggeration if it < exaggeration_iters else 1.0
        momentum = 0.5 if it < 250 else 0.8
        grad = _gradient(P, Y, exaggeration)
        same_sign = (grad > 0) == (update > 0)
        gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_(min=0.01)
        update = momentum * update - eta * gains * grad
        Y = Y + update
        Y = Y - Y.mean(dim=0, keepdim=True)
    out = Y.numpy()
    if return_kl:
        return out, kl_divergence(p_np, out)
    return out
