"""PULSE latent search (Menon et al., CVPR 2020; seed paper 000 Eq. 1–3), batched and per-sample correct.

Generator-agnostic: the generator only needs ``n_latent``, ``style_dim``, ``mapping(z B×D) → B×D``,
``synthesis(w_plus B×n×D, noise=list | None) → B×3×R×R`` in ~[−1, 1], and ``noise_shapes()`` (per-sample noise map
shapes, ``(C, H, W)``, ``(1, C, H, W)`` or ``(H, W)``).

Differences from the official ``PULSE.forward`` (all deliberate, see reference §9/§12):
- B thumbnails × R restarts run as one batch; every sample draws its latent and noise from its own
  ``torch.Generator`` seeded with its thumbnail's seed (seed 0 is a seed), so results do not depend on batch
  composition;
- the eps check is per sample on the unclamped MSE of DS(I) vs the thumbnail (the official batch-summed, clamped
  check can never pass for batch > 1); a sample within eps is frozen (its latent and noise stop changing) and the
  loop ends when all are frozen;
- the best image per sample is returned (the official returns the last iterate): the first image within eps, or,
  if none, the image with the lowest total loss; the best restart per thumbnail is chosen by the same rule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lrface.losses.pulse import BicubicDownsample, downscale_loss, geocross, parse_loss_string

__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "PulseSearch",
    "SphericalProjector",
    "gaussian_fit",
    "latent_to_w_plus",
    "lr_multiplier",
]

#: Slope of the inverse of the mapping network's final LeakyReLU(0.2): lrelu0.2(lrelu5(w)) = w.
_INVERSE_SLOPE = 5.0
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601, as PIL's "L" conversion
_MAPPING_SLOPE = 0.2
_NORM_EPS = 1e-9

OPTIMIZERS = ("adam", "sgd", "sgdm", "adamax")
LR_SCHEDULES = ("fixed", "linear1cycle", "linear1cycledrop")


@torch.no_grad()
def gaussian_fit(
    generator: Any,
    n_samples: int = 1_000_000,
    batch: int = 10_000,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Mean and std of ``leaky_relu(mapping(z), 5)`` over z ~ N(0, I) (PULSE's ``gaussian_fit.pt``).

    The slope-5 LeakyReLU inverts the mapping network's last LeakyReLU(0.2), making W roughly Gaussian. Streams
    ``batch`` rows at a time (memory bounded; the official single 1M-row pass OOMs, issue #69) and merges per-batch
    float64 means and centred sums of squares (Chan et al.'s parallel Welford update). z is drawn on the CPU in
    consecutive chunks of ``batch`` rows from a ``torch.Generator`` seeded with ``seed``.

    Args:
        generator: object with ``style_dim`` and ``mapping``.
        n_samples: number of z draws.
        batch: rows per mapping call.
        seed: seed of the z stream.
        device: where to run the mapping; default: the generator's parameters' device, else CPU.

    Returns:
        ``{"mean": (D,) float32, "std": (D,) float32}`` on CPU; std is unbiased (``torch.std``), as the official.
    """
    if n_samples < 2 or batch < 1:
        raise ValueError(f"gaussian_fit: need n_samples >= 2 and batch >= 1, got {n_samples}, {batch}")
    device = torch.device(device) if device is not None else _generator_device(generator)
    rng = torch.Generator().manual_seed(int(seed))
    dim = int(generator.style_dim)
    count = 0
    mean = torch.zeros(dim, dtype=torch.float64)
    m2 = torch.zeros(dim, dtype=torch.float64)
    while count < n_samples:
        n = min(batch, n_samples - count)
        z = torch.randn(n, dim, generator=rng).to(device)
        w = F.leaky_relu(generator.mapping(z), _INVERSE_SLOPE).double().cpu()
        b_mean = w.mean(0)
        b_m2 = (w - b_mean).pow(2).sum(0)
        total = count + n
        delta = b_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + b_m2 + delta.pow(2) * (count * n / total)
        count = total
    std = (m2 / (count - 1)).sqrt()
    return {"mean": mean.float(), "std": std.float()}


def latent_to_w_plus(latent: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, n_latent: int) -> torch.Tensor:
    """PULSE's map from the "Gaussianized" sphere variable to W+: ``lrelu(latent·std + mean, 0.2)``.

    Args:
        latent: B×n×D, or B×1×D (tiled latent, broadcast to n_latent rows).
        mean: (D,) Gaussian-fit mean.
        std: (D,) Gaussian-fit std.
        n_latent: number of W+ rows.

    Returns:
        B×n_latent×D.
    """
    if latent.shape[1] == 1:
        latent = latent.expand(-1, n_latent, -1)
    return F.leaky_relu(latent * std + mean, _MAPPING_SLOPE)


def lr_multiplier(schedule: str, step: int, steps: int) -> float:
    """The official learning-rate multipliers (``LambdaLR``) at optimiser step ``step`` of ``steps``.

    ``fixed``: 1. ``linear1cycle``: triangle 0.1 → 1 (at steps/2) → 0.1. ``linear1cycledrop``: the same triangle over
    the first 0.9·steps, then linear 0.1 → 0.001 over the last 0.1·steps.

    Args:
        schedule: one of :data:`LR_SCHEDULES`.
        step: 0-based step.
        steps: total steps.

    Returns:
        the multiplier of the base learning rate.
    """
    x, s = float(step), float(steps)
    if schedule == "fixed":
        return 1.0
    if schedule == "linear1cycle":
        return (9.0 * (1.0 - abs(x / s - 0.5) * 2.0) + 1.0) / 10.0
    if schedule == "linear1cycledrop":
        if x < 0.9 * s:
            return (9.0 * (1.0 - abs(x / (0.9 * s) - 0.5) * 2.0) + 1.0) / 10.0
        return 0.1 + (x - 0.9 * s) / (0.1 * s) * (0.001 - 0.1)
    raise ValueError(f"unknown lr_schedule {schedule!r}; expected one of {list(LR_SCHEDULES)}")


class SphericalProjector:
    """The projection half of PULSE's ``SphericalOptimizer``.

    Records, per parameter, the norm over all dims ≥ 2 (keepdim) at construction — (B, n, 1) for the latent, so
    each row of each sample keeps its own initial norm (≈ sqrt(D)), and (B, C, 1, 1) for a noise map — and
    :meth:`project` rescales every parameter in place back onto those spheres.

    Args:
        params: tensors of ≥ 3 dims.
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.params = list(params)
        with torch.no_grad():
            self.radii = [self._norm(p) for p in self.params]

    @staticmethod
    def _norm(p: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, p.dim()))
        return (p.pow(2).sum(dims, keepdim=True) + _NORM_EPS).sqrt()

    @torch.no_grad()
    def project(self) -> None:
        """Rescale every parameter onto its recorded sphere."""
        for p, r in zip(self.params, self.radii):
            p.mul_(r / self._norm(p))


def _make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr)
    raise ValueError(f"unknown opt_name {name!r}; expected one of {list(OPTIMIZERS)}")


def _generator_device(generator: Any) -> torch.device:
    params = getattr(generator, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def _frozen_generator(generator: Any) -> Iterator[None]:
    """No generator gradients during the search (only latent and noise are optimised); restores flags after."""
    params = list(generator.parameters()) if callable(getattr(generator, "parameters", None)) else []
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _per_sample_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        return shape[1:]
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        return (1, *shape)
    raise ValueError(f"noise_shapes(): cannot interpret noise shape {shape}; expected (C,H,W), (1,C,H,W) or (H,W)")


_LossFn = Callable[[torch.Tensor], torch.Tensor]
ExtraLoss = tuple[float, _LossFn] | tuple[float, str, _LossFn]


class PulseSearch:
    """Batched PULSE search: B thumbnails × R restarts as B·R independent latents in one optimisation.

    Args:
        generator: a generator with the protocol in the module docstring (left unchanged; its parameters get no
            gradients during the search).
        gaussian: ``{"mean": (D,), "std": (D,)}`` from :func:`gaussian_fit` or PULSE's ``gaussian_fit.pt``.
        loss: PULSE loss string over ``L2``, ``L1``, ``GEOCROSS`` (Eq. 3 default ``100*L2+0.05*GEOCROSS``).
        eps: per-sample convergence threshold on the unclamped MSE of DS(I) vs the thumbnail; also the clamp of the
            L2/L1 terms (official semantics).
        steps: maximum optimiser steps.
        lr: base learning rate (latent and trainable noise).
        opt_name: ``adam`` | ``sgd`` | ``sgdm`` (momentum 0.9) | ``adamax``.
        lr_schedule: ``fixed`` | ``linear1cycle`` | ``linear1cycledrop``.
        num_trainable_noise_layers: noise maps ``0 .. k−1`` are optimised (and kept on their spheres).
        tile_latent: one D-vector per sample, tiled to all n_latent rows.
        bad_noise_layers: noise indices set to zero (indices beyond the generator's noise count are ignored: the
            default 17 is StyleGAN1's last 1024² map).
        restarts: R random restarts per thumbnail.
        extra_losses: ``(weight, fn)`` or ``(weight, name, fn)``; ``fn(images)`` gets the B·R generated images in
            [0, 1] (sample ``i`` belongs to thumbnail ``i // R``) and returns a per-sample loss (B·R,).
        noise_type: ``trainable`` (official default) | ``fixed`` | ``zero``.
    """

    def __init__(
        self,
        generator: Any,
        gaussian: dict[str, torch.Tensor],
        loss: str = "100*L2+0.05*GEOCROSS",
        eps: float = 2e-3,
        steps: int = 100,
        lr: float = 0.4,
        opt_name: str = "adam",
        lr_schedule: str = "linear1cycledrop",
        num_trainable_noise_layers: int = 5,
        tile_latent: bool = False,
        bad_noise_layers: Sequence[int] = (17,),
        restarts: int = 1,
        extra_losses: Sequence[ExtraLoss] | None = None,
        noise_type: str = "trainable",
    ) -> None:
        if opt_name not in OPTIMIZERS:
            raise ValueError(f"unknown opt_name {opt_name!r}; expected one of {list(OPTIMIZERS)}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; expected one of {list(LR_SCHEDULES)}")
        if noise_type not in ("trainable", "fixed", "zero"):
            raise ValueError(f"unknown noise_type {noise_type!r}; expected 'trainable', 'fixed' or 'zero'")
        if steps < 0 or restarts < 1:
            raise ValueError(f"need steps >= 0 and restarts >= 1, got {steps}, {restarts}")
        self.generator = generator
        self.n_latent = int(generator.n_latent)
        self.style_dim = int(generator.style_dim)
        self.mean = torch.as_tensor(gaussian["mean"], dtype=torch.float32).reshape(-1)
        self.std = torch.as_tensor(gaussian["std"], dtype=torch.float32).reshape(-1)
        if self.mean.numel() != self.style_dim or self.std.numel() != self.style_dim:
            raise ValueError(
                f"gaussian fit has {self.mean.numel()}/{self.std.numel()} dims, generator style_dim is {self.style_dim}"
            )
        self.loss_terms = parse_loss_string(loss)
        self.eps = float(eps)
        self.steps = int(steps)
        self.lr = float(lr)
        self.opt_name = opt_name
        self.lr_schedule = lr_schedule
        self.num_trainable_noise_layers = int(num_trainable_noise_layers)
        self.tile_latent = bool(tile_latent)
        self.bad_noise_layers = {int(i) for i in bad_noise_layers}
        self.restarts = int(restarts)
        self.noise_type = noise_type
        self.extra_losses: list[tuple[float, str, Callable[[torch.Tensor], torch.Tensor]]] = []
        for k, item in enumerate(extra_losses or ()):
            if len(item) == 2:
                weight, fn = item
                name = getattr(fn, "__name__", f"extra{k}")
            else:
                weight, name, fn = item
            self.extra_losses.append((float(weight), str(name), fn))
        names = [n for _, n in self.loss_terms] + [n for _, n, _ in self.extra_losses]
        if len(set(names)) != len(names):
            raise ValueError(f"loss names must be unique, got {names}")

    # -- initial state ------------------------------------------------------------------------------------------

    def _init_state(
        self, seeds: Sequence[int], device: torch.device
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[bool]]:
        """Draw latents and noise per thumbnail seed: restart r of thumbnail b uses the (r+1)-th draws of its stream.

        torch's CPU generator (mt19937) keeps only the low 32 bits of a seed: seeds equal modulo 2³² give equal
        streams, so derive related seeds with small offsets, not multiples of 2³².
        """
        shapes = [_per_sample_shape(s) for s in self.generator.noise_shapes()]
        rows = 1 if self.tile_latent else self.n_latent
        latents, noises = [], [[] for _ in shapes]
        for seed in seeds:
            rng = torch.Generator().manual_seed(int(seed))
            for _ in range(self.restarts):
                latents.append(torch.randn(rows, self.style_dim, generator=rng))
                for i, shape in enumerate(shapes):
                    noises[i].append(torch.randn(shape, generator=rng))
        latent = torch.stack(latents).to(device)
        noise, trainable = [], []
        for i, maps in enumerate(noises):
            n = torch.stack(maps).to(device)
            if self.noise_type == "zero" or i in self.bad_noise_layers:
                n.zero_()
                trainable.append(False)
            else:
                trainable.append(self.noise_type == "trainable" and i < self.num_trainable_noise_layers)
            noise.append(n)
        return latent, noise, trainable

    # -- losses --------------------------------------------------------------------------------------------------

    def _losses(
        self, w_plus: torch.Tensor, images: torch.Tensor, target: torch.Tensor, down: BicubicDownsample
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample total loss (N,), unclamped MSE (N,) and per-term values (N,) each."""
        lr_images = down(images)
        if target.shape[1] == 1:  # a grayscale thumbnail constrains luminance only; colours stay free
            lr_images = (lr_images * _LUMA.to(lr_images)).sum(1, keepdim=True)
        mse = (lr_images - target).pow(2).mean((1, 2, 3))
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros_like(mse)
        for weight, name in self.loss_terms:
            if name == "GEOCROSS":
                value = geocross(w_plus, reduction="none")
            else:
                value = downscale_loss(lr_images, target, kind=name, eps=self.eps, reduction="none")
            terms[name] = value
            total = total + weight * value
        for weight, name, fn in self.extra_losses:
            value = fn(images).reshape(-1)
            if value.shape[0] != images.shape[0]:
                raise ValueError(f"extra loss {name!r} returned {value.shape[0]} values for {images.shape[0]} images")
            terms[name] = value
            total = total + weight * value
        return total, mse, terms

    # -- search --------------------------------------------------------------------------------------------------

    def search(
        self,
        thumbnails: torch.Tensor,
        seeds: Sequence[int],
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Find, per thumbnail, a generated image whose downscale is within eps of it.

        Args:
            thumbnails: B×C×h×h in [0, 1]; the generator resolution R must be an integer multiple of h. C = 3 (RGB),
                4 (RGBA: composited over black) or 1 (grayscale: the luminance Y = 0.299 R + 0.587 G + 0.114 B of
                DS(I) is matched, so the search may choose any colours).
            seeds: B integers, one per thumbnail (0 is a valid seed).
            on_step: optional ``on_step(step, state)`` called after every optimiser step with detached
                ``latent`` (B·R×rows×D), ``noise`` (list of B·R×C×H×W maps), ``active`` (B·R bool) and ``mse``
                (B·R, of the image before the step).

        Returns:
            dict with ``images`` B×3×R×R in [0, 1] (clamped), ``downscale_loss`` (B,) unclamped MSE of the returned
            image, ``steps`` (B,) optimiser steps taken before the returned image, ``converged`` (B,) bool,
            ``losses`` {term: (B,)} plus ``TOTAL``, ``w_plus`` B×n×D of the returned image, ``restart`` (B,) chosen
            restart, ``restart_total`` and ``restart_converged`` (B×R) of each restart's best image.
        """
        if thumbnails.dim() != 4 or thumbnails.shape[2] != thumbnails.shape[3] or thumbnails.shape[1] not in (1, 3, 4):
            raise ValueError(f"thumbnails must be B×C×h×h with C = 1 (gray), 3 (RGB) or 4 (RGBA), got shape "
                             f"{tuple(thumbnails.shape)}; crop / resize other sizes first (lrface.upscale does)")
        if thumbnails.shape[1] == 4:  # composite over black, as lrface.upscale.to_rgb_uint8 does for files
            thumbnails = thumbnails[:, :3] * thumbnails[:, 3:]
        b, _, h, _ = thumbnails.shape
        if len(seeds) != b:
            raise ValueError(f"need one seed per thumbnail: got {len(seeds)} seeds for {b} thumbnails")
        device = thumbnails.device
        r_ = self.restarts
        n = b * r_
        target = thumbnails.float().repeat_interleave(r_, dim=0)
        mean, std = self.mean.to(device), self.std.to(device)

        latent, noise, trainable = self._init_state(seeds, device)
        latent.requires_grad_(True)
        opt_params = [latent] + [m.requires_grad_(True) for m, t in zip(noise, trainable) if t]
        optimizer = _make_optimizer(self.opt_name, opt_params, self.lr)
        projector = SphericalProjector(opt_params)

        down: BicubicDownsample | None = None
        best_key_conv = torch.zeros(n, dtype=torch.bool, device=device)
        best_total = torch.full((n,), math.inf, device=device)
        best_mse = torch.full((n,), math.inf, device=device)
        best_steps = torch.zeros(n, dtype=torch.long, device=device)
        best_images: torch.Tensor | None = None
        best_w: torch.Tensor | None = None
        best_terms: dict[str, torch.Tensor] = {}
        active = torch.ones(n, dtype=torch.bool, device=device)

        with _frozen_generator(self.generator):
            for step in range(self.steps + 1):
                w_plus = latent_to_w_plus(latent, mean, std, self.n_latent)
                images = (self.generator.synthesis(w_plus, noise=noise) + 1.0) / 2.0
                if down is None:
                    down = self._downsampler(images.shape[-1], h)
                total, mse, terms = self._losses(w_plus, images, target, down)

                with torch.no_grad():
                    within = mse <= self.eps
                    # An active sample has never been within eps, so a first within-eps image always wins.
                    better = active & (within | (total < best_total))
                    if best_images is None:
                        best_images = images.detach().clone()
                        best_w = w_plus.detach().clone()
                        best_terms = {k: v.detach().clone() for k, v in terms.items()}
                    idx = better.nonzero().squeeze(1)
                    best_images[idx] = images.detach()[idx]
                    best_w[idx] = w_plus.detach()[idx]
                    for k, v in terms.items():
                        best_terms[k][idx] = v.detach()[idx]
                    best_total[idx] = total.detach()[idx]
                    best_mse[idx] = mse.detach()[idx]
                    best_steps[idx] = step
                    best_key_conv |= better & within
                    active &= ~within

                if step == self.steps or not bool(active.any()):
                    break

                for group in optimizer.param_groups:
                    group["lr"] = self.lr * lr_multiplier(self.lr_schedule, step, self.steps)
                optimizer.zero_grad(set_to_none=True)
                frozen = ~active
                saved = [p.detach()[frozen].clone() for p in opt_params] if bool(frozen.any()) else None
                # Samples are independent and the optimisers element-wise, so one summed loss gives every sample
                # exactly its own gradient.
                total[active].sum().backward()
                optimizer.step()
                projector.project()
                if saved is not None:
                    with torch.no_grad():
                        for p, s in zip(opt_params, saved):
                            p[frozen] = s
                if on_step is not None:
                    state = {"latent": latent.detach().clone(), "active": active.clone(), "mse": mse.detach()}
                    state["noise"] = [m.detach().clone() for m in noise]
                    on_step(step, state)

        assert best_images is not None and best_w is not None
        key_conv = best_key_conv.view(b, r_)
        key_total = best_total.view(b, r_)
        # Converged restarts first, then the lowest total loss.
        conv_total = torch.where(key_conv, key_total, torch.full_like(key_total, math.inf))
        choice = torch.where(key_conv.any(1), conv_total.argmin(1), key_total.argmin(1))
        flat = torch.arange(b, device=device) * r_ + choice
        losses = {k: v[flat] for k, v in best_terms.items()}
        losses["TOTAL"] = best_total[flat]
        return {
            "images": best_images[flat].clamp(0.0, 1.0),
            "downscale_loss": best_mse[flat],
            "steps": best_steps[flat],
            "converged": best_key_conv[flat],
            "losses": losses,
            "w_plus": best_w[flat],
            "restart": choice,
            "restart_total": key_total,
            "restart_converged": key_conv,
        }

    @staticmethod
    def _downsampler(resolution: int, h: int) -> BicubicDownsample:
        if resolution % h != 0:
            raise ValueError(
                f"generator resolution {resolution} is not an integer multiple of the thumbnail size {h}; "
                f"PULSE needs an integer bicubic factor (e.g. 1024/32 = 32, 64/16 = 4)"
            )
        return BicubicDownsample(resolution // h)
