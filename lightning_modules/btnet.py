"""BTNetModule: trains BTNet's resolution branches on a trained trunk (seed 004 §3.3; methods.md §1.3–1.4).

Stage 1 — the trunk TNet — is a plain recognition run (``FeatureExtractorModule`` with CurricularFace and
``datamodules.multi_resolution.MultiResolutionAugment``: φ_mr's input); this module is stage 2. Per step, the 112 px
batch x is resized on the device to every branch resolution r, and branch r is trained with

    L_r = L_influence + λ_branch · L_branch                                                         (Eq. 3)
    L_influence = L_cls(φ_bt(x_r), κ*)                                                               (Eq. 1)
    L_branch = w_feat · MSE(z_r, z_s) + w_emb · MSE(φ_bt(x_r), T(x))                                 (Eq. 2, code)

* κ*: TNet's classifier (CurricularFace centres), loaded and **frozen** (backward-compatible training, BCT): the
  branches must produce embeddings TNet's classifier already separates, so they stay compatible with TNet's
  112 px embeddings. ``fix_classifier=False`` is Table 4's "w/o BCT" row.
* z_r: branch r's coupling map; z_s: TNet's map at the same block on the 112 px image (the teacher). Eq. 2 is the MSE
  of the maps; the authors' code adds the MSE of the embeddings (``feat_loss_weight = embed_loss_weight = 1``,
  ``kd_loss_weight = λ_branch = 0.5``): ``embedding_weight=0`` gives the paper's Eq. 2 alone. ``branch_weight=0`` is
  Table 4's "w/o distillation".
* The shared trunk is frozen except its resolution-specific BatchNorms (:class:`lrface.nets.btnet.BTNet`, ``share``;
  ``share="copy", fix_trunk=False`` is "w/o fix-trunk"). ``pretrained=False`` re-initialises the branch bodies
  instead of copying TNet ("w/o pretraining").
* CurricularFace's t: one EMA per branch, each starting at 0, as each of the authors' per-resolution runs starts its
  own loss module; the head's ``t`` buffer is swapped in and out around each branch's logits.

All branches train in one run, one loss term each (their parameters are disjoint, so the sum trains each on its own
objective; TNet's forward is shared). The authors train one run per branch (``resolutions=[7]`` does that), with
different lengths on SurvFace (7 px: 25 epochs, 14 / 28: 10): ``branch_epochs`` gives each branch its own number of
epochs — its term leaves the loss afterwards — and its own learning-rate schedule over those epochs (one parameter
group per branch), which reaches 0 when they end, so nothing moves it afterwards (momentum and weight decay
included). Under DDP a finished branch is an unused parameter set: use ``strategy=ddp_find_unused_parameters_true``.

Validation: on each ``.bin`` set, the 10-fold accuracy of 112&r (image 1 through TNet at 112, image 2 through branch r)
and r&r pairs, ``val/<set>/112&<r>/accuracy``, ``val/<set>/<r>&<r>/accuracy``; ``val/accuracy`` is their mean (the
checkpoint monitor). The full protocols run at the end (``callbacks.multi_resolution_evaluation``).

Logged per branch: ``train/<r>/L_influence``, ``train/<r>/L_feat``, ``train/<r>/L_emb``, ``train/<r>/acc``; and
``train/loss``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from datamodules.transforms import resize_tensor
from lrface.inference import embed_flip_sum, to_model_range
from lrface.metrics.verification import verify_pairs
from lrface.nets.btnet import BTNet
from lrface.nets.iresnet import init_weights
from lrface.weights import load_recognition_trunk

from .feature_extractor import gather_unique


def _reinit(module: nn.Module) -> None:
    """IResNet's initialisation (and fresh BN statistics / PReLU slopes), for "w/o pretraining"."""
    init_weights(module)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
        elif isinstance(m, nn.PReLU):
            nn.init.constant_(m.weight, 0.25)


class BTNetModule(pl.LightningModule):
    """Args:
        trunk: TNet: our FeatureExtractorModule ``.ckpt`` (backbone + CurricularFace ``head.weight``) or an insightface
            / BTNet ``backbone.pth`` (then ``classifier`` is required for BCT).
        head: factory ``head(in_features=D, out_features=C)``: the influence loss's margin head (CurricularFace
            m 0.5, s 64; the paper's Table 5 finds ArcFace / CosFace equivalent). Its centres are κ*.
        optimizer, scheduler: factories as in FeatureExtractorModule (SGD 0.02, poly power 2).
        classifier: κ* from other files (a tensor / ``{"weight"}`` file, or the authors' ``softmax_fc_gpu_{rank}.pt``
            shards in rank order); overrides the checkpoint's head.
        resolutions: branch resolutions (7, 14, 28).
        share: ``"bn"`` (paper: only branch + BN parameters stored) or ``"copy"`` (authors' code).
        fix_trunk: freeze the shared tail's convolutions (``copy`` only can train them).
        fix_classifier: BCT: κ* frozen.
        pretrained: start the branches from TNet (False: IResNet's random init).
        branch_weight: λ_branch (0.5).
        feature_weight, embedding_weight: weights of the map MSE and the embedding MSE inside L_branch (1, 1).
        clip_grad_norm: max L2 norm of the branch gradients (5, as arcface_torch).
        branch_epochs: {r: epochs} for branches that train shorter than ``trainer.max_epochs`` (default: all of it).
    """

    def __init__(self, trunk: str, head: Callable[..., nn.Module], optimizer: Callable[..., Any],
                 scheduler: Callable[..., Any] | None = None, classifier: str | Sequence[str] | None = None,
                 resolutions: Sequence[int] = (7, 14, 28), share: str = "bn", fix_trunk: bool = True,
                 fix_classifier: bool = True, pretrained: bool = True, branch_weight: float = 0.5,
                 feature_weight: float = 1.0, embedding_weight: float = 1.0, clip_grad_norm: float | None = 5.0,
                 branch_epochs: dict[int, int] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["head", "optimizer", "scheduler"])
        if min(branch_weight, feature_weight, embedding_weight) < 0:
            raise ValueError(f"loss weights must be ≥ 0; got branch {branch_weight}, feature {feature_weight}, "
                             f"embedding {embedding_weight}")
        state, kappa = load_recognition_trunk(trunk, classifier)
        if kappa is None:
            raise ValueError(f"{trunk}: no classifier κ* for the influence loss (BCT needs TNet's class centres): "
                             "train TNet with a full head (partial_fc_sample_rate null or a gathered Partial FC) or "
                             "pass module.classifier=<softmax_fc_gpu_*.pt shards>")
        self.btnet = BTNet.from_trunk(state, resolutions, share=share, fix_trunk=fix_trunk)
        if not pretrained:
            for branch in self.btnet.branches.values():
                for name, child in branch.named_children():
                    if name != "specific":
                        _reinit(child)
        self.num_classes = int(kappa.shape[0])
        self.head = head(in_features=self.btnet.num_features, out_features=self.num_classes)
        if tuple(self.head.weight.shape) != tuple(kappa.shape):
            raise ValueError(f"κ* from {classifier or trunk} is {tuple(kappa.shape)}; the head is "
                             f"{tuple(self.head.weight.shape)} (num_features {self.btnet.num_features})")
        with torch.no_grad():
            self.head.weight.copy_(kappa)
        self.head.weight.requires_grad_(not fix_classifier)
        self.has_t = isinstance(getattr(self.head, "t", None), torch.Tensor)
        if self.has_t:
            self.register_buffer("branch_t", torch.zeros(len(self.btnet.resolutions)))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.branch_weight, self.feature_weight = float(branch_weight), float(feature_weight)
        self.embedding_weight = float(embedding_weight)
        self.clip_grad_norm = clip_grad_norm
        self.branch_epochs = {int(r): int(e) for r, e in (branch_epochs or {}).items()}
        unknown = set(self.branch_epochs) - set(self.btnet.resolutions)
        if unknown:
            raise ValueError(f"branch_epochs names {sorted(unknown)}, not among the branches {self.btnet.resolutions}")
        self._val: dict[int, list[tuple[torch.Tensor, ...]]] = {}

    @property
    def resolutions(self) -> tuple[int, ...]:
        return self.btnet.resolutions

    def setup(self, stage: str) -> None:
        if "-mixed" in str(self.trainer.precision):
            self.btnet.trunk.fp16 = True  # follow the outer autocast (IResNet's fp16=False switches it off)
        dm = self.trainer.datamodule if self._trainer is not None else None
        classes = getattr(dm, "num_classes", None)
        if stage == "fit" and classes is not None and int(classes) != self.num_classes:
            raise ValueError(f"TNet's classifier κ* has {self.num_classes} classes; the training data has {classes}: "
                             "BCT trains the branches on TNet's own identities")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×s×s in [0, 1], s a branch resolution or 112 → B×D."""
        return self.btnet(to_model_range(images))

    def _logits(self, i: int, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.has_t:
            return self.head(embeddings, labels)
        self.head.t.copy_(self.branch_t[i : i + 1])
        logits = self.head(embeddings, labels)
        self.branch_t[i : i + 1].copy_(self.head.t)
        return logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"].float(), batch["identity"]
        with torch.no_grad():
            teacher, maps = self.btnet.trunk_with_coupling(to_model_range(images))
        loss = images.new_zeros(())
        for i, r in enumerate(self.resolutions):
            if self.current_epoch >= self.branch_epochs.get(r, self.current_epoch + 1):
                continue  # this branch is done: no term, no gradient, SGD leaves it alone
            with torch.autocast(images.device.type, enabled=False):  # kornia resizes in fp32
                x_r = resize_tensor(images, (r, r))
            emb, z = self.btnet.forward_branch(to_model_range(x_r), r, return_coupling=True)
            logits = self._logits(i, emb, labels)
            influence = F.cross_entropy(logits, labels, ignore_index=-1)
            feat = F.mse_loss(z.float(), maps[r].float())
            embed = F.mse_loss(emb, teacher.float())
            loss = loss + influence + self.branch_weight * (self.feature_weight * feat + self.embedding_weight * embed)
            with torch.no_grad():
                acc = (logits.argmax(1) == labels).float().mean()
            self.log_dict({f"train/{r}/L_influence": influence, f"train/{r}/L_feat": feat,
                           f"train/{r}/L_emb": embed, f"train/{r}/acc": acc})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.clip_grad_norm:
            for r in self.resolutions:  # each branch is its own network (the authors clip per run)
                torch.nn.utils.clip_grad_norm_(self.btnet.branch_parameters(r), self.clip_grad_norm)
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        params = [{"params": self.btnet.branch_parameters(r)} for r in self.resolutions]
        if self.head.weight.requires_grad:
            params.append({"params": [self.head.weight]})
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        # one schedule per group: a branch with fewer epochs decays over its own steps (the factory's own LambdaLR
        # is only used for its factor function)
        factors = []
        for group in range(len(params)):
            r = self.resolutions[group] if group < len(self.resolutions) else None
            steps = total * min(self.branch_epochs.get(r, epochs), epochs) // epochs if r is not None else total
            factors.append(self.scheduler_factory(optimizer, total_steps=max(int(steps), 1)).lr_lambdas[0])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation: cross- and same-resolution pairs ----------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "image1" not in batch:
            return
        first = [embed_flip_sum(self.btnet, batch["image1"].float())]
        second = [embed_flip_sum(self.btnet, batch["image2"].float())]
        for r in self.resolutions:
            side = (r, r)
            first.append(embed_flip_sum(self.btnet, resize_tensor(batch["image1"].float(), side)))
            second.append(embed_flip_sum(self.btnet, resize_tensor(batch["image2"].float(), side)))
        self._val.setdefault(dataloader_idx, []).append(
            (batch["index"].long(), torch.stack(first, 1), torch.stack(second, 1), batch["issame"].long()))

    def on_validation_epoch_end(self) -> None:
        names = list(getattr(self.trainer.datamodule, "val_set_names", [])) if self.trainer.datamodule else []
        accuracies = []
        for idx, outputs in sorted(self._val.items()):
            e1, e2, same = gather_unique(self, outputs)
            n_folds = min(10, len(same))
            if n_folds < 2:
                rank_zero_warn(f"val set {idx}: {len(same)} pairs, too few for verification")
                continue
            name = names[idx] if idx < len(names) else str(idx)
            for j, r in enumerate(self.resolutions, start=1):
                # 112&r: image 1 at full resolution through TNet, image 2 through branch r (BTNet's compatibility)
                for key, a, b in ((f"112&{r}", e1[:, 0], e2[:, j]), (f"{r}&{r}", e1[:, j], e2[:, j])):
                    acc = verify_pairs(a, b, same.astype(bool), n_folds=n_folds)["accuracy"]
                    self.log(f"val/{name}/{key}/accuracy", acc, add_dataloader_idx=False, sync_dist=True)
                    accuracies.append(acc)
        if accuracies:
            self.log("val/accuracy", float(np.mean(accuracies)), sync_dist=True)
        self._val = {}
