"""JudgeModule: trains the independent judges of the seed paper's Tables 2 and 3 (§4.2–4.3).

The judges score upscaled faces — race re-identification with "an off the shelf race classifier", attribute
re-identification with "an external attribute detection algorithm" — so they are trained apart from the feature
extractor F and share none of its weights (see :mod:`lrface.nets.judge`).

- ``task="race"``: FairFace batches (``image``, ``race``, ``gender``, ``age``) → the 18 logits of FairFace's official
  model → CE(race, 0:7) + CE(gender, 7:9) + CE(age, 9:18). Validation logs ``val/race_accuracy`` (the monitor),
  ``val/gender_accuracy``, ``val/age_accuracy``.
- ``task="attributes"``: CelebA batches (``image``, ``attributes`` 40 floats; ``val_pairs: 0``) → 40 logits →
  BCE-with-logits. Validation logs ``val/attribute_accuracy`` (mean over the 40), ``val/acc_<Name>`` for Table 3's
  five attributes and ``val/paper5_accuracy`` (their mean, the monitor).

Checkpoint keys are ``net.*`` (the :class:`~lrface.nets.judge.FaceJudge`); every hyper-parameter is a plain value, so
``lrface.judges.load_judge`` rebuilds the judge from the checkpoint alone with ``weights_only=True``.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lrface.labels import CELEBA_ATTRIBUTES
from lrface.nets.judge import AGE_SLICE, GENDER_SLICE, RACE_SLICE, FaceJudge
from lrface.optim import cosine_warmup

#: Table 3's attributes (seed paper §4.3).
PAPER_ATTRIBUTES = ("Arched_Eyebrows", "Male", "Narrow_Eyes", "Smiling", "Wearing_Lipstick")
PAPER_ATTRIBUTE_INDICES = tuple(CELEBA_ATTRIBUTES.index(name) for name in PAPER_ATTRIBUTES)
DEFAULT_OPTIMIZER = {"name": "adamw", "lr": 2e-3, "weight_decay": 0.05}


class JudgeModule(pl.LightningModule):
    """Args:
        task: ``"race"`` (FairFace) or ``"attributes"`` (CelebA).
        arch: timm architecture of the judge (``resnet34`` = FairFace's official judge).
        input_size: square side the judge sees (inputs are resized).
        timm_kwargs: extra ``timm.create_model`` kwargs (plain values).
        optimizer: ``{"name": "sgd" | "adamw", "lr", "weight_decay", "momentum" (sgd only), "nesterov" (sgd)}``.
        scheduler: ``"cosine"`` (half-cosine to 0 over the run, per step, after ``warmup_steps``) or ``"none"``.
        warmup_steps: linear warm-up steps of the cosine schedule.
        label_smoothing: of the race / gender / age cross-entropies.
    """

    def __init__(self, task: str = "race", arch: str = "resnet34", input_size: int = 224,
                 timm_kwargs: dict[str, Any] | None = None, optimizer: dict[str, Any] | None = None,
                 scheduler: str = "cosine", warmup_steps: int = 0, label_smoothing: float = 0.0):
        super().__init__()
        optimizer = {**DEFAULT_OPTIMIZER, **dict(optimizer or {})}
        if optimizer["name"] not in ("sgd", "adamw"):
            raise ValueError(f"optimizer.name must be 'sgd' or 'adamw', got {optimizer['name']!r}")
        if scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {scheduler!r}")
        timm_kwargs = dict(timm_kwargs or {})
        self.save_hyperparameters({"task": task, "arch": arch, "input_size": int(input_size),
                                   "timm_kwargs": timm_kwargs, "optimizer": optimizer, "scheduler": scheduler,
                                   "warmup_steps": int(warmup_steps), "label_smoothing": float(label_smoothing)})
        self.net = FaceJudge(arch, task, input_size=input_size, **timm_kwargs)
        self.task = task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W RGB in [0, 1] → B×num_outputs logits."""
        return self.net(images)

    def _race_terms(self, logits: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        ls = self.hparams.label_smoothing
        return {name: F.cross_entropy(logits[:, part], batch[name], label_smoothing=ls)
                for name, part in (("race", RACE_SLICE), ("gender", GENDER_SLICE), ("age", AGE_SLICE))}

    def training_step(self, batch, batch_idx):
        if batch is None:  # every item of the batch was a skipped corrupt image (counted by the dataset)
            return None
        logits = self(batch["image"])
        size = logits.shape[0]
        if self.task == "race":
            terms = self._race_terms(logits, batch)
            loss = sum(terms.values())
            for name, value in terms.items():
                self.log(f"train/{name}_loss", value, batch_size=size)
            acc = (logits[:, RACE_SLICE].argmax(1) == batch["race"]).float().mean()
            self.log("train/race_accuracy", acc, batch_size=size)
        else:
            target = batch["attributes"].float()
            loss = F.binary_cross_entropy_with_logits(logits, target)
            self.log("train/attribute_accuracy", ((logits > 0).float() == target).float().mean(), batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch, batch_idx):
        if batch is None:
            return
        logits = self(batch["image"])
        size = logits.shape[0]
        log = dict(on_epoch=True, batch_size=size, sync_dist=True)
        if self.task == "race":
            terms = self._race_terms(logits, batch)
            self.log("val/loss", sum(terms.values()), **log)
            for name, part in (("race", RACE_SLICE), ("gender", GENDER_SLICE), ("age", AGE_SLICE)):
                acc = (logits[:, part].argmax(1) == batch[name]).float().mean()
                self.log(f"val/{name}_accuracy", acc, prog_bar=name == "race", **log)
            return
        target = batch["attributes"].float()
        self.log("val/loss", F.binary_cross_entropy_with_logits(logits, target), **log)
        correct = ((logits > 0).float() == target).float().mean(0)  # 40 per-attribute accuracies
        self.log("val/attribute_accuracy", correct.mean(), **log)
        for name, index in zip(PAPER_ATTRIBUTES, PAPER_ATTRIBUTE_INDICES):
            self.log(f"val/acc_{name}", correct[index], **log)
        self.log("val/paper5_accuracy", correct[list(PAPER_ATTRIBUTE_INDICES)].mean(), prog_bar=True, **log)

    def configure_optimizers(self):
        cfg = dict(self.hparams.optimizer)
        name, lr, wd = cfg.pop("name"), float(cfg.pop("lr")), float(cfg.pop("weight_decay", 0.0))
        # no weight decay on BatchNorm / biases (1-D tensors), as timm's recipes
        decay = [p for p in self.net.parameters() if p.ndim > 1]
        no_decay = [p for p in self.net.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        if name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=float(cfg.pop("momentum", 0.9)),
                                        nesterov=bool(cfg.pop("nesterov", False)))
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr, **{k: cfg.pop(k) for k in ("betas", "eps") if k in cfg})
        if cfg:
            raise ValueError(f"unknown {name} optimizer options {sorted(cfg)}")
        if self.hparams.scheduler == "none":
            return optimizer
        scheduler = cosine_warmup(optimizer, total_steps=self.trainer.estimated_stepping_batches,
                                  warmup_steps=self.hparams.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
