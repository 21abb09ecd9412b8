"""MR-GAN's objectives (seed 002: RAN supplementary §1, §4 Alg. 1, §5; methods.md §2).

The supplementary names the terms (adversarial losses of a global PatchGAN and three local discriminators, identity
preservation through a frozen recognition network, a pixel loss added every 5th generator update, and the
"attention activation loss"); their exact forms are in the main paper, which is not among the seeds. The choices,
each exposed in ``MRGANModule``'s config:

* adversarial: least squares (LSGAN, Mao et al. 2017), the loss PatchGAN discriminators are usually trained with
  (pix2pix / CycleGAN, whose PatchGAN the supplementary cites as [5]); ``"vanilla"`` gives the non-saturating logistic
  loss instead. Logits may be maps (PatchGAN): every patch is a sample.
* identity: 1 − cos(F(G(x)), F(x)) with F frozen (an ArcFace-type network compares faces by angle).
* pixel: L1 between G(x) and the plain down-sampled face at the same resolution ("refine the LR face": the output
  must stay that face, Alg. 1 applies it every 5th update so it anchors without dominating).
* attention activation: with A the weight of the local branch (local generators' regions), the loss activates A on
  the facial regions M (eyes / nose / mouth) and keeps it smooth: mean over M of (1 − A) + w_out · mean outside M of A
  + w_tv · TV(A). Supp. §1: without it "the masks are over-smoothed and lose some important regions"; with it they
  "learn more identity-relevant regions".
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .gan import d_logistic_loss, g_nonsaturating_loss

__all__ = ["GAN_LOSSES", "attention_activation_loss", "d_adversarial_loss", "g_adversarial_loss", "identity_loss",
           "pixel_loss", "total_variation"]

GAN_LOSSES = ("lsgan", "vanilla")


def _check(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; expected one of {GAN_LOSSES}")


def d_adversarial_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "lsgan") -> Tensor:
    """Discriminator loss on logits of any shape (B×1×h×w patch maps or B×1).

    lsgan: ½·E[(D(y) − 1)²] + ½·E[D(G(x))²]; vanilla: softplus(−D(y)) + softplus(D(G(x))).
    """
    _check(kind)
    if kind == "vanilla":
        return d_logistic_loss(real_logits, fake_logits)
    return 0.5 * (real_logits.float() - 1).pow(2).mean() + 0.5 * fake_logits.float().pow(2).mean()


def g_adversarial_loss(fake_logits: Tensor, kind: str = "lsgan") -> Tensor:
    """Generator loss: lsgan ½·E[(D(G(x)) − 1)²]; vanilla softplus(−D(G(x)))."""
    _check(kind)
    if kind == "vanilla":
        return g_nonsaturating_loss(fake_logits)
    return 0.5 * (fake_logits.float() - 1).pow(2).mean()


def identity_loss(fake_features: Tensor, real_features: Tensor) -> Tensor:
    """Mean of 1 − cos(F(G(x)), F(x)) over the batch; features B×D (``real_features`` is detached)."""
    return (1 - F.cosine_similarity(fake_features.float(), real_features.detach().float(), dim=1)).mean()


def pixel_loss(fake: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of B×3×H×W images (``target`` detached)."""
    return (fake.float() - target.detach().float()).abs().mean()


def total_variation(a: Tensor) -> Tensor:
    """Anisotropic TV of B×C×H×W maps: mean |∂x| + mean |∂y|."""
    return (a[..., :, 1:] - a[..., :, :-1]).abs().mean() + (a[..., 1:, :] - a[..., :-1, :]).abs().mean()


def attention_activation_loss(attention: Tensor, mask: Tensor, outside_weight: float = 0.0,
                              tv_weight: float = 0.1) -> Tensor:
    """The attention activation loss (supp. §1; form chosen here, see the module docstring).

    Args:
        attention: A, B×1×H×W in [0, 1], the weight of the local branch in the output.
        mask: M, 1×1×H×W (or B×1×H×W) 0/1 union of the eye / nose / mouth boxes.
        outside_weight: weight of mean(A) outside M (0: A may also spread outside the regions).
        tv_weight: weight of TV(A).

    Returns:
        mean_M(1 − A) + outside_weight · mean_{¬M}(A) + tv_weight · TV(A), a scalar.
    """
    a = attention.float()
    m = mask.to(a).expand_as(a)
    inside = ((1 - a) * m).sum() / m.sum().clamp_min(1.0)
    loss = inside + tv_weight * total_variation(a)
    if outside_weight:
        out = 1 - m
        loss = loss + outside_weight * (a * out).sum() / out.sum().clamp_min(1.0)
    return loss
