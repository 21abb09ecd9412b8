"""StyleGAN2Module: trains a StyleGAN2 generator (Karras et al., CVPR 2020) on face images.

This is how the suite's embedded generator (``weights/stylegan2_synthetic.pt``, experiment ``stylegan2_synthetic``)
was made, and what a user runs to train e.g. a race-balanced generator on FairFace. The recipe is StyleGAN2 config-f
as rosinality's ``train.py`` runs it: non-saturating logistic loss, lazy R1 on D every ``d_reg_every`` iterations, lazy
path-length regularisation on G every ``g_reg_every`` iterations, style mixing, Adam, and an exponential moving
average ``g_ema`` of G — the network that is evaluated and exported. One choice differs from StyleGAN2 App. B: a lazy
regulariser is added (×k) to that iteration's main loss instead of taking an optimiser step of its own, so every
iteration is exactly one G and one D step (Lightning's ``global_step`` = 2 × iterations, ``max_steps`` stays
meaningful) and the lr/β correction for separate regulariser steps is not applied.

Manual optimisation (two optimisers, several backward passes per step). Under DDP, G and D live in one wrapped
LightningModule: configure ``strategy: ddp_find_unused_parameters_true`` (``experiments/trainer/gan_ddp.yaml``),
because each backward reaches only one of the two networks; Lightning re-prepares the reducer before every
``manual_backward``. R1 takes its input gradient with ``torch.autograd.grad`` (not ``backward``), so the reducer sees
one backward per regulariser step.

Data: batches with ``image`` (B×3×H×W in [0, 1], the generator's resolution), e.g. CelebA warped to the FFHQ framing
(``align: ffhq``), which makes the exported generator "FFHQ-aligned" like the official ones; the export stores that
framing as ``face_template`` so PULSE's alignment into F knows where the face is.

Evaluation: a Fréchet distance between ``g_ema`` samples and validation images in a network-free feature space
(8×8 area-downsampled pixels, :func:`lrface.metrics.frechet.pixel_features`: the suite has no Inception weights
offline; it measures colour and layout, not fine detail), logged as ``val/fd_pixels``; sample grids of fixed latents
(``samples/step_<n>.png`` in the run directory and W&B).
"""
from __future__ import annotations

import copy
import io
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from lrface.io import atomic_write_bytes, image_grid_png
from lrface.losses.gan import d_logistic_loss, d_r1_penalty, g_nonsaturating_loss, path_length_penalty
from lrface.metrics.frechet import frechet_distance, pixel_features


class StyleGAN2Module(pl.LightningModule):
    """StyleGAN2 training (non-saturating loss, R1, path-length regularisation, mixing, EMA).

    Args:
        generator: a :class:`lrface.nets.stylegan2.StyleGAN2Generator`.
        discriminator: a :class:`lrface.nets.stylegan2.StyleGAN2Discriminator` of the same size.
        lr: Adam learning rate (StyleGAN2: 0.002), before the lazy-regularisation correction.
        betas: Adam β's (StyleGAN2: (0, 0.99)).
        r1: R1 weight γ (StyleGAN2 FFHQ 1024: 10; small resolutions use less, e.g. 0.1–1 at 64²).
        d_reg_every: R1 every k D steps (lazy regularisation, scaled by k).
        path_regularize: path-length weight (2 in config-f; 0 disables it, which is cheaper on a CPU).
        g_reg_every: path-length regularisation every k G steps.
        path_batch_shrink: the regulariser runs on batch / shrink samples.
        mixing: style-mixing probability.
        ema_half_life_kimg: g_ema's half-life in thousands of images (10 in rosinality: decay 0.5^(32/10000)).
        framing: ``"ffhq"`` (training data warped to the FFHQ template) records
            :func:`lrface.align.ffhq_template` as the export's ``face_template``; None records nothing.
        n_samples: images in the sample grid (fixed latents).
        sample_every_n_steps: also write a grid every n steps (0: only at validation and at the end).
        fd_samples: g_ema samples drawn for ``val/fd_pixels``.
        export: file name (in the run directory) of the rosinality-format generator written at the end of fit.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, lr: float = 0.002,
                 betas: tuple[float, float] = (0.0, 0.99), r1: float = 10.0, d_reg_every: int = 16,
                 path_regularize: float = 2.0, g_reg_every: int = 4, path_batch_shrink: int = 2, mixing: float = 0.9,
                 ema_half_life_kimg: float = 10.0, framing: str | None = "ffhq", n_samples: int = 64,
                 sample_every_n_steps: int = 0, fd_samples: int = 512, export: str = "generator.pt"):
        super().__init__()
        self.save_hyperparameters(ignore=["generator", "discriminator"])
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        self.g_ema = copy.deepcopy(generator).eval().requires_grad_(False)
        self.register_buffer("mean_path_length", torch.zeros(()))
        self.register_buffer("sample_z", torch.randn(n_samples, generator.style_dim,
                                                     generator=torch.Generator().manual_seed(0)))
        self._val_real: list[torch.Tensor] = []

    # -- helpers -------------------------------------------------------------------------------------------------

    def _w_plus(self, batch: int, net: nn.Module | None = None) -> torch.Tensor:
        """W+ latents for ``batch`` samples with style mixing: rows ≥ a random crossover take a second w."""
        g = net or self.generator
        z = torch.randn(2 * batch, g.style_dim, device=self.device)
        w1, w2 = g.mapping(z).chunk(2)
        w = w1[:, None].repeat(1, g.n_latent, 1)
        mix = torch.rand(batch, device=self.device) < self.hparams.mixing
        cut = torch.randint(1, g.n_latent, (batch,), device=self.device)
        rows = torch.arange(g.n_latent, device=self.device)[None]
        take_second = (mix[:, None] & (rows >= cut[:, None]))[..., None]
        return torch.where(take_second, w2[:, None].expand_as(w), w)

    def _ema_decay(self, batch: int) -> float:
        kimg = self.hparams.ema_half_life_kimg
        if kimg <= 0:
            return 0.0
        return 0.5 ** (batch * self.trainer.world_size / (kimg * 1000.0))

    @torch.no_grad()
    def _update_ema(self, decay: float) -> None:
        for p_ema, p in zip(self.g_ema.parameters(), self.generator.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - decay)
        for b_ema, b in zip(self.g_ema.buffers(), self.generator.buffers()):
            b_ema.copy_(b)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        """g_ema images B×3×R×R in [0, 1] from z B×style_dim (fresh noise)."""
        w = self.g_ema.mapping(z)
        if truncation != 1.0:
            w = w.mean(0, keepdim=True) + truncation * (w - w.mean(0, keepdim=True))
        return ((self.g_ema.synthesis(w, randomize_noise=True) + 1) / 2).clamp(0, 1)

    # -- training ------------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        g_opt, d_opt = self.optimizers()
        hp = self.hparams
        real = batch["image"] * 2 - 1
        n = real.shape[0]
        step = self.global_step // 2  # in manual optimisation every optimizer.step() counts: two per iteration

        # D: softplus(-D(x)) + softplus(D(G(z))) [+ k·γ/2·R1 every k-th iteration]
        self.generator.requires_grad_(False)
        self.discriminator.requires_grad_(True)
        with torch.no_grad():
            fake = self.generator.synthesis(self._w_plus(n), randomize_noise=True)
        regularize_d = hp.r1 > 0 and step % hp.d_reg_every == 0
        real_in = real.detach().requires_grad_(regularize_d)
        real_logits = self.discriminator(real_in)
        d_loss = d_logistic_loss(real_logits, self.discriminator(fake))
        logs = {"train/d_loss": d_loss.detach()}
        d_total = d_loss
        if regularize_d:
            penalty = d_r1_penalty(real_logits, real_in)
            d_total = d_total + hp.r1 / 2 * penalty * hp.d_reg_every
            logs["train/r1"] = penalty.detach()
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_total)
        d_opt.step()

        # G: softplus(-D(G(z))) [+ k·w_pl·(‖J_wᵀy‖ − a)² every k-th iteration]
        self.generator.requires_grad_(True)
        self.discriminator.requires_grad_(False)
        fake = self.generator.synthesis(self._w_plus(n), randomize_noise=True)
        g_loss = g_nonsaturating_loss(self.discriminator(fake))
        logs["train/g_loss"] = g_loss.detach()
        g_total = g_loss
        if hp.path_regularize > 0 and step % hp.g_reg_every == 0:
            w = self._w_plus(max(1, n // hp.path_batch_shrink))
            images = self.generator.synthesis(w, randomize_noise=True)
            penalty, lengths, self.mean_path_length = path_length_penalty(images, w, self.mean_path_length)
            g_total = g_total + hp.path_regularize * hp.g_reg_every * penalty
            logs["train/path_length"] = lengths.mean().detach()
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(g_total)
        g_opt.step()
        self.discriminator.requires_grad_(True)

        self._update_ema(self._ema_decay(n))
        self.log_dict(logs, prog_bar=True, on_step=True, on_epoch=True, batch_size=n, sync_dist=False)
        every = hp.sample_every_n_steps
        if every and step > 0 and step % every == 0:
            self._write_grid(f"step_{step:07d}")

    # -- evaluation ----------------------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_real = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val_real.append(pixel_features(batch["image"]).cpu())

    def on_validation_epoch_end(self) -> None:
        real = torch.cat(self._val_real) if self._val_real else None
        self._val_real = []
        if real is None or real.shape[0] < 2:
            return
        if self.trainer.world_size > 1:
            real = self.all_gather(real).reshape(-1, real.shape[1]).cpu()
        fd = self.fd_pixels(real, self.hparams.fd_samples)
        self.log("val/fd_pixels", fd, sync_dist=False, rank_zero_only=True)
        if not self.trainer.sanity_checking:
            self._write_grid(f"step_{self.global_step // 2:07d}")

    def fd_pixels(self, real_features: torch.Tensor, n: int, seed: int = 1) -> float:
        """Fréchet distance between ``n`` g_ema samples and real pixel features (N×3·8·8)."""
        z = torch.randn(n, self.g_ema.style_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)
        fake = torch.cat([pixel_features(self.sample(chunk)).cpu() for chunk in z.split(64)])
        return frechet_distance(fake, real_features)

    def _write_grid(self, name: str) -> None:
        if not self.trainer.is_global_zero:
            return
        from torchvision.utils import make_grid

        images = self.sample(self.sample_z)
        nrow = int(math.ceil(math.sqrt(images.shape[0])))
        atomic_write_bytes(Path(self.trainer.default_root_dir) / "samples" / f"{name}.png",
                           image_grid_png(images, nrow=nrow))
        logger = self.logger
        if logger is not None and hasattr(logger, "log_image"):  # W&B takes one C×H×W image per entry
            logger.log_image("samples", [make_grid(images.cpu(), nrow=nrow, padding=2)], step=self.global_step)

    def export_generator(self, path: str | Path) -> Path:
        """Writes g_ema as a rosinality checkpoint ``{"g_ema", "latent_avg", "face_template", "config"}`` that
        :func:`lrface.weights.load_generator` reads (the ``config`` is informational; shapes are inferred)."""
        from lrface.align import ffhq_template

        g = self.g_ema
        state = {k: v.detach().cpu().clone() for k, v in g.state_dict().items()}
        payload: dict[str, Any] = {
            "g_ema": state,
            "latent_avg": g.mean_latent(4096).reshape(-1).cpu(),
            "config": {"size": int(g.size), "style_dim": int(g.style_dim), "n_mlp": int(g.n_mlp),
                       "channels": {int(k): int(v) for k, v in g.channels.items()}},
        }
        if self.hparams.framing == "ffhq":
            payload["face_template"] = ffhq_template(g.size)
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and not self.trainer.interrupted and not self.trainer.sanity_checking:
            root = Path(self.trainer.default_root_dir)
            self.export_generator(root / self.hparams.export)
            atomic_write_bytes(root / "samples.png", image_grid_png(self.sample(self.sample_z)))

    def configure_optimizers(self):
        hp = self.hparams
        # The regularisers ride on the main step (see class docstring), so StyleGAN2's lazy lr/β correction
        # (lrface.losses.gan.lazy_regularization, for a separate regulariser step) is not applied.
        g_opt = torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=tuple(float(b) for b in hp.betas))
        d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=tuple(float(b) for b in hp.betas))
        return [g_opt, d_opt]


def export_from_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """g_ema of a StyleGAN2Module Lightning checkpoint (``<run dir>/checkpoints/*.ckpt``) → a rosinality-format
    generator file, e.g. to use a generator while (or after interrupting) its training. The networks are rebuilt from
    ``<run dir>/config.yaml``."""
    from omegaconf import OmegaConf

    from lrface.config import instantiate

    ckpt = Path(ckpt)
    config = ckpt.parent.parent / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{ckpt}: expected the run's config.yaml at {config}")
    cfg = OmegaConf.load(config)
    module = instantiate(cfg.module)
    if not isinstance(module, StyleGAN2Module):
        raise ValueError(f"{config}: module is {type(module).__name__}, not a StyleGAN2Module")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state, strict=True)
    return module.export_generator(out)
