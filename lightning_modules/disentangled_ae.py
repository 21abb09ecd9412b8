"""DisentangledAEModule: training of Browatzki & Wallraven's multi-attribute disentangling adversarial autoencoder
(seed 003, "Robust Discrimination and Generation of Faces using Compact, Disentangled Embeddings", ICCVW 2019;
supplementary §7 Tables 1–2; the authors' code facts in methods.md §4).

Networks (:class:`lrface.nets.mad.MADNet`, images B×3×S×S in [-1, 1], dataset images in [0, 1] mapped here):
Q: x → z (B×99), P: z → x̂ (B×3×S×S), D_z: z → logit (B), D: x → logit (B), E: z → f = {pose B×3, identity /
style / expression B×32} (B×99 concatenated), G: f → z (B×99).

Three phases (the code's ``--train_ae`` / ``--disent`` switches), each a run that may start from the previous one's
checkpoint (``init``):

* ``"ae"`` — the adversarial autoencoder (Table 1): Q, P, D, D_z train; E, G are not used and not stepped.
  AE step: w_rec·L_rec(x, P(Q(x))) + w_enc·L_enc(D_z(Q(x))) + w_adv·L_adv(D(P(Q(x)))) + w_gen·L_gen(D(P(z)))
  with z ~ N(0, I); then one discriminator step: D_z on prior z vs Q(x) (``d_z_loss``), D on x vs P(Q(x)) [and
  P(z)] (``d_image_loss``), both on detached inputs.
* ``"disent"`` — separate training "S" (Table 2): Q, P frozen (requires_grad False, BatchNorm in eval mode, never
  stepped), D and D_z unused; E, G train with
  w_feat·L_f^Φ(E(z), labels) + w_z_recon·L_rec^Φ(z, G(E(z))) + w_cycle·L_cyc^Φ(f, E(Q(P(G(f)))))
  + w_aug·L_aug^Φ(E(Q(P(G(swap(f, roll(f, 1), k))))), f, roll(f, 1), k), k a random factor per step (among the
  factors with a non-zero ``feature_weights`` entry); the targets — z of L_rec^Φ, f of the cycle and augmentation
  terms — are detached (they are the reference the pipeline must reproduce; E is shaped by L_f and through G).
  Gradients of the cycle / augmentation terms pass through the frozen P and Q into G and E.
  The cycle / augmentation passes (re-entangled codes through P, generated faces through Q) never update Q's and
  P's BatchNorm running statistics (:func:`running_stats_frozen`; in phase joint they normalise with their own batch
  statistics, as the real faces do): the running statistics must describe real faces and their codes, which is what
  eval-mode reconstruction sees. Measured on mad_synthetic (row B, 200 joint batches): with the passes updating
  them, eval-mode reconstruction RMSE went from 33 to 79 while the same weights in train mode gave 39.
* ``"joint"`` — joint training "J": everything trains, the AE and disentanglement losses summed into one backward
  (so the disentanglement terms also shape Q and P), then the discriminator step.

Each Table 1 / Table 2 column is a weight: 0 switches the term off (not computed, not logged), so every ablation
row is a config (e.g. Table 1 row A: ``w_adv=0 w_gen=0``; Table 2 row A: ``w_z_recon=0 w_cycle=0 w_aug=0``; rows
D / E, one factor only: ``feature_weights`` with the other factors at 0).

Labels come from :func:`lrface.mad_labels.mad_labels` (CelebA plays AffectNet's, VoxCeleb's and VGGFace2's roles).

Optimisers (Adam, ``betas`` for all three as the code's (0, 0.999)): AE = Q + P at ``lr_ae`` (2e-5), D = D + D_z at
``lr_d`` (default lr_ae / 2), disentanglement = E + G at ``lr_disent`` (8e-5). Manual optimisation: every
``optimizer.step()`` counts in ``global_step``, so one batch is 2 steps in phase ae (AE, D), 1 in disent, 3 in joint
(AE, disentanglement, D) — ``trainer.max_steps`` counts these (:attr:`DisentangledAEModule.steps_per_batch`).

Under DDP all six networks live in one wrapped module and each backward reaches only some of them: use
``strategy: ddp_find_unused_parameters_true`` (``experiments/trainer/gan_ddp.yaml``). Frozen networks have
requires_grad False before the wrapper is built, so the reducer ignores them.

Validation (CelebA's ``valid`` split, or the first faces of MS1M's ``.bin`` pairs): the reconstruction RMSE of the
paper's Table 1 — per image sqrt(mean((x − x̂)²)) over pixels and channels on [0, 1] images scaled to 0..255,
averaged over images — as ``val/rmse`` (the checkpoint monitor), the L1 on [-1, 1] as ``val/l1``, and a grid PNG (rows: inputs |
reconstructions | P(z) of fixed prior samples) in ``samples/step_<batches>.png`` and ``samples.png``.

Checkpoints hold ``net.*`` only (the six networks; the prior samples of the grid are regenerated from a seed).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from lrface.inference import to_model_range
from lrface.losses.disentangle import (
    DEFAULT_FEATURE_WEIGHTS,
    L_adv,
    L_aug_phi,
    L_cyc_phi,
    L_enc,
    L_f,
    L_gen,
    L_rec,
    L_rec_phi,
    d_image_loss,
    d_z_loss,
    swap_factor,
)
from lrface.mad_labels import DEFAULT_STYLE_ATTRIBUTES, mad_labels
from lrface.nets.mad import FACTORS, Z_DIM, Disentangler, MADNet

from .sample_grids import write_sample_grid

__all__ = ["PHASES", "DisentangledAEModule", "running_stats_frozen"]

PHASES = ("ae", "disent", "joint")


@contextmanager
def running_stats_frozen(*modules: nn.Module) -> Iterator[None]:
    """Inside: BatchNorm layers of ``modules`` normalise as their mode says (batch statistics in train mode) but
    leave their running mean / variance untouched (momentum 0); restored on exit."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class DisentangledAEModule(pl.LightningModule):
    """Args:
        net: a :class:`lrface.nets.mad.MADNet`.
        phase: ``"ae"`` | ``"disent"`` | ``"joint"`` (module docstring).
        w_rec, w_ssim, ssim_window: L_rec's weight, its SSIM weight (60) and window (31; smaller for small images).
        w_enc, w_adv, w_gen: L_enc, L_adv, L_gen (Table 1; the supplementary gives no values: 1).
        w_feat, w_z_recon, w_cycle, w_aug: L_f^Φ, L_rec^Φ (4), L_cyc^Φ, L_aug^Φ (Table 2; the code's W_FEAT 1,
            W_Z_RECON 4, W_CYCLE 1, W_AUG 1).
        feature_weights: per-factor weights inside L_f^Φ (default pose 1, identity 1, style 1, expression 2); a
            factor at 0 gets no label (Table 2 rows D / E) and is never swapped by L_aug^Φ.
        triplet_margin: margin of the batch-hard triplets.
        lr_ae, betas, lr_d, lr_disent: Adam settings; ``lr_d`` None → lr_ae / 2.
        init: a previous phase's checkpoint (``.ckpt``) whose ``net.*`` weights are loaded (strict) at construction.
        style_attributes: CelebA attributes packed into the style class (:mod:`lrface.mad_labels`).
        n_samples: faces per row of the sample grid.
        sample_seed: seed of the grid's fixed prior samples.
    """

    def __init__(self, net: MADNet, phase: str = "ae", w_rec: float = 1.0, w_ssim: float = 60.0,
                 ssim_window: int = 31, w_enc: float = 1.0, w_adv: float = 1.0, w_gen: float = 1.0,
                 w_feat: float = 1.0, w_z_recon: float = 4.0, w_cycle: float = 1.0, w_aug: float = 1.0,
                 feature_weights: Mapping[str, float] | None = None, triplet_margin: float = 0.2,
                 lr_ae: float = 2e-5, betas: Sequence[float] = (0.0, 0.999), lr_d: float | None = None,
                 lr_disent: float = 8e-5, init: str | None = None,
                 style_attributes: Sequence[str] = DEFAULT_STYLE_ATTRIBUTES, n_samples: int = 8,
                 sample_seed: int = 0):
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}; got {phase!r}")
        weights = dict(DEFAULT_FEATURE_WEIGHTS if feature_weights is None else feature_weights)
        unknown = set(weights) - set(FACTORS)
        if unknown:
            raise KeyError(f"feature_weights for unknown factors {sorted(unknown)}; expected some of {list(FACTORS)}")
        self.save_hyperparameters(ignore=["net"])
        self.automatic_optimization = False
        self.net = net
        self.feature_weights = {name: float(weights.get(name, 0.0)) for name in FACTORS}
        self.swap_factors = [name for name, w in self.feature_weights.items() if w > 0] or list(FACTORS)
        self.register_buffer("sample_z", torch.randn(n_samples, Z_DIM,
                                                     generator=torch.Generator().manual_seed(sample_seed)),
                             persistent=False)
        if init is not None:
            self.load_net(init)
        self._freeze()
        self._grid: torch.Tensor | None = None

    # -- phases ------------------------------------------------------------------------------------------------------

    @property
    def train_ae(self) -> bool:
        return self.hparams.phase in ("ae", "joint")

    @property
    def train_disent(self) -> bool:
        return self.hparams.phase in ("disent", "joint")

    @property
    def train_discriminators(self) -> bool:
        return self.train_ae and bool(self.hparams.w_enc or self.hparams.w_adv or self.hparams.w_gen)

    @property
    def steps_per_batch(self) -> int:
        """Optimiser steps per training batch (what ``global_step`` / ``max_steps`` count)."""
        return int(self.train_ae) + int(self.train_disent) + int(self.train_discriminators)

    def frozen_networks(self) -> dict[str, nn.Module]:
        """The networks this phase never updates (requires_grad False; in phase disent also kept in eval mode)."""
        n = self.net
        if self.hparams.phase == "ae":
            return {"disentangler": n.disentangler, "reentangler": n.reentangler}
        if self.hparams.phase == "disent":
            return {"encoder": n.encoder, "decoder": n.decoder, "discriminator": n.discriminator,
                    "z_discriminator": n.z_discriminator}
        return {}

    def _eval_networks(self) -> list[nn.Module]:
        # frozen networks with BatchNorm / dropout (E and G have neither: phase ae only stops their gradients)
        return list(self.frozen_networks().values()) if self.hparams.phase == "disent" else []

    def _freeze(self) -> None:
        for module in self.frozen_networks().values():
            module.requires_grad_(False)
        for module in self._eval_networks():
            module.eval()

    def train(self, mode: bool = True):
        # Lightning switches the whole module to train mode after validation: frozen BatchNorm statistics must stay
        # fixed (phase disent's Q and P are bit-identical after training).
        super().train(mode)
        for module in self._eval_networks():
            module.eval()
        return self

    def load_net(self, path: str | Path) -> None:
        """Load the ``net.*`` weights of a DisentangledAEModule checkpoint (strict; ``weights_only`` loading)."""
        from lrface.weights import load_weights_file

        path = Path(path)
        obj = load_weights_file(path)
        state = obj.get("state_dict") if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a Lightning checkpoint with a state_dict")
        net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
        if not net_state:
            raise ValueError(f"{path}: a checkpoint without net.* weights (not a DisentangledAEModule run)")
        self.net.load_state_dict(net_state, strict=True)

    # -- losses ------------------------------------------------------------------------------------------------------

    def _ae_losses(self, x: torch.Tensor, z: torch.Tensor, x_hat: torch.Tensor,
                   logs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Table 1's generator-side terms; returns (loss, P(z_prior) or None). D and D_z must be frozen here."""
        hp, net = self.hparams, self.net
        loss = x.new_zeros(())
        if hp.w_rec:
            l_rec = L_rec(x, x_hat, w_ssim=hp.w_ssim, window=hp.ssim_window)
            loss = loss + hp.w_rec * l_rec
            logs["train/L_rec"] = l_rec.detach()
        if hp.w_enc:
            l_enc = L_enc(net.z_discriminator(z))
            loss = loss + hp.w_enc * l_enc
            logs["train/L_enc"] = l_enc.detach()
        if hp.w_adv:
            l_adv = L_adv(net.discriminator(x_hat))
            loss = loss + hp.w_adv * l_adv
            logs["train/L_adv"] = l_adv.detach()
        generated = None
        if hp.w_gen:
            generated = net.decode(torch.randn(x.shape[0], Z_DIM, device=x.device))
            l_gen = L_gen(net.discriminator(generated))
            loss = loss + hp.w_gen * l_gen
            logs["train/L_gen"] = l_gen.detach()
        logs["train/ae_loss"] = loss.detach()
        return loss, generated

    def _cycle(self, f: torch.Tensor) -> torch.Tensor:
        """E(Q(P(G(f)))) concatenated: B×99 → B×99. Q's and P's BatchNorm running statistics are not updated by
        this pass (module docstring)."""
        net = self.net
        with running_stats_frozen(net.encoder, net.decoder):
            return Disentangler.concat(net.factors(net.encode(net.decode(net.reentangle(f)))))

    def _disent_losses(self, z: torch.Tensor, batch: Mapping[str, Any],
                       logs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Table 2's terms on codes z (B×99; detached in phase disent)."""
        hp, net = self.hparams, self.net
        factors = net.factors(z)
        f = Disentangler.concat(factors)
        loss = z.new_zeros(())
        if hp.w_feat:
            labels = mad_labels(batch, self.hparams.style_attributes)
            labels = {k: (v if self.feature_weights[k] > 0 else None) for k, v in labels.items()}
            l_f, parts = L_f(factors, labels, self.feature_weights, margin=hp.triplet_margin)
            loss = loss + hp.w_feat * l_f
            logs["train/L_f"] = l_f.detach()
            logs.update({f"train/L_f_{name}": value.detach() for name, value in parts.items()})
        if hp.w_z_recon:
            l_rec_phi = L_rec_phi(z.detach(), net.reentangle(f))
            loss = loss + hp.w_z_recon * l_rec_phi
            logs["train/L_rec_phi"] = l_rec_phi.detach()
        if hp.w_cycle:
            l_cyc = L_cyc_phi(f.detach(), self._cycle(f))
            loss = loss + hp.w_cycle * l_cyc
            logs["train/L_cyc_phi"] = l_cyc.detach()
        if hp.w_aug and z.shape[0] > 1:
            k = int(torch.randint(len(self.swap_factors), ()).item())
            factor = self.swap_factors[k]
            f_b = f.roll(1, dims=0)
            l_aug = L_aug_phi(self._cycle(swap_factor(f, f_b, factor)), f.detach(), f_b.detach(), factor)
            loss = loss + hp.w_aug * l_aug
            logs["train/L_aug_phi"] = l_aug.detach()
        logs["train/disent_loss"] = loss.detach()
        return loss

    # -- training ----------------------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt_ae, opt_d, opt_disent = self.optimizers()
        net = self.net
        x = to_model_range(batch["image"].float())
        logs: dict[str, torch.Tensor] = {}

        # generator side: Q/P (and E/G); the discriminators are held fixed so no gradient reaches them
        critics = (net.discriminator, net.z_discriminator)
        for critic in critics:
            critic.requires_grad_(False)
        loss = x.new_zeros(())
        generated = None
        if self.train_ae:
            z = net.encode(x)
            x_hat = net.decode(z)
            ae_loss, generated = self._ae_losses(x, z, x_hat, logs)
            loss = loss + ae_loss
        else:
            with torch.no_grad():
                z = net.encode(x)
                x_hat = net.decode(z)
        logs["train/l1"] = (x_hat.detach() - x).abs().mean()
        if self.train_disent:
            loss = loss + self._disent_losses(z, batch, logs)
        steps = [opt for opt, on in ((opt_ae, self.train_ae), (opt_disent, self.train_disent)) if on]
        for opt in steps:
            opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            self.manual_backward(loss)
        for opt in steps:
            opt.step()
        if self.hparams.phase != "disent":
            for critic in critics:
                critic.requires_grad_(True)

        # discriminator side: D_z (prior vs Q(x)) and D (x vs P(Q(x)) [and P(z)]) on detached inputs
        if self.train_discriminators:
            hp = self.hparams
            d_loss = x.new_zeros(())
            if hp.w_enc:
                prior = torch.randn(x.shape[0], Z_DIM, device=x.device)
                l_dz = d_z_loss(net.z_discriminator(prior), net.z_discriminator(z.detach()))
                d_loss = d_loss + l_dz
                logs["train/d_z_loss"] = l_dz.detach()
            if hp.w_adv or hp.w_gen:
                gen_logits = net.discriminator(generated.detach()) if generated is not None else None
                fake_logits = net.discriminator(x_hat.detach()) if hp.w_adv else gen_logits
                l_d = d_image_loss(net.discriminator(x), fake_logits, gen_logits if hp.w_adv else None)
                d_loss = d_loss + l_d
                logs["train/d_loss"] = l_d.detach()
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()

        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=x.shape[0])

    # -- validation --------------------------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._grid = None

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        # single faces (CelebA) or the first faces of verification pairs (MS1M's .bin sets)
        images = (batch["image"] if "image" in batch else batch["image1"]).float()
        x_hat = self.net.decode(self.net.encode(to_model_range(images)))
        recon = ((x_hat + 1) / 2).clamp(0, 1)
        rmse = ((recon - images) * 255.0).pow(2).flatten(1).mean(1).sqrt()
        n = images.shape[0]
        self.log("val/rmse", rmse.mean(), on_epoch=True, batch_size=n, sync_dist=True)
        self.log("val/l1", (x_hat - to_model_range(images)).abs().mean(), on_epoch=True, batch_size=n,
                 sync_dist=True)
        if self._grid is None:
            k = min(self.hparams.n_samples, n)
            samples = ((self.net.decode(self.sample_z[:k]) + 1) / 2).clamp(0, 1)
            self._grid = torch.cat([images[:k], recon[:k], samples]).cpu()

    def on_validation_epoch_end(self) -> None:
        if self._grid is not None and not self.trainer.sanity_checking:
            self._write_grid(f"step_{self.global_step // max(self.steps_per_batch, 1):07d}")

    def _write_grid(self, name: str) -> None:
        if self._grid is not None:
            write_sample_grid(self, self._grid, self._grid.shape[0] // 3, name, "mad_samples")

    # -- optimisers --------------------------------------------------------------------------------------------------

    def configure_optimizers(self):
        hp, net = self.hparams, self.net
        betas = tuple(float(b) for b in hp.betas)
        lr_d = hp.lr_ae / 2 if hp.lr_d is None else hp.lr_d
        opt_ae = torch.optim.Adam([*net.encoder.parameters(), *net.decoder.parameters()], lr=hp.lr_ae, betas=betas)
        opt_d = torch.optim.Adam([*net.discriminator.parameters(), *net.z_discriminator.parameters()], lr=lr_d,
                                 betas=betas)
        opt_disent = torch.optim.Adam([*net.disentangler.parameters(), *net.reentangler.parameters()],
                                      lr=hp.lr_disent, betas=betas)
        return [opt_ae, opt_d, opt_disent]
