"""The objectives of Browatzki & Wallraven's disentangled adversarial autoencoder (seed 003, "Robust Discrimination
and Generation of Faces using Compact, Disentangled Embeddings", supplementary §7 Tables 1 and 2; the authors' code
facts in ``reference/methods.md`` §4). Every term is a function; the weights are the caller's.

Autoencoder Q (encoder) / P (decoder), supplementary Table 1 columns::

    L_rec   L1(x, P(Q(x))) + w_ssim · (1 − SSIM(x, P(Q(x))))        W_RECON = 1, W_SSIM = 60, SSIM window 31
    L_enc   Q fools D_z: codes Q(x) judged against prior samples z ~ N(0, I)   (adversarial autoencoder, row A)
    L_adv   P fools the image discriminator D on reconstructions P(Q(x))        (row B)
    L_gen   P fools D on faces decoded from prior samples P(z), z ~ N(0, I)    (row C, the full objective)

Disentanglement E (z → factors f = [pose 3 | identity 32 | style 32 | expression 32], ``lrface.nets.mad.FACTORS``)
and G (f → z), supplementary Table 2 columns::

    L_f^Φ    triplet losses on identity, style (shape) and expression (expression ×2, as the code), MSE on pose
    L_rec^Φ  L1(z, G(E(z)))                                                       W_Z_RECON = 4
    L_cyc^Φ  L1(f, E(Q(P(G(f)))))  the factors survive decoding and re-encoding  W_CYCLE = 1
    L_aug^Φ  swap one factor between two samples, decode, re-encode: the swapped part must come back as the donor's
             and the rest as the receiver's                                       W_AUG = 1

Choices the supplementary leaves open (documented here, configurable where it matters):

* GAN losses are the logistic (BCE with logits) losses of the code (``BCEWithLogitsLoss``): discriminators take
  real → 1, fake → 0; generators use the non-saturating form BCE(D(fake), 1). Logits are never detached here —
  the caller detaches Q(x) / P(·) for the discriminator steps.
* SSIM is Wang et al. (2004) on images mapped from [-1, 1] to [0, 1] with C1 = 0.01², C2 = 0.03², a Gaussian window
  over "valid" positions only (no padding, so borders do not see zeros). The authors import ``metrics.ssim`` with
  ``window_size=31``, a module their repository does not ship; σ therefore defaults to ``window / 6.5`` (31 → 4.77,
  11 → 1.69; Wang et al. use 1.5 at 11). Pass ``sigma=1.5`` for the fixed-σ variant of common PyTorch SSIM code.
* L1 terms are means over all elements (images in [-1, 1] as the nets see them).
* Triplets are batch-hard (Hermans et al. 2017) with Euclidean distances on the L2-normalised factors, margin 0.2.
* L_aug^Φ: after ``swap_factor`` the recovered factors are compared (L1, mean over all 99 dims) with the swapped
  vector itself, i.e. the ``factor`` dims with the donor f_b's and the other dims with the receiver f_a's.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from lrface.nets.mad import FACTORS

from .gan import d_logistic_loss, g_nonsaturating_loss

__all__ = ["DEFAULT_FEATURE_WEIGHTS", "L_adv", "L_aug_phi", "L_cyc_phi", "L_enc", "L_f", "L_gen", "L_rec",
           "L_rec_phi", "batch_hard_triplet", "d_image_loss", "d_z_loss", "gaussian_window", "ssim", "swap_factor"]

# The code weighs the expression triplet twice (methods.md §4); pose uses MSE.
DEFAULT_FEATURE_WEIGHTS = {"pose": 1.0, "identity": 1.0, "style": 1.0, "expression": 2.0}


# --------------------------------------------------------------------------------------------------- autoencoder
def gaussian_window(window: int, sigma: float | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps (``window``,), σ = ``window / 6.5`` unless given, fp32."""
    if window < 1:
        raise ValueError(f"window must be ≥ 1, got {window}")
    sigma = window / 6.5 if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-x.pow(2) / (2 * sigma**2))
    return (g / g.sum()).float()


def ssim(a: Tensor, b: Tensor, window: int = 31, sigma: float | None = None) -> Tensor:
    """Mean SSIM (Wang et al. 2004) of two image batches.

    Args:
        a: B×C×H×W in [-1, 1].
        b: B×C×H×W in [-1, 1].
        window: side of the Gaussian window; clamped to min(H, W) for smaller images.
        sigma: Gaussian σ; None → ``window / 6.5`` of the (clamped) window.

    Returns:
        Scalar fp32: the SSIM map over valid window positions, averaged over positions, channels and the batch
        (1 for identical images).
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two B×C×H×W tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    with torch.autocast(a.device.type, enabled=False):
        x, y = (a.float() + 1) / 2, (b.float() + 1) / 2
        c = x.shape[1]
        window = min(int(window), x.shape[2], x.shape[3])
        g = gaussian_window(window, sigma).to(x.device)
        kh, kw = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

        def blur(t: Tensor) -> Tensor:
            return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

        c1, c2 = 0.01**2, 0.03**2
        mu_x, mu_y = blur(x), blur(y)
        # second moments of images centred on their own mean: E[x²] − μ² of raw fp32 pixels cancels to ~1e-7, a
        # visible error against C2 = 9e-4 (constant images would get a non-zero variance)
        xc, yc = x - x.mean((2, 3), keepdim=True), y - y.mean((2, 3), keepdim=True)
        mc_x, mc_y = blur(xc), blur(yc)
        var_x = blur(xc * xc) - mc_x.pow(2)
        var_y = blur(yc * yc) - mc_y.pow(2)
        cov = blur(xc * yc) - mc_x * mc_y
        num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        den = (mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2)
        return (num / den).mean()


def L_rec(x: Tensor, x_hat: Tensor, w_ssim: float = 60.0, window: int = 31, sigma: float | None = None) -> Tensor:
    """Reconstruction loss L_rec = L1(x, x̂) + w_ssim · (1 − SSIM(x, x̂)) (Table 1; W_RECON 1, W_SSIM 60).

    Args:
        x: B×3×S×S input faces in [-1, 1] (the target, detached).
        x_hat: B×3×S×S reconstructions P(Q(x)) in [-1, 1].
        w_ssim: weight of the SSIM term (0 → plain L1).
        window: SSIM window.
        sigma: SSIM Gaussian σ (see ``ssim``).

    Returns:
        Scalar fp32.
    """
    target = x.detach().float()
    loss = (x_hat.float() - target).abs().mean()
    if w_ssim:
        loss = loss + w_ssim * (1 - ssim(target, x_hat, window, sigma))
    return loss


def d_z_loss(d_prior_logits: Tensor, d_enc_logits: Tensor) -> Tensor:
    """D_z's loss: BCE(D_z(z), 1) + BCE(D_z(Q(x)), 0) with z ~ N(0, I) the "real" codes (logits of any shape)."""
    return d_logistic_loss(d_prior_logits.float(), d_enc_logits.float())


def L_enc(d_enc_logits: Tensor) -> Tensor:
    """L_enc: Q fools D_z, BCE(D_z(Q(x)), 1) (non-saturating), averaged over the batch."""
    return g_nonsaturating_loss(d_enc_logits.float())


def d_image_loss(real_logits: Tensor, fake_logits: Tensor, gen_logits: Tensor | None = None) -> Tensor:
    """Image discriminator D's loss: BCE(D(x), 1) + BCE(D(fake), 0).

    Args:
        real_logits: D(x), B×1 (any shape).
        fake_logits: D(P(Q(x))) of the reconstructions.
        gen_logits: optional D(P(z)) of prior samples (Table 1 row C); with it the fake term is the mean of the
            two fake terms, so real and fake weigh the same.

    Returns:
        Scalar fp32.
    """
    real = F.softplus(-real_logits.float()).mean()
    fake = F.softplus(fake_logits.float()).mean()
    if gen_logits is not None:
        fake = 0.5 * (fake + F.softplus(gen_logits.float()).mean())
    return real + fake


def L_adv(fake_logits: Tensor) -> Tensor:
    """L_adv: P fools D on reconstructions, BCE(D(P(Q(x))), 1)."""
    return g_nonsaturating_loss(fake_logits.float())


def L_gen(gen_logits: Tensor) -> Tensor:
    """L_gen: P fools D on faces decoded from prior samples, BCE(D(P(z)), 1), z ~ N(0, I)."""
    return g_nonsaturating_loss(gen_logits.float())


# ------------------------------------------------------------------------------------------------ disentanglement
def batch_hard_triplet(embeddings: Tensor, labels: Tensor, margin: float = 0.2) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) with Euclidean distances.

    For each anchor the hardest positive (farthest sample of its label, not itself) and the hardest negative (nearest
    sample of another label); anchors without either are skipped, as are samples labelled −1 (unknown).

    Args:
        embeddings: B×d, L2-normalised.
        labels: B integer labels (−1: unknown).
        margin: m.

    Returns:
        Scalar fp32 mean over valid anchors of relu(d_ap − d_an + m); 0 (connected to ``embeddings``) when no anchor
        has both a positive and a negative.
    """
    e = embeddings.float()
    y = labels.to(e.device).reshape(-1).long()
    if y.numel() != e.shape[0]:
        raise ValueError(f"{y.numel()} labels for {e.shape[0]} embeddings")
    # sqrt of a clamped square: no NaN gradient at distance 0 (the diagonal, duplicate samples)
    dist = (e[:, None, :] - e[None, :, :]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    known = y >= 0
    same = (y[:, None] == y[None, :]) & known[:, None] & known[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=e.device)
    pos = same & ~eye
    neg = ~same & known[:, None] & known[None, :]
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return e.sum() * 0.0
    d_ap = dist.masked_fill(~pos, -math.inf).amax(1)
    d_an = dist.masked_fill(~neg, math.inf).amin(1)
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()


def L_f(factors: Mapping[str, Tensor], labels: Mapping[str, Tensor | None],
        weights: Mapping[str, float] | None = None, margin: float = 0.2) -> tuple[Tensor, dict[str, Tensor]]:
    """Feature loss L_f^Φ (Table 2): triplets on identity / style / expression, MSE on pose.

    Args:
        factors: E(z) as ``Disentangler`` returns it: {"pose": B×3, "identity" / "style" / "expression": B×32 unit}.
        labels: per factor a label or None (skipped; a missing key counts as None): identity / style / expression
            B integer labels (−1 unknown), pose B×3 targets (e.g. yaw / pitch / roll; rows with a NaN are skipped).
        weights: per-factor weights, default ``DEFAULT_FEATURE_WEIGHTS`` (expression ×2).
        margin: triplet margin.

    Returns:
        (Σ weight · term over the labelled factors (0 connected to ``factors`` if none), {factor: unweighted term}).
    """
    unknown = set(labels) - set(FACTORS)
    if unknown:
        raise KeyError(f"labels for unknown factors {sorted(unknown)}; expected some of {list(FACTORS)}")
    w = dict(DEFAULT_FEATURE_WEIGHTS if weights is None else weights)
    terms: dict[str, Tensor] = {}
    for name in FACTORS:
        target = labels.get(name)
        if target is None:
            continue
        f = factors[name].float()
        if name == "pose":
            target = target.to(f.device).float().reshape(f.shape)
            rows = torch.isfinite(target).all(1)
            terms[name] = (f[rows] - target[rows]).pow(2).mean() if rows.any() else f.sum() * 0.0
        else:
            terms[name] = batch_hard_triplet(f, target, margin)
    total = sum((w.get(name, 1.0) * t for name, t in terms.items()),
                next(iter(factors.values())).float().sum() * 0.0)
    return total, terms


def _vector(f: Tensor | Mapping[str, Tensor]) -> Tensor:
    """B×99 factors, from a tensor or a {factor: B×dim} dict concatenated in FACTORS order."""
    if isinstance(f, Mapping):
        return torch.cat([f[name].float() for name in FACTORS], dim=1)
    return f.float()


def L_rec_phi(z: Tensor, z_re: Tensor) -> Tensor:
    """L_rec^Φ = L1(z, G(E(z))): B×99 codes and their re-entangled reconstruction (W_Z_RECON 4 is the caller's)."""
    return (z_re.float() - z.float()).abs().mean()


def L_cyc_phi(f: Tensor | Mapping[str, Tensor], f_cycle: Tensor | Mapping[str, Tensor]) -> Tensor:
    """L_cyc^Φ = L1(f, E(Q(P(G(f))))): the factors and those of the re-encoded reconstruction (B×99 or dicts)."""
    return (_vector(f_cycle) - _vector(f)).abs().mean()


def swap_factor(f_a: Tensor, f_b: Tensor, factor: str) -> Tensor:
    """f_a (B×99) with ``factor``'s dims taken from f_b (B×99); gradients reach both."""
    if factor not in FACTORS:
        raise KeyError(f"unknown factor {factor!r}; expected one of {list(FACTORS)}")
    if f_a.shape != f_b.shape:
        raise ValueError(f"f_a {tuple(f_a.shape)} and f_b {tuple(f_b.shape)} differ")
    out = f_a.clone()
    out[:, FACTORS[factor]] = f_b[:, FACTORS[factor]]
    return out


def L_aug_phi(f_swapped_recovered: Tensor, f_a: Tensor, f_b: Tensor, factor: str) -> Tensor:
    """L_aug^Φ: L1 (mean over B×99) between E(Q(P(G(swap_factor(f_a, f_b, factor))))) and the swapped vector:
    ``factor``'s dims should be f_b's and the rest f_a's."""
    return (f_swapped_recovered.float() - swap_factor(f_a, f_b, factor).float()).abs().mean()
