"""StyleGAN2 training losses (Karras et al., CVPR 2020, §2 and App. B; the StyleGAN1 paper §C for R1).

- non-saturating logistic loss for G and D (Goodfellow et al. 2014): D minimises softplus(−D(x)) + softplus(D(G(z))),
  G minimises softplus(−D(G(z)));
- R1 (Mescheder et al. 2018): γ/2 · E‖∇_x D(x)‖² on reals, applied lazily every k D steps and scaled by k;
- path-length regularisation: (‖J_wᵀ y‖ − a)², y ~ N(0, I)/sqrt(H·W), a an exponential moving average of the norms.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["d_logistic_loss", "d_r1_penalty", "g_nonsaturating_loss", "path_length_penalty", "lazy_regularization"]


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(−D(x)) + softplus(D(G(z))), averaged over the batch (a scalar)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(−D(G(z))) averaged over the batch."""
    return F.softplus(-fake_logits).mean()


def d_r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """E‖∇_x D(x)‖² over real images (multiply by γ/2 yourself); ``real_images`` must require grad.

    The gradient is taken with ``create_graph=True`` so the penalty back-propagates into D's parameters; it does
    not go through ``backward()`` itself, so DDP's gradient hooks see only the final backward.

    Args:
        real_logits: B×1 logits of ``real_images``.
        real_images: B×C×H×W, ``requires_grad=True``.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def path_length_penalty(images: torch.Tensor, w: torch.Tensor, mean_path_length: torch.Tensor,
                        decay: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Path-length regulariser (StyleGAN2 Eq. 4).

    Args:
        images: B×3×H×W generated from ``w``.
        w: B×n×D W+ latents the images were synthesised from (``requires_grad=True``).
        mean_path_length: running mean a (scalar tensor).
        decay: EMA rate of a.

    Returns:
        (penalty (scalar), per-sample path lengths (B,), updated running mean (detached scalar)).
    """
    noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (grad,) = torch.autograd.grad((images * noise).sum(), w, create_graph=True)
    lengths = grad.pow(2).sum(2).mean(1).sqrt()
    mean = mean_path_length + decay * (lengths.mean().detach() - mean_path_length)
    return (lengths - mean).pow(2).mean(), lengths, mean.detach()


def lazy_regularization(lr: float, betas: tuple[float, float], reg_every: int) -> tuple[float, tuple[float, float]]:
    """Adam settings for lazily regularised nets (StyleGAN2 App. B): with the regulariser applied every k steps the
    effective step count grows by k/(k+1), so lr and β's are rescaled by c = k/(k+1): lr·c, (β1^c, β2^c)."""
    if reg_every <= 0:
        return lr, betas
    c = reg_every / (reg_every + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)
