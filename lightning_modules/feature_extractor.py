"""FeatureExtractorModule: ArcFace-style face features (the paper's F_baseline: ArcFace on MS1M).

Training: aligned faces (B×3×112×112 in [0, 1]) → backbone → B×D embedding → margin head (class centres, fp32
logits) → cross-entropy. Validation: insightface's `.bin` pair protocol per set (flip-sum TTA, 10-fold accuracy),
logged as ``val/<set>/accuracy``; the mean over sets is ``val/accuracy`` (the checkpoint monitor).

The head's class count comes from the DataModule (``num_classes``) when the config leaves it null, so one config
serves the synthetic world and real MS1MV2 (85,742) / MS1MV3 (93,431).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from lrface.inference import embed_flip_sum, to_model_range
from lrface.io import atomic_write_bytes
from lrface.losses.partial_fc import PartialFC, exclude_from_ddp
from lrface.metrics.verification import verify_pairs


class FeatureExtractorModule(pl.LightningModule):
    """Args:
        backbone: the embedding network (e.g. ``lrface.nets.iresnet.iresnet50``), B×3×112×112 in [-1, 1] → B×D.
        head: a factory ``head(in_features=D, out_features=C)`` for the margin head (ArcFace, CosFace, ...).
        optimizer: a factory ``optimizer(params)`` (``_partial_: true`` in config).
        scheduler: optional factory ``scheduler(optimizer, total_steps=...)``, stepped every optimizer step.
        num_classes: identities of the training set; ``None`` → ``trainer.datamodule.num_classes``.
        embedding_size: D (read from the backbone's ``num_features`` when None).
        clip_grad_norm: max L2 norm of the backbone gradients (arcface_torch clips at 5; the head is not clipped).
        partial_fc_sample_rate: ``None`` → a full FC head (every rank holds all class centres, replicated by DDP);
            a rate in (0, 1] → Partial FC: the centres are sharded across ranks (kept out of DDP), negatives sampled
            at that rate, the softmax computed jointly (arcface_torch's PartialFC_V2; 1.0 = pure model parallel).
        export_embeddings: write each validation set's flip-sum embeddings to
            ``<run dir>/embeddings/<set>.npz`` (``emb1``, ``emb2``, ``issame``) at the end of training.
    """

    def __init__(self, backbone: nn.Module, head: Callable[..., nn.Module], optimizer: Callable[..., Any],
                 scheduler: Callable[..., Any] | None = None, num_classes: int | None = None,
                 embedding_size: int | None = None, clip_grad_norm: float | None = 5.0,
                 partial_fc_sample_rate: float | None = None, export_embeddings: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "head", "optimizer", "scheduler"])
        self.backbone = backbone
        self.head_factory = head
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.embedding_size = embedding_size or getattr(backbone, "num_features")
        self.clip_grad_norm = clip_grad_norm
        self.partial_fc_sample_rate = partial_fc_sample_rate
        self.export_embeddings = export_embeddings
        self.head: nn.Module | None = None
        self.partial_fc: PartialFC | None = None
        self._pending_classes = num_classes
        self._val_outputs: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        self._last_embeddings: dict[str, dict[str, np.ndarray]] = {}

    def _build_head(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        if self.partial_fc_sample_rate is None:
            self.head = self.head_factory(in_features=self.embedding_size, out_features=self.num_classes)
            return
        # The margin head only supplies its margin function: out_features=1 so no unused C×D matrix is allocated.
        # The process group exists by now (setup runs after it is created), so the shard matches this rank.
        margin = self.head_factory(in_features=self.embedding_size, out_features=1)
        self.partial_fc = PartialFC(margin, self.embedding_size, self.num_classes,
                                    sample_rate=self.partial_fc_sample_rate, checkpoint_layout="full")
        exclude_from_ddp(self)  # each rank updates its own shard; DDP must not average it

    def setup(self, stage: str) -> None:
        if hasattr(self.backbone, "fp16") and str(self.trainer.precision).endswith("-mixed"):
            # IResNet's fp16=False switches autocast *off* in its trunk (official semantics): under a mixed-precision
            # Trainer the trunk should follow the outer autocast instead. fc + features stay fp32 either way.
            self.backbone.fp16 = True
        if self.head is None and self.partial_fc is None:
            num_classes = self._pending_classes
            if num_classes is None:
                dm = self.trainer.datamodule if self.trainer is not None else None
                if dm is None or getattr(dm, "num_classes", None) is None:
                    raise ValueError("module.num_classes is null and the DataModule does not expose num_classes")
                num_classes = dm.num_classes
            self._build_head(num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [0, 1] → B×D embeddings (not normalised)."""
        return self.backbone(to_model_range(images))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        embeddings = self(batch["image"])
        if self.partial_fc is not None:  # the full logits never exist on one rank: no accuracy to log
            loss = self.partial_fc(embeddings, batch["identity"])
        else:
            logits = self.head(embeddings, batch["identity"])
            loss = F.cross_entropy(logits, batch["identity"], ignore_index=-1)
            with torch.no_grad():
                acc = (logits.argmax(1) == batch["identity"]).float().mean()
            self.log("train/acc", acc, prog_bar=True)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), self.clip_grad_norm)
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        e1 = embed_flip_sum(self.backbone, batch["image1"])
        e2 = embed_flip_sum(self.backbone, batch["image2"])
        self._val_outputs.setdefault(dataloader_idx, []).append(
            (batch["index"].long(), e1, e2, batch["issame"].long()))

    def on_validation_epoch_end(self) -> None:
        names = list(getattr(self.trainer.datamodule, "val_set_names", [])) if self.trainer.datamodule else []
        accuracies = []
        for idx, outputs in sorted(self._val_outputs.items()):
            index, e1, e2, same = (torch.cat(parts) for parts in zip(*outputs))
            # DistributedSampler pads the last batch with repeats: gather every rank's pairs and keep each index once.
            index, e1, e2, same = (self.all_gather(t).flatten(0, 1) if self.trainer.world_size > 1 else t
                                   for t in (index, e1, e2, same))
            order = np.unique(index.cpu().numpy(), return_index=True)[1]
            e1, e2, same = (t[order].cpu().numpy() for t in (e1, e2, same))
            # insightface's 10 folds; a truncated validation (fast_dev_run, limit_val_batches) may hold fewer pairs
            n_folds = min(10, len(same))
            if n_folds < 10:
                rank_zero_warn(f"val set {idx}: only {len(same)} pairs, verification uses {n_folds} folds, not 10")
            if n_folds < 2:
                continue
            result = verify_pairs(e1, e2, same.astype(bool), n_folds=n_folds)
            name = names[idx] if idx < len(names) else str(idx)
            self._last_embeddings[name] = {"emb1": e1, "emb2": e2, "issame": same.astype(bool)}
            # every rank gathered the same pairs and computed the same numbers, so the sync is a no-op mean; it keeps
            # every rank's ModelCheckpoint seeing the monitored key
            self.log(f"val/{name}/accuracy", result["accuracy"], add_dataloader_idx=False, sync_dist=True)
            self.log(f"val/{name}/accuracy_std", result["accuracy_std"], add_dataloader_idx=False, sync_dist=True)
            accuracies.append(result["accuracy"])
        if accuracies:
            self.log("val/accuracy", float(np.mean(accuracies)), sync_dist=True)
        self._val_outputs = {}

    def on_fit_end(self) -> None:
        if not (self.export_embeddings and self.trainer.is_global_zero and self._last_embeddings):
            return
        out = Path(self.trainer.default_root_dir) / "embeddings"
        out.mkdir(parents=True, exist_ok=True)
        for name, arrays in self._last_embeddings.items():
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(out / f"{name}.npz", buf.getvalue())

    def configure_optimizers(self):
        head = self.partial_fc if self.partial_fc is not None else self.head
        # the class centres last, as arcface_torch orders its groups
        params = [{"params": self.backbone.parameters()}, {"params": head.parameters()}]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
