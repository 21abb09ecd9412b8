"""MRGANModule: RAN's Multi-Resolution GAN (seed 002: supplementary §1, §2, §4 Alg. 1, §5 Fig. 7–9; methods.md §2).

MR-GAN turns aligned HR faces x into realistic LR faces that keep their identity, learning "realistic" from
unpaired LR faces y (QMUL-SurvFace's training set). Per training batch (Alg. 1, update b = 1, 2, … of the epoch):

1. G step: L_G = w_adv · (L_adv(D_global) + w_local · Σ_{eyes, nose, mouth} L_adv(D_region))
   + w_id · (1 − cos(F(G(x)), F(x))) + w_att · L_att(A) [+ w_pix · |G(x) − ↑↓x|₁ when b mod 5 = 0];
2. D step: the global PatchGAN and the three local discriminators (patches 20×72, 32×20, 24×52 at a 112-high
   crop, cut at the aligned template's eyes / nose / mouth) separate y from G(x).

The losses' forms are in :mod:`lrface.losses.mrgan`, the networks in :mod:`lrface.nets.mrgan`. F is a frozen
recognition network (our ``FeatureExtractorModule`` checkpoint or an insightface ``backbone.pth``), held outside the
module's state. Table 1's ablation rows are configs: ``attention_weight: 0`` (w/o attention loss),
``generator.spatial_attention: false``, ``generator.local_generators: false``, ``discriminator.local_discriminators:
false``.

Batches: ``{"hr": {"image", ...}, "lr": {"image", ...}}`` (``datamodules.multitask.MultiTaskDataModule`` with
members ``hr`` = MS1M / CelebA at 112 and ``lr`` = QMUL-SurvFace resized to 112), images in [0, 1].

Manual optimisation, one Adam per network (G: global + local generators + attention; D: global + local
discriminators). Under DDP both live in one wrapped module and each backward reaches one of them: use
``strategy: ddp_find_unused_parameters_true`` (``experiments/trainer/gan_ddp.yaml``), as for StyleGAN2.

Validation (loaders of the ``hr`` member's pair sets and the ``lr`` member's, named by ``val_set_names``): F's mean
cosine between x and G(x) (``val/identity_cos``) and between x and the plain down-sampled face
(``val/identity_cos_down``); the Fréchet distance, in F's feature space (our own network: no Inception weights
offline), between G(x) and real LR faces (``val/fd_identity``, the checkpoint monitor) and between plain
down-sampling and real LR faces (``val/fd_identity_down``); a Fig. 4-style grid (input | down-sampled | MR-GAN |
attention) in ``samples/``. At the end of fit the generator is written to ``mrgan_generator.pt`` for the feature
adaption stage (:func:`lrface.weights.load_mrgan_generator`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from lrface.inference import to_model_range
from lrface.io import atomic_write_bytes
from lrface.losses.mrgan import (attention_activation_loss, d_adversarial_loss, g_adversarial_loss, identity_loss,
                                 pixel_loss)
from lrface.metrics.frechet import frechet_distance
from lrface.nets.mrgan import region_mask

from .frozen_nets import FrozenNets
from .sample_grids import write_sample_grid

__all__ = ["MRGANModule"]


class MRGANModule(FrozenNets, pl.LightningModule):
    """Args:
        generator: an :class:`lrface.nets.mrgan.MRGANGenerator`.
        discriminator: an :class:`lrface.nets.mrgan.MRGANDiscriminator` of the same image size.
        identity: path of the frozen recognition network F (None: no identity term; ``identity_weight`` must be 0
            and the validation's identity metrics are skipped).
        gan_loss: ``"lsgan"`` or ``"vanilla"``.
        adversarial_weight, local_weight: w_adv and w_local (the local discriminators' share).
        identity_weight, pixel_weight, attention_weight: w_id, w_pix, w_att.
        pixel_every: Alg. 1's 5 (the pixel loss joins the G update b when b mod pixel_every = 0).
        attention_outside_weight, attention_tv_weight: the attention loss's other terms (:mod:`lrface.losses.mrgan`).
        lr, betas: Adam for both networks (pix2pix's 2e-4, (0.5, 0.999); the paper does not give them).
        real_lr_val: the validation set name that holds real LR faces (the multi-task ``lr`` member, a single loader
            named after the member); the other sets are HR faces.
        n_samples: faces in the sample grid.
        export: file name of the exported generator in the run directory.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, identity: str | None = None,
                 gan_loss: str = "lsgan", adversarial_weight: float = 1.0, local_weight: float = 1.0,
                 identity_weight: float = 5.0, pixel_weight: float = 10.0, attention_weight: float = 1.0,
                 pixel_every: int = 5, attention_outside_weight: float = 0.0, attention_tv_weight: float = 0.1,
                 lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999), real_lr_val: str = "lr",
                 n_samples: int = 8, export: str = "mrgan_generator.pt"):
        super().__init__()
        self.save_hyperparameters(ignore=["generator", "discriminator"])
        self.automatic_optimization = False
        self.generator, self.discriminator = generator, discriminator
        if identity is None and identity_weight:
            raise ValueError("identity_weight > 0 needs the recognition network F: set module.identity to a "
                             "checkpoint (e.g. a FeatureExtractorModule run's checkpoints/last.ckpt)")
        if pixel_every < 1:
            raise ValueError(f"pixel_every must be ≥ 1; got {pixel_every}")
        self.identity_source = identity
        self._nets: dict[str, nn.Module] = {}
        self.register_buffer("region_mask", region_mask(generator.image_size, generator.boxes), persistent=False)
        self._val: dict[str, list[torch.Tensor]] = {}
        self._grid: torch.Tensor | None = None

    # -- helpers -------------------------------------------------------------------------------------------------

    @property
    def identity_net(self) -> nn.Module | None:
        """F behind :class:`lrface.weights.FaceFeatures` (images in [0, 1], resized to F's input size), frozen, eval
        mode; loaded on first use and kept out of the checkpoint."""
        if self.identity_source is None:
            return None
        if "F" not in self._nets:
            from lrface.weights import FaceFeatures, load_frozen_recognition

            net = load_frozen_recognition(self.identity_source)[0]
            self._nets["F"] = FaceFeatures(net, net.input_size).eval().to(self.device)
        return self._nets["F"]

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """F on B×3×H×W images in [-1, 1] → B×D (fp32)."""
        return self.identity_net((images + 1) / 2).float()

    def _adversarial(self, logits: dict[str, torch.Tensor],
                     fake_logits: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Σ over the discriminators: G's loss (``fake_logits`` None) or D's; local terms weighted by w_local."""
        kind, total, parts = self.hparams.gan_loss, 0.0, {}
        for name, value in logits.items():
            loss = (g_adversarial_loss(value, kind) if fake_logits is None
                    else d_adversarial_loss(value, fake_logits[name], kind))
            parts[name] = loss.detach()
            total = total + (loss if name == "global" else self.hparams.local_weight * loss)
        return total, parts

    def generate(self, hr: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """HR faces B×3×H×W in [0, 1] → the generator's dict (images in [-1, 1])."""
        return self.generator(to_model_range(hr), index)

    # -- training (Alg. 1) -----------------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        g_opt, d_opt = self.optimizers()
        hp = self.hparams
        x = to_model_range(batch["hr"]["image"].float())
        y = to_model_range(batch["lr"]["image"].float())
        b = batch_idx + 1  # Alg. 1 counts updates from 1
        with_pixel = b % hp.pixel_every == 0

        # G step: adversarial + identity + attention [+ pixel when b mod 5 == 0]; D frozen
        self.discriminator.requires_grad_(False)
        out = self.generator(x)
        fake = out["image"]
        g_adv, _ = self._adversarial(self.discriminator(fake))
        g_loss = hp.adversarial_weight * g_adv
        logs = {"train/g_adv": g_adv.detach()}
        if hp.identity_weight:
            with torch.no_grad():
                real_features = self._features(x)
            l_id = identity_loss(self._features(fake), real_features)
            g_loss = g_loss + hp.identity_weight * l_id
            logs["train/L_id"] = l_id.detach()
        if out.get("attention") is not None:
            l_att = attention_activation_loss(out["attention"], self.region_mask, hp.attention_outside_weight,
                                              hp.attention_tv_weight)
            logs["train/L_att"] = l_att.detach()
            if hp.attention_weight:
                g_loss = g_loss + hp.attention_weight * l_att
        if with_pixel:
            l_pix = pixel_loss(fake, out["base"])
            g_loss = g_loss + hp.pixel_weight * l_pix
            logs["train/L_pix"] = l_pix.detach()
        g_opt.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        g_opt.step()
        self.discriminator.requires_grad_(True)

        # D step: real LR faces vs G(x); G frozen (its output is detached)
        self.generator.requires_grad_(False)
        d_loss, parts = self._adversarial(self.discriminator(y),
                                          fake_logits=self.discriminator(fake.detach()))
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        d_opt.step()
        self.generator.requires_grad_(True)

        logs.update({"train/g_loss": g_loss.detach(), "train/d_loss": d_loss.detach()})
        logs.update({f"train/d_{name}": value for name, value in parts.items()})
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=True, batch_size=x.shape[0])

    # -- validation ------------------------------------------------------------------------------------------------

    def _val_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None)
        names = getattr(dm, "val_set_names", None)
        return list(names) if names is not None else []

    def on_validation_epoch_start(self) -> None:
        self._val = {"fake": [], "down": [], "real_lr": [], "cos": [], "cos_down": []}
        self._grid = None

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        names = self._val_names()
        name = names[dataloader_idx] if dataloader_idx < len(names) else str(dataloader_idx)
        images = batch["image1"] if "image1" in batch else batch["image"]
        images = images.float()
        if name == self.hparams.real_lr_val:
            if self.identity_net is not None:
                self._val["real_lr"].append(self._features(to_model_range(images)).cpu())
            return
        # a fixed resolution per face and fixed local noise, so epochs compare the same generations
        index = torch.arange(images.shape[0], device=images.device) % len(self.generator.lr_sizes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_idx)
            out = self.generate(images, index)
        if self._grid is None:
            n = min(self.hparams.n_samples, images.shape[0])
            columns = [images[:n], (out["base"][:n] + 1) / 2, (out["image"][:n] + 1) / 2]
            if out.get("attention") is not None:
                columns.append(out["attention"][:n].expand(-1, 3, -1, -1))
            self._grid = torch.stack(columns, 1).flatten(0, 1).clamp(0, 1).cpu()
        if self.identity_net is not None:
            hr = self._features(to_model_range(images))
            fake, down = self._features(out["image"]), self._features(out["base"])
            self._val["fake"].append(fake.cpu())
            self._val["down"].append(down.cpu())
            self._val["cos"].append(F.cosine_similarity(fake, hr).cpu())
            self._val["cos_down"].append(F.cosine_similarity(down, hr).cpu())

    def _gather(self, key: str) -> torch.Tensor | None:
        parts = self._val.get(key) or []
        if not parts:
            return None
        local = torch.cat(parts).to(self.device)
        if self.trainer.world_size > 1:
            local = self.all_gather(local).flatten(0, 1)
        return local.cpu()

    def on_validation_epoch_end(self) -> None:
        cos, cos_down = self._gather("cos"), self._gather("cos_down")
        if cos is not None:
            self.log("val/identity_cos", cos.mean().item(), sync_dist=False)
            self.log("val/identity_cos_down", cos_down.mean().item(), sync_dist=False)
        fake, down, real = self._gather("fake"), self._gather("down"), self._gather("real_lr")
        if fake is not None and real is not None and min(fake.shape[0], real.shape[0]) >= 2:
            self.log("val/fd_identity", frechet_distance(fake, real), sync_dist=False)
            self.log("val/fd_identity_down", frechet_distance(down, real), sync_dist=False)
        if self._grid is not None and not self.trainer.sanity_checking:
            self._write_grid(f"step_{self.global_step // 2:07d}")

    def _write_grid(self, name: str) -> None:
        if self._grid is not None:
            ncol = self._grid.shape[0] // max(min(self.hparams.n_samples, self._grid.shape[0]), 1)
            write_sample_grid(self, self._grid, ncol, name, "mrgan_samples")

    # -- export ----------------------------------------------------------------------------------------------------

    def export_generator(self, path: str | Path) -> Path:
        """``{"config": MRGANGenerator kwargs, "state_dict"}`` for :func:`lrface.weights.load_mrgan_generator`."""
        import io

        config = getattr(self.generator, "config", None)
        if not isinstance(config, dict):
            raise ValueError(f"{type(self.generator).__name__} has no `config` dict to export")
        state = {k: v.detach().cpu().clone() for k, v in self.generator.state_dict().items()}
        buf = io.BytesIO()
        torch.save({"config": dict(config), "state_dict": state}, buf)
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero and not self.trainer.interrupted:
            self.export_generator(Path(self.trainer.default_root_dir) / self.hparams.export)

    def configure_optimizers(self):
        hp = self.hparams
        betas = tuple(float(b) for b in hp.betas)
        g_opt = torch.optim.Adam(self.generator.parameters(), lr=hp.lr, betas=betas)
        d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr, betas=betas)
        return [g_opt, d_opt]

