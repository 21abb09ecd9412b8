"""FeatureExtractorModule: face features F — the seed paper's F_baseline (ArcFace on MS1M) and F_ours (Eq. 10).

Plain batches (``{"image", "identity"}``, one dataset): aligned faces (B×3×112×112 in [0, 1]) → backbone → B×D
embedding → margin head (class centres, fp32 logits) → cross-entropy: F_baseline, L_arc only.

Multi-task batches (``MultiTaskDataModule``: ``{"ms1m": b1, "lookalike": b2, "fairface": b3, "celeba": b4}``, any
member absent or None) train F_ours with Eq. 10, L_arc + w_s·L_siam + w_r·L_race^class + w_a·L_attribute^class
(paper: 10, 10, 10; Alg. 1 draws one sub-batch per dataset per step):

- L_arc on the MS1M sub-batch, as above;
- L_siam (§3.3) on the lookalike sub-batch (i_GT, i, i', flip(i)) with the module's ``alpha_thr`` (degrees; the
  lookalike callback re-estimates it per meta-epoch, Alg. 1) and ``gamma_temp``, only while ``siam_enabled``
  (Alg. 2: L_siam is 0 in the first meta-epoch; the callback switches it on); logged as 0 otherwise;
- L_race^class (Eq. 9): cross-entropy of ``race_classifier`` (C_R, Linear D → 7) on FairFace;
- L_attribute^class: class-weighted BCE of ``attribute_classifier`` (C_A, Linear D → 40) on CelebA's attributes,
  weighted by inverse class frequency (Appendix C) from the CelebA training split's positive rates, read from the
  DataModule (a member with ``attribute_frequencies()``) at ``setup``.

All sub-batches go through the backbone as one concatenated batch: BatchNorm sees the whole mixture (as it will at
inference) and DDP sees one forward. C_R / C_A exist only when their weight is > 0 (checkpoint keys
``race_classifier.*`` / ``attribute_classifier.*``, read back by ``lrface.weights.load_feature_extractor``).

Validation: insightface's `.bin` pair protocol per set (flip-sum TTA, 10-fold accuracy), logged as
``val/<set>/accuracy``; the mean over sets is ``val/accuracy`` (the checkpoint monitor). A validation loader of
single images with ``race`` labels (FairFace val) gives ``val/race_accuracy`` (top-1 of C_R); one with
``attributes`` (CelebA valid) gives ``val/attribute_accuracy`` (mean over the 40 attributes at logit 0) and
``val/attribute_mAP`` (mean AP over attributes with positives, Appendix C's metric).

The head's class count comes from the DataModule (``num_classes``, or the member that has it) when the config leaves
it null, so one config serves the synthetic world and real MS1MV2 (85,742) / MS1MV3 (93,431).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from lrface.inference import embed_flip_sum, to_model_range
from lrface.io import atomic_write_bytes
from lrface.losses.identity import (ALPHA_THR, GAMMA_TEMP, L_attribute_class, L_race_class, L_siam,
                                    attribute_class_weights, feature_extractor_loss)
from lrface.losses.partial_fc import PartialFC, exclude_from_ddp
from lrface.losses.url import ConfidenceAwareHead, L_reg, VariationDecorrelation
from lrface.metrics.average_precision import mean_average_precision
from lrface.metrics.verification import verify_pairs
from lrface.nets.url import split_sub_embeddings

from .frozen_nets import FrozenNets

#: Member names of a multi-task batch (b1–b4 of Alg. 1) and the term each one trains.
ARC_MEMBER, SIAM_MEMBER, RACE_MEMBER, ATTRIBUTE_MEMBER = "ms1m", "lookalike", "fairface", "celeba"
MEMBERS = (ARC_MEMBER, SIAM_MEMBER, RACE_MEMBER, ATTRIBUTE_MEMBER)
NUM_RACES, NUM_ATTRIBUTES = 7, 40
#: Appendix C weighting modes → ``attribute_class_weights`` methods (None: unweighted).
ATTRIBUTE_WEIGHTINGS = {"inverse_frequency": "inverse", "balanced": "balanced", "class_balanced": "effective",
                        "none": None}


def _find_member(datamodule, attribute: str):
    """The DataModule itself if it has ``attribute``, else its first multi-task member that has it, else None."""
    if datamodule is None:
        return None
    if hasattr(type(datamodule), attribute) or attribute in vars(datamodule):
        return datamodule
    for member in getattr(datamodule, "datamodules", {}).values():
        if hasattr(type(member), attribute) or attribute in vars(member):
            return member
    return None


def gather_unique(module: pl.LightningModule, outputs: list[tuple[torch.Tensor, ...]]) -> list[np.ndarray]:
    """Concatenate one validation loader's step outputs ``(index, *tensors)`` over the steps and ranks, each dataset
    index once (in index order)."""
    index, *rest = (torch.cat(parts) for parts in zip(*outputs))
    # DistributedSampler pads the last batch with repeats: gather every rank's items and keep each index once.
    index, *rest = (module.all_gather(t).flatten(0, 1) if module.trainer.world_size > 1 else t
                    for t in (index, *rest))
    order = np.unique(index.cpu().numpy(), return_index=True)[1]
    return [t[order].float().cpu().numpy() if t.is_floating_point() else t[order].cpu().numpy() for t in rest]


class FeatureExtractorModule(FrozenNets, pl.LightningModule):
    """Args:
        backbone: the embedding network (e.g. ``lrface.nets.iresnet.iresnet50``), B×3×112×112 in [-1, 1] → B×D.
        head: a factory ``head(in_features=D, out_features=C)`` for the margin head (ArcFace, CosFace, ...).
        optimizer: a factory ``optimizer(params)`` (``_partial_: true`` in config).
        scheduler: optional factory ``scheduler(optimizer, total_steps=...)``, stepped every optimizer step.
        num_classes: identities of the training set; ``None`` → ``trainer.datamodule.num_classes``.
        embedding_size: D (read from the backbone's ``num_features`` when None).
        clip_grad_norm: max L2 norm of the backbone gradients (arcface_torch clips at 5; the head is not clipped).
            C_R and C_A are clipped to the same norm, each on its own (unclipped, their 10×-weighted losses diverge).
        partial_fc_sample_rate: ``None`` → a full FC head (every rank holds all class centres, replicated by DDP);
            a rate in (0, 1] → Partial FC: the centres are sharded across ranks (kept out of DDP), negatives sampled
            at that rate, the softmax computed jointly (arcface_torch's PartialFC_V2; 1.0 = pure model parallel).
        export_embeddings: write each validation set's flip-sum embeddings to
            ``<run dir>/embeddings/<set>.npz`` (``emb1``, ``emb2``, ``issame``) at the end of training.
        siam_weight: weight of L_siam in Eq. 10 (paper 10; 0 = never computed).
        race_weight: weight of L_race^class (paper 10); > 0 creates ``race_classifier`` (C_R).
        attribute_weight: weight of L_attribute^class (paper 10); > 0 creates ``attribute_classifier`` (C_A).
        attribute_weighting: Appendix C class weights from the CelebA training split: ``"inverse_frequency"``
            (w⁺ = 1/p, w⁻ = 1/(1 − p), the paper's "Inverse Class Frequency" and the official code), ``"balanced"``
            (the same halved: mean weight 1), ``"class_balanced"`` (Cui et al.'s effective number, β =
            ``attribute_beta``) or ``"none"``.
        attribute_beta: β of ``"class_balanced"``.
        attribute_loss: ``"bce"`` (multi-label cross-entropy, the paper's CE) or ``"mse"`` ((σ − y)², official code).
        alpha_thr: initial α_thr of L_siam in degrees (the lookalike callback overwrites ``self.alpha_thr``).
        gamma_temp: γ_temp of L_siam in degrees.
        reg_weight: URL only: λ_reg of L_reg, the confidence regulariser (:mod:`lrface.losses.url`).
        variations: URL only: the M variations of the decorrelation loss (names of ``variation_augment`` and
            ``variation_labeler`` labels); empty = no decorrelation (supp. Table 1's 0+0).
        cls_weight, adv_weight: URL only: λ_cls and λ_adv of L_cls and L_adv.
        variation_mask_fraction, variation_mask_seed: the fixed masks V_t (a random half of the sub-embeddings).
        variation_augment: an ``nn.Module`` (``datamodules.variations.VariationAugment``) applied on the device to the
            training images of plain batches, returning (images, {variation: B labels}); any backbone (an ArcFace
            baseline with the same augmentation is URL's "Baseline + VA").
        variation_labeler: path of a θ_A checkpoint (``lightning_modules.variation_labeler``): labels the
            additional variations (gender, age, smiling) of every clean training image; frozen, not saved.
        confidence_warmup_steps: URL only: for this many optimizer steps the confidences are held at their initial
            value (the branch gets exact-zero gradients), so L_idt starts as a CosFace of scale
            ``URLNet.confidence_init``. Why: at random init cos θ_y carries no signal and the softmax's convexity
            pulls every s down; s → 0 then gates every gradient to ~0 (Eq. 26) and training stalls. The
            supplementary does not say how this start is handled; 0 = train the branch from step 0.
        confidence_lr_scale: URL only: learning-rate factor of the confidence branch (no weight decay there):
            ∂L/∂log s grows with s, so the branch takes steps ~s times larger than the trunk at the same rate.

    URL (seed 001): when ``backbone`` has ``forward_with_confidence`` (``lrface.nets.url.URLNet``) the head must be a
    :class:`~lrface.losses.url.ConfidenceAwareHead` (its K is taken from the backbone) and plain batches train
    L_idt + λ_reg·L_reg + λ_cls·L_cls + λ_adv·L_adv. Logged: ``train/L_idt``, ``train/L_reg``, ``train/L_cls``,
    ``train/L_adv``, ``train/confidence`` (mean s), ``train/confidence_<variation>`` / ``..._clean`` (mean s of the
    samples with / without each variation) and ``train/variation_accuracy/<name>`` (C_t on V_t).

    Attributes set by the lookalike callback: ``alpha_thr`` (float, degrees) and ``siam_enabled`` (bool, default
    False); both are saved in checkpoints.
    """

    def __init__(self, backbone: nn.Module, head: Callable[..., nn.Module], optimizer: Callable[..., Any],
                 scheduler: Callable[..., Any] | None = None, num_classes: int | None = None,
                 embedding_size: int | None = None, clip_grad_norm: float | None = 5.0,
                 partial_fc_sample_rate: float | None = None, export_embeddings: bool = False,
                 siam_weight: float = 0.0, race_weight: float = 0.0, attribute_weight: float = 0.0,
                 attribute_weighting: str = "inverse_frequency", attribute_beta: float = 0.9999,
                 attribute_loss: str = "bce", alpha_thr: float = ALPHA_THR, gamma_temp: float = GAMMA_TEMP,
                 reg_weight: float = 0.0, variations: Sequence[str] = (), cls_weight: float = 0.0,
                 adv_weight: float = 0.0, variation_mask_fraction: float = 0.5, variation_mask_seed: int = 0,
                 variation_augment: nn.Module | None = None, variation_labeler: str | None = None,
                 confidence_warmup_steps: int = 0, confidence_lr_scale: float = 1.0):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "head", "optimizer", "scheduler", "variation_augment"])
        self._nets: dict[str, nn.Module] = {}
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
        self._val_race: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        self._val_attributes: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        self._last_embeddings: dict[str, dict[str, np.ndarray]] = {}

        if attribute_weighting not in ATTRIBUTE_WEIGHTINGS:
            raise ValueError(f"attribute_weighting must be one of {tuple(ATTRIBUTE_WEIGHTINGS)}, "
                             f"got {attribute_weighting!r}")
        if attribute_loss not in ("bce", "mse"):
            raise ValueError(f"attribute_loss must be 'bce' or 'mse', got {attribute_loss!r}")
        if min(siam_weight, race_weight, attribute_weight) < 0:
            raise ValueError(f"Eq. 10 weights must be ≥ 0, got siam {siam_weight}, race {race_weight}, "
                             f"attribute {attribute_weight}")
        self.siam_weight, self.race_weight = float(siam_weight), float(race_weight)
        self.attribute_weight = float(attribute_weight)
        self.attribute_weighting, self.attribute_beta = attribute_weighting, float(attribute_beta)
        self.attribute_loss = attribute_loss
        self.alpha_thr, self.gamma_temp = float(alpha_thr), float(gamma_temp)
        self.siam_enabled = False
        self.race_classifier = nn.Linear(self.embedding_size, NUM_RACES) if race_weight > 0 else None
        self.attribute_classifier = nn.Linear(self.embedding_size, NUM_ATTRIBUTES) if attribute_weight > 0 else None
        if self.attribute_classifier is not None:
            # filled from the CelebA training split at setup; saved so a checkpoint records the weights it used
            self.register_buffer("attribute_pos_weight", torch.ones(NUM_ATTRIBUTES))
            self.register_buffer("attribute_neg_weight", torch.ones(NUM_ATTRIBUTES))
        self._warned_unused: set[str] = set()

        self.url = callable(getattr(backbone, "forward_with_confidence", None))
        variations = tuple(str(v) for v in variations)
        if variations and not self.url:
            raise ValueError(f"variations {variations} need a URL backbone (lrface.nets.url.URLNet): the "
                             "decorrelation loss works on its sub-embeddings")
        if min(reg_weight, cls_weight, adv_weight) < 0:
            raise ValueError(f"URL weights must be ≥ 0, got reg {reg_weight}, cls {cls_weight}, adv {adv_weight}")
        self.reg_weight, self.cls_weight, self.adv_weight = float(reg_weight), float(cls_weight), float(adv_weight)
        self.confidence_warmup_steps = int(confidence_warmup_steps)
        self.confidence_lr_scale = float(confidence_lr_scale)
        self.variation_augment = variation_augment
        self.variation_labeler_path = variation_labeler
        self.decorrelation = None
        if variations:
            k = backbone.num_sub_embeddings
            self.decorrelation = VariationDecorrelation(k, self.embedding_size // k, variations,
                                                        variation_mask_fraction, variation_mask_seed)

    def _build_head(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        extra = {"num_sub_embeddings": self.backbone.num_sub_embeddings} if self.url else {}
        if self.partial_fc_sample_rate is None:
            self.head = self.head_factory(in_features=self.embedding_size, out_features=self.num_classes, **extra)
            self._check_head(self.head)
            return
        # The margin head only supplies its margin function: out_features=1 so no unused C×D matrix is allocated.
        # The process group exists by now (setup runs after it is created), so the shard matches this rank.
        margin = self.head_factory(in_features=self.embedding_size, out_features=1, **extra)
        self._check_head(margin)
        self.partial_fc = PartialFC(margin, self.embedding_size, self.num_classes,
                                    sample_rate=self.partial_fc_sample_rate, checkpoint_layout="full")
        exclude_from_ddp(self)  # each rank updates its own shard; DDP must not average it

    def _check_variation_sources(self) -> None:
        """Every variation of the decorrelation loss must have a labeller, known before the first step."""
        if self.decorrelation is None:
            return
        augment = set(getattr(self.variation_augment, "names", ()))
        labeler = self._nets.get("labeler")
        theta_a = set(labeler.names) if labeler is not None else set()
        missing = [v for v in self.decorrelation.variations if v not in augment | theta_a]
        if missing:
            raise ValueError(f"module.variations {missing} have no labels: module.variation_augment provides "
                             f"{sorted(augment)} and module.variation_labeler (θ_A, "
                             f"{self.variation_labeler_path or 'not set'}) {sorted(theta_a)}")

    def _check_head(self, head: nn.Module) -> None:
        if self.url != isinstance(head, ConfidenceAwareHead):
            raise ValueError("a URL backbone (URLNet) trains with lrface.losses.url.ConfidenceAwareHead and a plain "
                             f"backbone with a margin head; got {type(self.backbone).__name__} with "
                             f"{type(head).__name__}")

    def setup(self, stage: str) -> None:
        net = getattr(self.backbone, "body", self.backbone)  # a URLNet's own backbone
        if hasattr(net, "fp16") and str(self.trainer.precision).endswith("-mixed"):
            # IResNet's fp16=False switches autocast *off* in its trunk (official semantics): under a mixed-precision
            # Trainer the trunk should follow the outer autocast instead. fc + features stay fp32 either way.
            net.fp16 = True
        if stage == "fit" and self.variation_labeler_path and "labeler" not in self._nets:
            from lrface.variation_labeler import load_variation_labeler

            self._nets["labeler"] = load_variation_labeler(self.variation_labeler_path).to(self.device)
        if stage == "fit":
            self._check_variation_sources()
        dm = self._trainer.datamodule if self._trainer is not None else None
        if self.head is None and self.partial_fc is None:
            num_classes = self._pending_classes
            if num_classes is None:
                member = _find_member(dm, "num_classes")
                if member is None or member.num_classes is None:
                    raise ValueError("module.num_classes is null and the DataModule does not expose num_classes")
                num_classes = member.num_classes
            self._build_head(num_classes)
        if self.attribute_classifier is not None and stage == "fit":
            self._set_attribute_weights(dm)

    def _set_attribute_weights(self, dm) -> None:
        method = ATTRIBUTE_WEIGHTINGS[self.attribute_weighting]
        if method is None:
            return
        member = _find_member(dm, "attribute_frequencies")
        if member is None:
            rank_zero_warn("attribute_weight > 0 but no DataModule member has attribute_frequencies(): the "
                           "attribute loss stays unweighted")
            return
        rates = torch.as_tensor(member.attribute_frequencies(), dtype=torch.float64)
        train_set = getattr(member, "train_set", None)
        n = len(train_set) if train_set is not None else None
        weights = attribute_class_weights(rates, method=method, beta=self.attribute_beta, n_samples=n)
        self.attribute_pos_weight.copy_(weights.pos)
        self.attribute_neg_weight.copy_(weights.neg)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [0, 1] → B×D embeddings (not normalised)."""
        return self.backbone(to_model_range(images))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "image" in batch:  # one dataset (MS1M): F_baseline's L_arc
            return self._arc_step(batch)
        return self._multitask_step(batch)

    def _variation_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training images after the on-the-fly variations, and every variation label known for them."""
        images, labels = batch["image"], {}
        if self.variation_augment is not None:
            # kornia's warps / codecs run in fp32 outside autocast (RandomDegradation's rule)
            with torch.autocast(images.device.type, enabled=False):
                images, labels = self.variation_augment(images.float(), batch=batch)
            labels = dict(labels)
        labeler = self._nets.get("labeler")
        if labeler is not None:  # θ_A sees the clean image: gender / age / smiling belong to the face, not the crop
            with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
                labels.update(labeler.labels(batch["image"].float()))
        return images, labels

    def _arc_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images, variation_labels = self._variation_batch(batch)
        if self.url:
            return self._url_step(images, batch["identity"], variation_labels)
        embeddings = self(images)
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

    def _url_step(self, images: torch.Tensor, identity: torch.Tensor,
                  variation_labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """URL: L_idt + λ_reg·L_reg + λ_cls·L_cls + λ_adv·L_adv (seed 001; :mod:`lrface.losses.url`)."""
        embeddings, confidences = self.backbone.forward_with_confidence(to_model_range(images))
        n = len(identity)
        if self.global_step < self.confidence_warmup_steps:
            confidences = confidences.detach() + confidences * 0.0  # zero gradients keep DDP's reduction complete
        if self.partial_fc is not None:
            l_idt = self.partial_fc(embeddings, identity, confidences=confidences)
        else:
            logits = self.head(embeddings, confidences, identity)
            l_idt = F.cross_entropy(logits, identity, ignore_index=-1)
            with torch.no_grad():
                self.log("train/acc", (logits.argmax(1) == identity).float().mean(), prog_bar=True, batch_size=n)
        l_reg = L_reg(confidences)
        total = l_idt + self.reg_weight * l_reg
        logs = {"L_idt": l_idt, "L_reg": l_reg}
        if self.decorrelation is not None:
            out = self.decorrelation(split_sub_embeddings(embeddings, self.backbone.num_sub_embeddings),
                                     variation_labels)
            # a classifier whose variation has no known label in this batch still joins DDP's reduction
            zero = sum(p.sum() for p in self.decorrelation.parameters()) * 0.0
            total = total + self.cls_weight * out["L_cls"] + self.adv_weight * out["L_adv"] + zero
            logs.update(L_cls=out["L_cls"], L_adv=out["L_adv"])
            logs.update({f"variation_{k}": v for k, v in out.items() if k.startswith("accuracy/")})
        with torch.no_grad():
            s = confidences.mean(1)
            logs["confidence"] = s.mean()
            for name, u in variation_labels.items():
                u = u.to(s.device).reshape(-1)
                for tag, sel in ((name, u == 1), (f"{name}_absent", u == 0)):
                    if sel.any():
                        logs[f"confidence_{tag}"] = s[sel].mean()
        for name, value in logs.items():
            self.log(f"train/{name}", value, batch_size=n)
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        return total

    def _arc_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.partial_fc is not None:
            return self.partial_fc(embeddings, labels), None
        logits = self.head(embeddings, labels)
        with torch.no_grad():
            acc = (logits.argmax(1) == labels).float().mean()
        return F.cross_entropy(logits, labels, ignore_index=-1), acc

    @staticmethod
    def _classify(layer: nn.Module, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):  # classifier logits in fp32, as the margin heads
            return layer(features.float())

    def _warn_unused(self, name: str) -> None:
        if name not in self._warned_unused:
            self._warned_unused.add(name)
            rank_zero_warn(f"multi-task batches carry a {name!r} sub-batch but its loss weight is 0: it is loaded "
                           "and not used")

    def _multitask_step(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.url:
            raise ValueError("URL backbones train on plain MS1M batches; multi-task batches (Eq. 10) need a plain "
                             "backbone")
        unknown = sorted(set(batch) - set(MEMBERS))
        if unknown:
            raise ValueError(f"multi-task batch members {unknown} are not known; FeatureExtractorModule trains on "
                             f"{list(MEMBERS)} (L_arc, L_siam, L_race^class, L_attribute^class)")
        arc, look, race, att = (batch.get(name) for name in MEMBERS)
        use_siam = look is not None and self.siam_enabled and self.siam_weight > 0
        use_race = race is not None and self.race_classifier is not None
        use_att = att is not None and self.attribute_classifier is not None
        for name, given, used in ((SIAM_MEMBER, look, self.siam_weight > 0),
                                  (RACE_MEMBER, race, use_race), (ATTRIBUTE_MEMBER, att, use_att)):
            if given is not None and not used:
                self._warn_unused(name)

        chunks: dict[str, torch.Tensor] = {}
        if arc is not None:
            chunks["arc"] = arc["image"]
        if use_siam:
            has_prime = look["has_i_prime"].bool()
            chunks.update(gt=look["image_gt"], i=look["image_i"], flip=look["image_i"].flip(-1),
                          i_prime=look["image_i_prime"][has_prime])
        if use_race:
            chunks["race"] = race["image"]
        if use_att:
            chunks["attribute"] = att["image"]
        sizes = {name: tuple(x.shape[-2:]) for name, x in chunks.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"multi-task sub-batches have different image sizes {sizes}: give every member the same "
                             "image_size (F's input, e.g. 112)")
        features: dict[str, torch.Tensor] = {}
        if chunks:
            embeddings = self(torch.cat(list(chunks.values())))
            features = dict(zip(chunks, embeddings.split([x.shape[0] for x in chunks.values()])))

        l_arc = l_siam = l_race = l_att = None
        unused: list[nn.Module] = []
        if arc is not None:
            l_arc, arc_acc = self._arc_loss(features["arc"], arc["identity"])
            if arc_acc is not None:
                self.log("train/acc", arc_acc, prog_bar=True, batch_size=len(arc["identity"]))
        else:
            unused.append(self.partial_fc if self.partial_fc is not None else self.head)
        if use_siam:
            l_siam = L_siam(features["gt"], features["i"], features["i_prime"], features["flip"],
                            alpha_thr=self.alpha_thr, gamma_temp=self.gamma_temp, has_i_prime=has_prime)
        if use_race:
            logits = self._classify(self.race_classifier, features["race"])
            l_race = L_race_class(logits, race["race"])
            with torch.no_grad():
                race_acc = (logits.argmax(1) == race["race"]).float().mean()
            self.log("train/race_accuracy", race_acc, batch_size=len(race["race"]))
        elif self.race_classifier is not None:
            unused.append(self.race_classifier)
        if use_att:
            logits = self._classify(self.attribute_classifier, features["attribute"])
            weights = (None if ATTRIBUTE_WEIGHTINGS[self.attribute_weighting] is None
                       else (self.attribute_pos_weight, self.attribute_neg_weight))
            l_att = L_attribute_class(logits, att["attributes"], weights=weights, kind=self.attribute_loss)
            with torch.no_grad():
                att_acc = ((logits > 0) == (att["attributes"] > 0.5)).float().mean()
            self.log("train/attribute_accuracy", att_acc, batch_size=len(att["attributes"]))
        elif self.attribute_classifier is not None:
            unused.append(self.attribute_classifier)

        # every parameter must receive a gradient each step under DDP (no find_unused_parameters): the modules of
        # absent members contribute an exact zero
        zero = sum(p.sum() for m in unused for p in m.parameters()) * 0.0
        if l_arc is None:
            l_arc = torch.zeros((), device=self.device)
        total, parts = feature_extractor_loss(l_arc, l_siam, l_race, l_att,
                                              weights=(self.siam_weight, self.race_weight, self.attribute_weight))
        total = total + zero
        n = next(len(x) for x in chunks.values()) if chunks else 1
        for name, value in parts.items():
            if value is not None or name == "L_siam":  # L_siam is 0 while disabled (Alg. 2, first meta-epoch)
                self.log(f"train/{name}", 0.0 if value is None else value, batch_size=n)
        self.log("train/alpha_thr", self.alpha_thr, batch_size=n)
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        return total

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), self.clip_grad_norm)
            for classifier in (self.race_classifier, self.attribute_classifier):
                if classifier is not None:  # C_R / C_A see 10× weighted losses (Eq. 10) on unnormalised features
                    torch.nn.utils.clip_grad_norm_(classifier.parameters(), self.clip_grad_norm)
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_validation_epoch_start(self) -> None:
        self._val_outputs, self._val_race, self._val_attributes = {}, {}, {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "image1" in batch:  # a pair set (.bin, CelebA-Same/Diff)
            e1 = embed_flip_sum(self.backbone, batch["image1"])
            e2 = embed_flip_sum(self.backbone, batch["image2"])
            self._val_outputs.setdefault(dataloader_idx, []).append(
                (batch["index"].long(), e1, e2, batch["issame"].long()))
        elif "race" in batch and self.race_classifier is not None:  # FairFace val
            logits = self._classify(self.race_classifier, self(batch["image"]))
            self._val_race.setdefault(dataloader_idx, []).append(
                (batch["index"].long(), logits, batch["race"].long()))
        elif "attributes" in batch and self.attribute_classifier is not None:  # CelebA valid
            logits = self._classify(self.attribute_classifier, self(batch["image"]))
            self._val_attributes.setdefault(dataloader_idx, []).append(
                (batch["index"].long(), logits, batch["attributes"].float()))

    def _gathered(self, outputs: list[tuple[torch.Tensor, ...]]) -> list[np.ndarray]:
        return gather_unique(self, outputs)

    def on_validation_epoch_end(self) -> None:
        names = list(getattr(self.trainer.datamodule, "val_set_names", [])) if self.trainer.datamodule else []
        accuracies = []
        for idx, outputs in sorted(self._val_outputs.items()):
            e1, e2, same = self._gathered(outputs)
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
        if self._val_race:
            hits = [logits.argmax(1) == race for logits, race in (self._gathered(o) for o in self._val_race.values())]
            self.log("val/race_accuracy", float(np.concatenate(hits).mean()), sync_dist=True)
        if self._val_attributes:
            logits, labels = (np.concatenate(parts) for parts in zip(*(self._gathered(o)
                                                                      for o in self._val_attributes.values())))
            self.log("val/attribute_accuracy", float(((logits > 0) == (labels > 0.5)).mean()), sync_dist=True)
            m_ap = mean_average_precision(logits, labels)
            if np.isfinite(m_ap):
                self.log("val/attribute_mAP", m_ap, sync_dist=True)
        self._val_outputs, self._val_race, self._val_attributes = {}, {}, {}

    def on_fit_end(self) -> None:
        if not (self.export_embeddings and self.trainer.is_global_zero and self._last_embeddings):
            return
        out = Path(self.trainer.default_root_dir) / "embeddings"
        out.mkdir(parents=True, exist_ok=True)
        for name, arrays in self._last_embeddings.items():
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(out / f"{name}.npz", buf.getvalue())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["siam_state"] = {"alpha_thr": self.alpha_thr, "siam_enabled": self.siam_enabled}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("siam_state")
        if state:  # a resumed meta-epoch keeps its α_thr and L_siam switch
            self.alpha_thr, self.siam_enabled = float(state["alpha_thr"]), bool(state["siam_enabled"])

    def configure_optimizers(self):
        head = self.partial_fc if self.partial_fc is not None else self.head
        # the class centres last, as arcface_torch orders its groups
        if self.url:  # the confidence branch: its own learning-rate scale, no weight decay (see confidence_lr_scale)
            branch = list(self.backbone.confidence.parameters())
            ids = {id(p) for p in branch}
            params = [{"params": [p for p in self.backbone.parameters() if id(p) not in ids]},
                      {"params": branch, "weight_decay": 0.0, "lr_scale": self.confidence_lr_scale}]
        else:
            params = [{"params": self.backbone.parameters()}]
        classifiers = [p for m in (self.race_classifier, self.attribute_classifier) if m is not None
                       for p in m.parameters()]
        if self.decorrelation is not None:  # URL's C_t train with L_cls
            classifiers += list(self.decorrelation.parameters())
        if classifiers:  # C_R, C_A train jointly with F (Eq. 10 is minimised over F, C_R, C_A)
            params.append({"params": classifiers})
        params.append({"params": head.parameters()})
        scales = [group.pop("lr_scale", 1.0) for group in params]
        optimizer = self.optimizer_factory(params)
        for group, scale in zip(optimizer.param_groups, scales):
            group["lr"] *= scale
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
