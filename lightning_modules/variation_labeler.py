"""VariationLabelerModule: trains θ_A, URL's labeller of additional variations (seed 001, supp. B–C).

θ_A (:class:`~lrface.nets.variation_cnn.VariationCNN`, four 3×3 conv layers of 64 / 128 / 256 / 512 kernels) learns
binary variations from CelebA attributes with BCE-with-logits: ``gender`` (Male), ``age`` (not Young = old),
``smiling`` (Smiling) — :data:`lrface.variation_labeler.VARIATION_ATTRIBUTES`. Batches: CelebA items ``image``
(RGB in [0, 1]; ArcFace-aligned, the framing of the MS1M images it will label) and ``attributes`` (40 floats).

Logged: ``train/loss``, ``train/accuracy``; ``val/loss``, ``val/acc_<name>`` per variation and ``val/accuracy``
(their mean, the checkpoint monitor). Checkpoint keys are ``labeler.net.*``; every hyper-parameter is a plain value
so :func:`lrface.variation_labeler.load_variation_labeler` rebuilds θ_A from the file with ``weights_only=True``.
"""
from __future__ import annotations

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lrface.nets.variation_cnn import VariationCNN
from lrface.optim import cosine_warmup
from lrface.variation_labeler import VariationLabeler, variation_targets


class VariationLabelerModule(pl.LightningModule):
    """Args:
        variations: the additional variations θ_A predicts, in logit order (subset of gender, age, smiling).
        widths: kernels of the four conv layers (paper: 64, 128, 256, 512).
        input_size: side θ_A sees (inputs of another size are resized inside the net).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (conv / linear weights only; none on BatchNorm and biases).
        scheduler: ``"cosine"`` (half-cosine to 0 over the run, per step, after ``warmup_steps``) or ``"none"``.
        warmup_steps: linear warm-up steps of the cosine schedule.
    """

    def __init__(self, variations: Sequence[str] = ("gender", "age", "smiling"),
                 widths: Sequence[int] = (64, 128, 256, 512), input_size: int = 112, lr: float = 2e-3,
                 weight_decay: float = 5e-4, scheduler: str = "cosine", warmup_steps: int = 0):
        super().__init__()
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        variations = [str(v) for v in variations]
        widths = [int(w) for w in widths]
        # plain lists / numbers only: the checkpoint must load with weights_only=True
        self.save_hyperparameters({"variations": variations, "widths": widths, "input_size": int(input_size),
                                   "lr": float(lr), "weight_decay": float(weight_decay), "scheduler": scheduler,
                                   "warmup_steps": int(warmup_steps)})
        self.labeler = VariationLabeler(VariationCNN(len(variations), widths, input_size), variations)
        self.names = self.labeler.names

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W RGB in [0, 1] → B×M logits."""
        return self.labeler(images)

    def _step(self, batch):
        logits = self(batch["image"])
        target = variation_targets(batch["attributes"], self.names)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        correct = ((logits > 0).float() == target).float().mean(0)  # M per-variation accuracies
        return loss, correct, logits.shape[0]

    def training_step(self, batch, batch_idx):
        if batch is None:  # every item was a skipped corrupt image (counted by the dataset)
            return None
        loss, correct, n = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/accuracy", correct.mean(), batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx):
        if batch is None:
            return
        loss, correct, n = self._step(batch)
        log = {"on_epoch": True, "batch_size": n, "sync_dist": True}
        self.log("val/loss", loss, **log)
        for name, acc in zip(self.names, correct):
            self.log(f"val/acc_{name}", acc, **log)
        self.log("val/accuracy", correct.mean(), prog_bar=True, **log)

    def configure_optimizers(self):
        params = list(self.labeler.parameters())
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": self.hparams.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr)
        if self.hparams.scheduler == "none":
            return optimizer
        scheduler = cosine_warmup(optimizer, total_steps=self.trainer.estimated_stepping_batches,
                                  warmup_steps=self.hparams.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
