"""Multi-resolution training input of BTNet's trunk and baselines (seed 004 §4.1; methods.md §1.4–1.5).

Each training image is down-sampled to a side s and up-sampled back to ``out_size`` (112), so one network at 112
sees every resolution:

* φ_mr and TNet (the authors' ``load_type = 1``): s from the candidate set {112/2^i | i = 0..4} = {112, 56, 28, 14,
  7}, equal probabilities;
* φ_mr(v2): the same set with probabilities [0.3, 0.25, 0.2, 0.15, 0.1];
* φ_mr(v3): s uniform over the integers of the interval [4, 112];
* φ_r of φ_mm: the set {r} (every image at r, one model per resolution);
* φ_hr: no augmentation at all.

The resize is ``datamodules.transforms.resize_tensor`` (area down, bicubic up, clamped) — the same function every
multi-resolution evaluation in the suite uses to make an r×r probe, so training and test degradations agree. The
authors' loader resizes with its image library's default; the paper does not say which.

It plugs into ``FeatureExtractorModule(variation_augment=...)``: called on a B×3×H×W batch in [0, 1] (fp32, outside
autocast), it returns ``(images, {})`` — no variation labels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from datamodules.transforms import resize_tensor

__all__ = ["MultiResolutionAugment"]


class MultiResolutionAugment(nn.Module):
    """Random down-and-up resize per sample.

    Args:
        sizes: candidate sides (φ_mr: 112, 56, 28, 14, 7); ignored when ``interval`` is set.
        probabilities: one per size (None = equal); normalised to sum 1.
        interval: (lo, hi): sides drawn uniformly from the integers lo..hi instead (φ_mr(v3): (4, 112)).
        out_size: side of the output (the network's input, 112).

    Shapes:
        images B×3×H×W in [0, 1] → (B×3×out_size×out_size, {}).
    """

    names: tuple[str, ...] = ()

    def __init__(self, sizes: Sequence[int] = (112, 56, 28, 14, 7), probabilities: Sequence[float] | None = None,
                 interval: Sequence[int] | None = None, out_size: int = 112):
        super().__init__()
        self.out_size = int(out_size)
        self.interval = None if interval is None else tuple(int(v) for v in interval)
        if self.interval is not None:
            if len(self.interval) != 2 or not 1 <= self.interval[0] <= self.interval[1]:
                raise ValueError(f"interval must be (lo, hi) with 1 ≤ lo ≤ hi; got {interval}")
            self.sizes, self.probabilities = (), ()
            return
        self.sizes = tuple(int(s) for s in sizes)
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"sizes must be positive sides; got {sizes}")
        p = [1.0] * len(self.sizes) if probabilities is None else [float(v) for v in probabilities]
        if len(p) != len(self.sizes) or min(p) < 0 or sum(p) <= 0:
            raise ValueError(f"probabilities must be {len(self.sizes)} non-negative numbers with a positive sum "
                             f"(one per size {self.sizes}); got {probabilities}")
        self.probabilities = tuple(v / sum(p) for v in p)

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n sides (int64, CPU)."""
        if self.interval is not None:
            return torch.randint(self.interval[0], self.interval[1] + 1, (n,), generator=generator)
        idx = torch.multinomial(torch.tensor(self.probabilities), n, replacement=True, generator=generator)
        return torch.tensor(self.sizes)[idx]

    def forward(self, images: Tensor, batch: dict | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        if images.dim() != 4:
            raise ValueError(f"expected B×C×H×W images, got {tuple(images.shape)}")
        sides = self.draw(len(images), generator)
        out = torch.empty(*images.shape[:2], self.out_size, self.out_size, dtype=images.dtype, device=images.device)
        full = (self.out_size, self.out_size)
        for side in sides.unique().tolist():
            members = (sides == side).nonzero().squeeze(1).to(images.device)
            low = resize_tensor(images[members], (side, side))
            out[members] = resize_tensor(low, full)
        return out, {}

    def extra_repr(self) -> str:
        if self.interval is not None:
            return f"interval={self.interval}, out_size={self.out_size}"
        return f"sizes={self.sizes}, probabilities={tuple(round(p, 4) for p in self.probabilities)}, " \
               f"out_size={self.out_size}"
