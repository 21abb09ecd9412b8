"""FeatureAdaptionModule: RAN's feature adaption network with the translation gate (seed 002: supplementary §1, §6
Alg. 2, Fig. 3, Table 1 rows 1–3; methods.md §2).

Inputs (Alg. 2): HR faces x_HR with identities (MS1M / CelebA); synthesised LR faces x_LR = G(x_HR) from a trained,
frozen MR-GAN (``mrgan``); a pre-trained HR model (``hr_model``, which the multi-resolution model Model_MR starts from)
and a pre-trained LR model Model_LR (``lr_model``, trained on MR-GAN faces: a ``FeatureExtractorModule`` run with
``datamodules.mrgan_augment.MRGANAugment``), frozen. Outputs: Model_MR (``self.backbone``: what is evaluated and
deployed) and the LR discriminator D.

Per update b = 1, 2, … of the epoch (Alg. 2):

1. f_LR = Model_LR(x_LR) — realistic LR features;
2. f_HR = Model_MR(x_HR) and T(f_HR) (the gate with W = 1);
3. D step: real f_LR, fake T(f_HR);
4. W = σ(D(T(f_HR))), per face, no gradient;
5. f^translate = W·T(f_HR) + (1 − W)·f_HR (:class:`lrface.nets.translation_gate.TranslationGate`); Model_MR (with
   its margin head and the gate) minimises

       w_hr · L_cls(f_HR) + w_lr · L_cls(Model_MR(x_LR))          (the multi-resolution model's own supervision)
     + w_tr · CE(s · cos(f^translate, κ_LR))                      (probabilistic supervision in the LR domain)
     + w_adv · L_adv(D(T(f_HR)))                                  (the low-resolution adversarial term, small)
     [+ w_feat · d(f^translate, f_LR)  when b mod 4 = 0]          (feature supervision, d = L2 / cosine / Euclidean)

The supplementary fixes the schedule and the roles; the exact terms are the main paper's. Choices, all config: the
HR-space preservation is the HR classification with Model_MR's head initialised from the HR model's centres (plus an
optional distillation ``hr_distill_weight`` · ‖Model_MR(x_HR) − Model_HR(x_HR)‖², default 0); "probabilistic
supervision" of the translated feature uses the LR model's frozen class centres κ_LR (so Fig. 3b's "learned LR
accuracy by translation gate" and "fixed LR accuracy obtained by LR model" are both top-1 accuracies under κ_LR,
logged as ``train/translate_acc`` and ``train/lr_model_acc``); D's loss is the logistic one (W is then D's
probability). W's batch mean is logged as ``train/W`` (Fig. 3a) and L_feature as ``train/L_feature`` (Fig. 3c).
Setting ``translate_weight``, ``adversarial_weight`` and ``feature_weight`` to 0 gives the "MR-GAN faces as plain
augmentation, no gate" baseline; with ``lr_weight`` 0 as well, the HR-only control (the same fine-tuning on HR faces
alone; the LR faces then never enter Model_MR, not even its BatchNorm statistics).

Fig. 3 (W, the LR accuracies and L_feature over training) is traced every ``trace_every`` updates into
``translation_gate.jsonl`` / ``translation_gate.png`` in the run directory.

Manual optimisation (Model_MR + head + gate; D). Under DDP: ``strategy: ddp_find_unused_parameters_true``.

Validation per ``.bin`` set: HR pairs (``val/<set>/accuracy``) and cross-resolution pairs whose second face is shrunk
to ``val_lr_size`` (``val/<set>/112&<r>/accuracy``); ``val/accuracy`` is the mean of both kinds (the monitor).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.transforms import resize_tensor
from lrface.inference import embed_flip_sum, to_model_range
from lrface.losses.feature_adaption import FEATURE_DISTANCES, feature_distance
from lrface.losses.mrgan import d_adversarial_loss, g_adversarial_loss
from lrface.metrics.verification import verify_pairs
from lrface.nets.btnet import iresnet_from_state_dict
from lrface.weights import load_recognition_trunk

from .feature_extractor import _find_member, gather_unique
from .frozen_nets import FrozenNets

__all__ = ["FeatureAdaptionModule"]


class FeatureAdaptionModule(FrozenNets, pl.LightningModule):
    """Args:
        hr_model: the pre-trained HR model (our ``.ckpt`` or an insightface ``backbone.pth``); Model_MR starts as a
            copy of it, and its head from the HR model's class centres when they fit.
        lr_model: the pre-trained LR model; must carry class centres (our ``.ckpt``) when ``translate_weight`` > 0.
        mrgan: the MR-GAN generator (``mrgan_generator.pt`` or the MR-GAN run's ``.ckpt``).
        head: factory ``head(in_features=D, out_features=C)`` (a margin head) for Model_MR.
        optimizer, scheduler: factories for Model_MR + head + gate (``scheduler(optimizer, total_steps=...)``,
            stepped per update; None = constant).
        gate: factory ``gate(dim=D)`` of the :class:`lrface.nets.translation_gate.TranslationGate`.
        discriminator: factory ``discriminator(dim=D)`` of the LR discriminator
            (:class:`lrface.nets.translation_gate.FeatureDiscriminator`).
        d_lr, d_betas: D's Adam.
        hr_weight, lr_weight, translate_weight, adversarial_weight, feature_weight, hr_distill_weight: the loss
            weights above.
        feature_distance: ``"l2"`` (RAN), ``"cosine"`` or ``"euclidean"`` (Table 1 rows 2–3).
        feature_every: Alg. 2's 4.
        translate_scale: s of the translated features' cosine logits under κ_LR.
        num_classes: None = the DataModule's.
        clip_grad_norm: max gradient norm of Model_MR (None: no clipping).
        val_lr_size: side of the shrunk second face in validation's cross-resolution pairs.
        trace_every: every n updates, W, L_feature and the two LR accuracies join the Fig. 3 trace
            (``translation_gate.jsonl`` and ``translation_gate.png`` in the run directory, rank 0).
    """

    def __init__(self, hr_model: str, lr_model: str, mrgan: str, head: Callable[..., nn.Module],
                 optimizer: Callable[..., Any], gate: Callable[..., nn.Module],
                 discriminator: Callable[..., nn.Module],
                 scheduler: Callable[..., Any] | None = None, d_lr: float = 1e-4,
                 d_betas: tuple[float, float] = (0.5, 0.999), hr_weight: float = 1.0, lr_weight: float = 1.0,
                 translate_weight: float = 1.0, adversarial_weight: float = 0.1, feature_weight: float = 1.0,
                 hr_distill_weight: float = 0.0, feature_distance: str = "l2", feature_every: int = 4,
                 translate_scale: float = 32.0, num_classes: int | None = None, clip_grad_norm: float | None = 5.0,
                 val_lr_size: int = 16, trace_every: int = 10):
        super().__init__()
        self.save_hyperparameters(ignore=["head", "optimizer", "scheduler", "gate", "discriminator"])
        self.automatic_optimization = False
        if feature_distance not in FEATURE_DISTANCES:
            raise ValueError(f"feature_distance must be one of {FEATURE_DISTANCES}; got {feature_distance!r}")
        if feature_every < 1:
            raise ValueError(f"feature_every must be ≥ 1; got {feature_every}")
        weights, self._hr_centres = load_recognition_trunk(hr_model)
        self.backbone = iresnet_from_state_dict(weights)
        self.backbone.load_state_dict(weights, strict=True)
        self.embedding_size = int(weights["fc.weight"].shape[0])
        self.gate, self.discriminator = gate(dim=self.embedding_size), discriminator(dim=self.embedding_size)
        self.head_factory, self.optimizer_factory, self.scheduler_factory = head, optimizer, scheduler
        self.head: nn.Module | None = None
        self._nets: dict[str, nn.Module] = {}
        self._val: dict[int, list] = {}
        self.gate_trace: list[dict[str, float]] = []
        if num_classes is not None:
            self._build_head(int(num_classes))

    # -- frozen networks -------------------------------------------------------------------------------------------

    def _frozen(self, key: str) -> nn.Module:
        if key not in self._nets:
            from lrface.weights import load_frozen_recognition, load_mrgan_generator

            hp = self.hparams
            if key == "G":
                self._nets["G"] = load_mrgan_generator(hp.mrgan)
            elif key == "LR":
                net, centres = load_frozen_recognition(hp.lr_model)
                self._nets["LR"] = net
                if centres is not None:
                    self.register_buffer("lr_centres", centres.float(), persistent=False)
            else:
                self._nets["HR"] = load_frozen_recognition(hp.hr_model)[0]
            self._nets[key].to(self.device)
        return self._nets[key]

    def _build_head(self, num_classes: int) -> None:
        self.head = self.head_factory(in_features=self.embedding_size, out_features=num_classes)
        centres = self._hr_centres
        if centres is not None and tuple(centres.shape) == tuple(self.head.weight.shape):
            with torch.no_grad():
                self.head.weight.copy_(centres)

    def setup(self, stage: str) -> None:
        if self.head is None:
            member = _find_member(self._trainer.datamodule if self._trainer is not None else None, "num_classes")
            if member is None or member.num_classes is None:
                raise ValueError("module.num_classes is null and the DataModule does not expose num_classes")
            self._build_head(member.num_classes)
        if stage == "fit":
            self._frozen("G"), self._frozen("LR")
            if self.hparams.translate_weight and getattr(self, "lr_centres", None) is None:
                raise ValueError(f"{self.hparams.lr_model}: the LR model has no class centres (head.weight), needed "
                                 f"for the translated features' supervision; set module.translate_weight=0")
            if self.hparams.translate_weight and self.lr_centres.shape[0] != self.head.weight.shape[0]:
                raise ValueError(f"{self.hparams.lr_model}: {self.lr_centres.shape[0]} LR-model classes, but the "
                                 f"training data has {self.head.weight.shape[0]}")
            if self.hparams.hr_distill_weight:
                self._frozen("HR")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Model_MR: B×3×112×112 in [0, 1] → B×D."""
        return self.backbone(to_model_range(images))

    # -- training (Alg. 2) -----------------------------------------------------------------------------------------

    def _cls(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(features.float(), labels)
        return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()

    def _lr_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.hparams.translate_scale * F.linear(F.normalize(features.float(), dim=1),
                                                       F.normalize(self.lr_centres, dim=1))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        opt, d_opt = self.optimizers()
        hp = self.hparams
        x, labels = batch["image"].float(), batch["identity"].long()
        n = x.shape[0]
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            x_lr = ((self._frozen("G")(to_model_range(x))["image"].clamp(-1, 1) + 1) / 2).detach()
            f_lr = self._frozen("LR")(to_model_range(x_lr)).float()                   # 1.
        if hp.lr_weight:
            f_hr, f_mr_lr = self(torch.cat([x, x_lr])).float().split(n)                # 2.
        else:  # an HR-only control: BatchNorm must not see the LR faces either
            f_hr, f_mr_lr = self(x).float(), None
        translated = self.gate.translator(f_hr)

        self.discriminator.requires_grad_(True)                                        # 3.
        d_loss = d_adversarial_loss(self.discriminator(f_lr), self.discriminator(translated.detach()), "vanilla")
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        d_opt.step()
        self.discriminator.requires_grad_(False)

        with torch.no_grad():                                                          # 4.
            w = torch.sigmoid(self.discriminator(translated).float()).reshape(-1)
        f_translate = self.gate(f_hr, w, translated=translated)                        # 5.

        l_hr, acc_hr = self._cls(f_hr, labels)
        loss = hp.hr_weight * l_hr
        logs = {"train/L_hr": l_hr.detach(), "train/acc_hr": acc_hr, "train/d_loss": d_loss.detach(),
                "train/W": w.mean()}
        if f_mr_lr is not None:
            l_lr, acc_lr = self._cls(f_mr_lr, labels)
            loss = loss + hp.lr_weight * l_lr
            logs.update({"train/L_lr": l_lr.detach(), "train/acc_lr": acc_lr})
        if hp.translate_weight:
            logits = self._lr_logits(f_translate)
            l_tr = F.cross_entropy(logits, labels)
            loss = loss + hp.translate_weight * l_tr
            with torch.no_grad():
                logs["train/translate_acc"] = (logits.argmax(1) == labels).float().mean()
                logs["train/lr_model_acc"] = (self._lr_logits(f_lr).argmax(1) == labels).float().mean()
            logs["train/L_translate"] = l_tr.detach()
        if hp.adversarial_weight:
            l_adv = g_adversarial_loss(self.discriminator(translated), "vanilla")
            loss = loss + hp.adversarial_weight * l_adv
            logs["train/L_adv"] = l_adv.detach()
        l_feat = feature_distance(f_translate, f_lr, hp.feature_distance)
        logs["train/L_feature"] = l_feat.detach()
        if hp.feature_weight and (batch_idx + 1) % hp.feature_every == 0:
            loss = loss + hp.feature_weight * l_feat
        if hp.hr_distill_weight:
            with torch.no_grad():
                f_ref = self._frozen("HR")(to_model_range(x)).float()
            l_dist = (f_hr - f_ref).pow(2).mean()
            loss = loss + hp.hr_distill_weight * l_dist
            logs["train/L_distill"] = l_dist.detach()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if hp.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), hp.clip_grad_norm)
        opt.step()
        self.discriminator.requires_grad_(True)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=n)
        if hp.trace_every and batch_idx % hp.trace_every == 0:
            self.gate_trace.append({"step": int(self.global_step // 2), **{
                k.split("/", 1)[1]: float(logs[k]) for k in ("train/W", "train/L_feature", "train/translate_acc",
                                                              "train/lr_model_acc") if k in logs}})

    def on_train_epoch_end(self) -> None:
        if self.trainer.is_global_zero and self.gate_trace and not self.trainer.sanity_checking:
            from lrface.ran_report import write_gate_trace

            write_gate_trace(self.gate_trace, Path(self.trainer.default_root_dir))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gate_trace"] = list(self.gate_trace)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.gate_trace = list(checkpoint.get("gate_trace", []))

    def configure_optimizers(self):
        params = [{"params": list(self.backbone.parameters()) + list(self.gate.parameters())},
                  {"params": self.head.parameters()}]
        opt = self.optimizer_factory(params)
        d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.d_lr,
                                 betas=tuple(float(b) for b in self.hparams.d_betas))
        if self.scheduler_factory is None:
            return [opt, d_opt]
        # Model_MR's scheduler is stepped once per batch (training_step)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return [opt, d_opt], [self.scheduler_factory(opt, total_steps=total)]

    # -- validation --------------------------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    @torch.no_grad()
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "image1" not in batch:
            return
        r = self.hparams.val_lr_size
        e1 = embed_flip_sum(self.backbone, batch["image1"].float())
        e2 = embed_flip_sum(self.backbone, batch["image2"].float())
        second = batch["image2"].float()
        e2_lr = embed_flip_sum(self.backbone, resize_tensor(resize_tensor(second, (r, r)), second.shape[-2:]))
        self._val.setdefault(dataloader_idx, []).append((batch["index"].long(), e1, e2, e2_lr,
                                                         batch["issame"].long()))

    def on_validation_epoch_end(self) -> None:
        names = list(getattr(self.trainer.datamodule, "val_set_names", [])) if self.trainer.datamodule else []
        accuracies = []
        for idx, outputs in sorted(self._val.items()):
            e1, e2, e2_lr, same = gather_unique(self, outputs)
            n_folds = min(10, len(same))
            if n_folds < 2:
                continue
            name = names[idx] if idx < len(names) else str(idx)
            hr = verify_pairs(e1, e2, same.astype(bool), n_folds=n_folds)["accuracy"]
            lr = verify_pairs(e1, e2_lr, same.astype(bool), n_folds=n_folds)["accuracy"]
            self.log(f"val/{name}/accuracy", hr, add_dataloader_idx=False, sync_dist=True)
            self.log(f"val/{name}/112&{self.hparams.val_lr_size}/accuracy", lr, add_dataloader_idx=False,
                     sync_dist=True)
            accuracies += [hr, lr]
        if accuracies:
            self.log("val/accuracy", float(np.mean(accuracies)), sync_dist=True)
        self._val = {}
