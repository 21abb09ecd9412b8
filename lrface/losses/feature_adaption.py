"""The feature adaption network's objectives (seed 002: RAN supplementary §1 "Effects of different loss functions on
feature adaption networks", Table 1 rows 1–3, and §6 Alg. 2; methods.md §2).

L_feature pulls the translated HR feature f^translate(x_HR) towards the realistic LR feature f_LR(x_LR) of the
pre-trained LR model, in the LR domain only. The supplementary compares three distances (Table 1): the paper's choice
(an L2 loss; row "MR-GAN + Adaption (RAN)"), a cosine loss and a Euclidean loss — :func:`feature_distance` gives all
three. The LR discriminator's losses are :mod:`lrface.losses.mrgan`'s adversarial losses on feature logits.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["FEATURE_DISTANCES", "feature_distance"]

FEATURE_DISTANCES = ("l2", "cosine", "euclidean")


def feature_distance(translated: Tensor, target: Tensor, kind: str = "l2") -> Tensor:
    """Distance between B×D feature batches, averaged over the batch (``target`` detached).

    * ``"l2"``: mean squared difference, ‖a − b‖² / D (RAN's row of Table 1);
    * ``"cosine"``: 1 − cos(a, b);
    * ``"euclidean"``: ‖a − b‖₂.
    """
    a, b = translated.float(), target.detach().float()
    if kind == "l2":
        return (a - b).pow(2).mean()
    if kind == "cosine":
        return (1 - F.cosine_similarity(a, b, dim=1)).mean()
    if kind == "euclidean":
        return (a - b).pow(2).sum(1).clamp_min(1e-12).sqrt().mean()
    raise ValueError(f"unknown feature distance {kind!r}; expected one of {FEATURE_DISTANCES}")
