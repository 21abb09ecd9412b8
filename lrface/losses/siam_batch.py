"""L_siam (seed paper §3.3) over a training batch in which only some lookalikes have an i'.

:func:`lrface.losses.identity.L_siam` takes the (i, i') term for the whole batch or not at all. A lookalike set mixes
records with and without i' (an identity with one CelebA image, or a rejected second search), so the batch form
adds sim(i, i', 1) only to the rows that have one, keeping the paper's single 1/N over all N lookalikes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lrface.losses.identity import ALPHA_THR, GAMMA_TEMP, L_siam, sim

__all__ = ["L_siam_batch"]


def L_siam_batch(
    f_gt: Tensor,
    f_i: Tensor,
    f_flip: Tensor | None,
    f_i_prime: Tensor | None,
    has_i_prime: Tensor | None,
    alpha_thr: float = ALPHA_THR,
    gamma_temp: float = GAMMA_TEMP,
    unit: str = "deg",
    reduction: str = "mean",
) -> Tensor:
    """L_siam = 1/N [Σ sim(i_GT, i, 1) + Σ_{rows with i'} sim(i, i', 1) + Σ sim(i, flip(i), 0)].

    Args:
        f_gt: N×D features of i_GT.
        f_i: N×D features of the lookalikes i.
        f_flip: N×D features of flip(i), or None (term left out).
        f_i_prime: M×D features of the i' that exist, in batch order (M = ``has_i_prime.sum()``), or None.
        has_i_prime: N bools, which rows have an i' (None: none do).
        alpha_thr, gamma_temp, unit: as :func:`lrface.losses.identity.sim`.
        reduction: ``"mean"`` (1/N Σ, the paper), ``"sum"`` or ``"none"`` (N per-lookalike sums).

    Returns:
        a scalar, or N values. Equals ``L_siam(f_gt, f_i, f_i_prime, f_flip)`` when every row has an i'.
    """
    per = L_siam(f_gt, f_i, None, f_flip, alpha_thr, gamma_temp, unit, reduction="none")
    if f_i_prime is not None and has_i_prime is not None:
        rows = torch.as_tensor(has_i_prime, device=f_i.device).bool().nonzero().squeeze(1)
        if rows.numel() != f_i_prime.shape[0]:
            raise ValueError(f"{f_i_prime.shape[0]} i' features for {rows.numel()} rows with has_i_prime")
        if rows.numel():
            term = sim(f_i[rows], f_i_prime, 1.0, alpha_thr=alpha_thr, gamma_temp=gamma_temp, unit=unit)
            per = per.index_add(0, rows, term.to(per.dtype))
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    if reduction == "none":
        return per
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
