"""Embedding extraction conventions shared by training, evaluation and the PULSE constraints."""
from __future__ import annotations

import torch
from torch import nn


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """Dataset images in [0, 1] → the ArcFace input range [-1, 1] (``(x - 0.5) / 0.5``). B×3×H×W."""
    return images.mul(2.0).sub_(1.0)


@torch.no_grad()
def embed_flip_sum(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """insightface's test-time augmentation: ``f(x) + f(flip(x))`` (B×3×H×W in [0, 1] → B×D, not normalised).

    The verification protocol L2-normalises afterwards, so the sum and the mean give the same numbers.
    """
    x = to_model_range(images)
    return backbone(x).float() + backbone(torch.flip(x, dims=[3])).float()
