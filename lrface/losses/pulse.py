"""PULSE losses: the bicubic downscaler DS, the downscale loss L_DS and the GEOCROSS regulariser L_GS.

Same values as the official PULSE code (``bicubic.py``, ``loss.py``), on CPU or GPU, batched, with per-sample
reductions available for the batched search engine (:mod:`lrface.pulse`).

Papers:
    Menon et al., "PULSE: Self-Supervised Photo Upsampling via Latent Space Exploration of Generative Models",
    CVPR 2020. Gat, Benaim, Wolf (seed paper 000) restate the objective:
        Eq. 1  L_DS = ||DS(I) − I_LR||_2,
        Eq. 2  L_GS = Σ_{i<j} θ(v_i, v_j)²,
        Eq. 3  L_SR = 100·L_DS + 0.05·L_GS.
    As in the official code, L_DS is the per-sample *mean* squared error clamped from below at eps and L_GS is the
    normalised ``64 · mean_{i,j} θ_ij²`` over all ordered row pairs (diagonal included); see :func:`geocross`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSS_NAMES",
    "BicubicDownsample",
    "bicubic_kernel",
    "bicubic_taps",
    "downscale_loss",
    "geocross",
    "parse_loss_string",
]

#: Names understood by :func:`parse_loss_string` and the PULSE search engine.
LOSS_NAMES = ("L2", "L1", "GEOCROSS")

#: The official GEOCROSS multiplies θ² by 512 and divides by 8 (hard-coded; kept for every style_dim so that the
#: default weight 0.05 means the same everywhere).
_GEOCROSS_SCALE = 512.0 / 8.0
_GEOCROSS_EPS = 1e-9


def bicubic_kernel(x: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel (PULSE uses a = −0.5).

    Args:
        x: position in output-pixel units.
        a: the Keys parameter.

    Returns:
        The kernel value at x.
    """
    ax = abs(x)
    if ax <= 1.0:
        return (a + 2.0) * ax**3 - (a + 3.0) * ax**2 + 1.0
    if ax < 2.0:
        return a * ax**3 - 5.0 * a * ax**2 + 8.0 * a * ax - 4.0 * a
    return 0.0


def bicubic_taps(factor: int, a: float = -0.5) -> torch.Tensor:
    """The normalised 1-D filter of PULSE's ``BicubicDownSample``.

    ``4·factor`` taps sampled at ``x_i = (i − floor(2·factor) + 0.5) / factor``, normalised to sum 1.

    Args:
        factor: integer downscale factor ≥ 1.
        a: the Keys parameter.

    Returns:
        float32 tensor (4·factor,).
    """
    size = 4 * factor
    centre = math.floor(size / 2)
    taps = torch.tensor([bicubic_kernel((i - centre + 0.5) / factor, a) for i in range(size)], dtype=torch.float64)
    return (taps / taps.sum()).to(torch.float32)


class BicubicDownsample(nn.Module):
    """PULSE's antialiased bicubic downscaler: separable stride-``factor`` convolution with reflect padding.

    Padding along each axis is ``3·factor`` in total, ``floor(3·factor/2)`` before and the rest after, so an H×W
    input gives (H/factor)×(W/factor) for H, W divisible by ``factor`` (1024 → 32 with factor 32). Works for any
    channel count (the official hard-codes 3) and on any device.

    Args:
        factor: integer downscale factor ≥ 1.
        padding: ``F.pad`` mode (the official uses ``"reflect"``).
    """

    def __init__(self, factor: int, padding: str = "reflect") -> None:
        super().__init__()
        if isinstance(factor, bool) or int(factor) != factor or factor < 1:
            raise ValueError(f"BicubicDownsample: factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)
        self.padding = padding
        self.register_buffer("taps", bicubic_taps(self.factor), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downscale.

        Args:
            x: B×C×H×W.

        Returns:
            B×C×(⌊(H + 3f − 4f)/f⌋ + 1)×(same for W); (H/f)×(W/f) when f divides H and W.
        """
        if x.dim() != 4:
            raise ValueError(f"BicubicDownsample expects B×C×H×W, got shape {tuple(x.shape)}")
        f = self.factor
        c = x.shape[1]
        size = 4 * f
        pad = size - f
        before, after = pad // 2, pad - pad // 2
        taps = self.taps.to(dtype=x.dtype, device=x.device)
        k_h = taps.view(1, 1, size, 1).expand(c, 1, size, 1)
        k_w = taps.view(1, 1, 1, size).expand(c, 1, 1, size)
        x = F.pad(x, (0, 0, before, after), mode=self.padding)
        x = F.conv2d(x, k_h, stride=(f, 1), groups=c)
        x = F.pad(x, (before, after, 0, 0), mode=self.padding)
        return F.conv2d(x, k_w, stride=(1, f), groups=c)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, padding={self.padding!r}"


def geocross(w_plus: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """GEOCROSS (seed paper Eq. 2), with PULSE's normalisation.

    For rows x_i of a sample, ``θ_ij = 2·atan2(sqrt(‖x_i − x_j‖² + 1e-9), sqrt(‖x_i + x_j‖² + 1e-9))`` (the angle
    between x_i and x_j when their norms are equal) and the per-sample value is ``mean_{i,j} (512·θ_ij²) / 8`` over
    all n×n ordered pairs, diagonal included. A single row (tiled latent) gives 0. Official: applied to the W+
    tensor after the Gaussian-fit map and LeakyReLU(0.2), summed over the batch.

    Args:
        w_plus: B×n×D.
        reduction: ``"sum"`` (official, scalar) or ``"none"`` (B,).

    Returns:
        scalar or (B,).
    """
    if w_plus.dim() != 3:
        raise ValueError(f"geocross expects B×n×D, got shape {tuple(w_plus.shape)}")
    if w_plus.shape[1] == 1:
        per_sample = w_plus.new_zeros(w_plus.shape[0])
    else:
        x = w_plus.unsqueeze(1)
        y = w_plus.unsqueeze(2)
        a = ((x - y).pow(2).sum(-1) + _GEOCROSS_EPS).sqrt()
        b = ((x + y).pow(2).sum(-1) + _GEOCROSS_EPS).sqrt()
        theta = 2.0 * torch.atan2(a, b)
        per_sample = theta.pow(2).mean((1, 2)) * _GEOCROSS_SCALE
    return _reduce(per_sample, reduction)


def downscale_loss(
    gen_im_lr: torch.Tensor, ref_im: torch.Tensor, kind: str = "L2", eps: float = 2e-3, reduction: str = "sum"
) -> torch.Tensor:
    """Downscale loss L_DS (seed paper Eq. 1) as PULSE computes it.

    ``L2``: per-sample mean over (C, H, W) of the squared difference, clamped below at ``eps``.
    ``L1``: ``10 ×`` per-sample mean absolute difference, where the mean (before the ×10) is clamped at ``eps``.
    The clamp makes the term constant (zero gradient) once a sample is within eps.

    Args:
        gen_im_lr: B×C×h×w, the downscaled generated image DS(I), in [0, 1].
        ref_im: B×C×h×w (or 1×C×h×w, broadcast), the thumbnail I_LR, in [0, 1].
        kind: ``"L2"`` or ``"L1"``.
        eps: the clamp.
        reduction: ``"sum"`` over the batch (official), ``"mean"`` or ``"none"`` (B,).

    Returns:
        scalar or (B,).
    """
    if gen_im_lr.dim() != 4 or ref_im.dim() != 4 or gen_im_lr.shape[1:] != ref_im.shape[1:]:
        raise ValueError(
            f"downscale_loss: expected matching B×C×h×w tensors, got {tuple(gen_im_lr.shape)} and {tuple(ref_im.shape)}"
        )
    diff = gen_im_lr - ref_im
    if kind == "L2":
        per_sample = diff.pow(2).mean((1, 2, 3)).clamp(min=eps)
    elif kind == "L1":
        per_sample = 10.0 * diff.abs().mean((1, 2, 3)).clamp(min=eps)
    else:
        raise ValueError(f"downscale_loss: kind must be 'L2' or 'L1', got {kind!r}")
    return _reduce(per_sample, reduction)


def parse_loss_string(loss_str: str, known: tuple[str, ...] | None = LOSS_NAMES) -> list[tuple[float, str]]:
    """Parse PULSE's ``-loss_str`` (``"100*L2+0.05*GEOCROSS"``) into ``[(100.0, "L2"), (0.05, "GEOCROSS")]``.

    Whitespace around tokens is ignored (the official parser allows none).

    Args:
        loss_str: ``weight*NAME`` terms joined by ``+``.
        known: allowed names, or None to accept any name.

    Returns:
        list of (weight, name) in order.

    Raises:
        ValueError: malformed term, non-numeric weight, unknown or repeated name.
    """
    terms: list[tuple[float, str]] = []
    for raw in loss_str.split("+"):
        parts = [p.strip() for p in raw.split("*")]
        if len(parts) != 2 or not parts[1]:
            raise ValueError(f"loss string {loss_str!r}: term {raw!r} is not of the form weight*NAME")
        try:
            weight = float(parts[0])
        except ValueError:
            raise ValueError(f"loss string {loss_str!r}: weight {parts[0]!r} of term {raw!r} is not a number") from None
        name = parts[1]
        if known is not None and name not in known:
            raise ValueError(f"loss string {loss_str!r}: unknown loss {name!r}; expected one of {list(known)}")
        if any(name == n for _, n in terms):
            raise ValueError(f"loss string {loss_str!r}: loss {name!r} appears twice")
        terms.append((weight, name))
    return terms


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
