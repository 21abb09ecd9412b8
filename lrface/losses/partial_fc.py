"""Partial FC: class-sharded (model-parallel) margin softmax with negative-centre sampling.

An et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face Recognition CNNs by Partial FC",
CVPR 2022 (arXiv 2203.15565). Behaviour of insightface arcface_torch
``partial_fc_v2.py`` (``PartialFC_V2``), re-implemented:

* The C class centres are sharded over the W ranks: rank r holds ``n_r = C//W + (r < C%W)`` rows starting at class
  ``start_r = (C//W)·r + min(r, C%W)``, as the Parameter ``weight`` [n_r, D] (the official state_dict layout).
* Every rank all-gathers the embeddings (with gradient) and the labels of the whole global batch (B·W rows) and
  computes the cosines of all of them against its own centres only.
* With ``sample_rate < 1`` each rank, at each step, keeps its positive centres (classes of the global batch that
  live on the shard) plus uniformly random negatives up to ``int(sample_rate·n_r)`` centres (only the positives if
  they alone exceed that number), PFC v2 ``sample``.
* The margin is applied on the local logits (rows whose class lives elsewhere carry label -1 locally and get no
  margin); the softmax cross-entropy is computed jointly over all shards by all-reducing the row max, the row sum of
  exponentials and the target logit (PFC v2 ``DistCrossEntropy``), so no rank ever holds B·W × C logits.

Differences from the official code (deliberate):

* Works without ``torch.distributed`` (or with a world of 1): then it is exactly full-FC margin softmax.
* Ranks may pass different batch sizes (padded with ignored rows for the all-gather); the official code asserts a
  constant batch size (insightface #2015: use ``drop_last=True``).
* Global labels of -1 mean "ignore" (``F.cross_entropy(ignore_index=-1)``): those rows are dropped before the logits
  and the loss is the mean over the remaining rows (the official code has no ignore label).
* The target term is the log-softmax (``log Σexp − (z_y − max)``) rather than ``log(clamp_min(p_y, 1e-30))``: same
  value where p_y > 1e-30, no underflow below it.
* Logits and margins always run in fp32 with autocast disabled (``train_v2.py`` passes ``fp16=False`` too).
* CurricularFace is supported sharded: its hard-negative mask needs the target cosine cos θ_y of every row on every
  shard, so that cosine is all-reduced (``reference/face_recognition.md`` §3.3).
* AdaFace gets the feature norms of the gathered global batch (ignored rows dropped): every rank computes the same
  batch statistics from the same rows, so they are not all-reduced again.

DDP: ``weight`` is sharded, so it must NOT be averaged by DistributedDataParallel: each rank updates its own shard
with its own gradient. Call :func:`exclude_from_ddp` on the root module (e.g. the LightningModule, in ``__init__`` or
``configure_model``) before it is wrapped. The embedding gradient returned to each rank is multiplied by the world
size, as in the official ``AllGather``: every rank holds the same global loss, and DDP's 1/W averaging of the
backbone gradients then yields the exact gradient of that loss.

Checkpoints: each rank's ``state_dict()`` is ``{"weight": [n_r, D]}`` (arcface_torch ``softmax_fc_gpu_{rank}.pt``),
plus ``margin_softmax.t`` for CurricularFace. Frameworks that save only rank 0's state (Lightning) lose the other
shards: build with ``checkpoint_layout="full"`` to make ``state_dict()`` gather the whole [C, D] matrix (a collective:
every rank must call it, as Lightning does). ``load_state_dict`` accepts either layout and keeps the rows of its shard.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lrface.losses.margin import AdaFace, CurricularFace, MarginHead
from lrface.losses.url import ConfidenceAwareHead

__all__ = ["PartialFC", "exclude_from_ddp", "shard_range"]

MarginFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """The classes held by ``rank``: PFC v2's split (the first ``C % W`` ranks hold one extra class).

    Args:
        num_classes: C.
        rank: r in [0, W).
        world_size: W.

    Returns:
        ``(start, count)``: the shard holds classes ``[start, start + count)``.
    """
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _dist_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """All-gather of equal-sized B×D blocks → (W·B)×D, with the gradient summed back to the owner of each block."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.world_size, ctx.rows = rank, world_size, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        # Every rank's shard produced a gradient for every gathered row: the true gradient of a row is their sum.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        # ×W cancels DDP's 1/W averaging of the backbone gradients (every rank holds the same global loss).
        return grad[start : start + ctx.rows] * ctx.world_size, None, None


class _DistCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over logits split by columns across ranks (PFC v2 ``DistCrossEntropyFunc``).

    Forward: global row max (all-reduce MAX), global Σexp (all-reduce SUM), target logit from the one rank holding
    it (all-reduce SUM of zeros elsewhere); loss = mean(log Σexp − (z_y − max)). Backward on the local shard:
    (softmax − onehot)·grad/N.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, distributed: bool) -> torch.Tensor:
        n, c = logits.shape
        if c > 0:
            row_max = logits.detach().amax(dim=1)
        else:
            row_max = torch.full((n,), float("-inf"), dtype=logits.dtype, device=logits.device)
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        # ``exp`` becomes the softmax in place and is the only N×c tensor kept for backward.
        exp = logits.detach().sub(row_max.unsqueeze(1)).exp_()
        sum_exp = exp.sum(dim=1)
        local = torch.where(labels >= 0)[0]
        target = torch.zeros(n, dtype=logits.dtype, device=logits.device)
        target[local] = logits.detach()[local, labels[local]] - row_max[local]
        if distributed:
            dist.all_reduce(sum_exp, op=dist.ReduceOp.SUM)
            dist.all_reduce(target, op=dist.ReduceOp.SUM)
        exp.div_(sum_exp.unsqueeze(1))
        ctx.save_for_backward(exp, labels, local)
        return (sum_exp.log() - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, labels, local = ctx.saved_tensors
        # In place: the N×c buffer is the largest tensor of the step; a second backward would need retain_graph and
        # then fails loudly on the version counter instead of silently using modified values.
        softmax[local, labels[local]] -= 1.0
        softmax.mul_(grad / softmax.shape[0])
        return softmax, None, None


class PartialFC(nn.Module):
    """Partial FC v2: sharded class centres, sampled negatives, distributed margin softmax; returns the loss.

    Args:
        margin: a :class:`~lrface.losses.margin.MarginHead` (``ArcFace``, ``CosFace``, ``CombinedMarginHead``,
            ``CurricularFace``, ``AdaFace``), of which only ``margin(cos, labels)`` (AdaFace: also the norms) and its
            hyper-parameters are used, or any callable ``(cos N×c fp32, labels N int64, -1 = not on this shard) →
            N×c scaled logits``. The head's own
            ``weight`` is never used; if its shape is [num_classes, D] this shard's rows are copied from it (so a
            full-FC head and its Partial FC start identical), otherwise build it with ``out_features=1`` to avoid
            allocating an unused C×D matrix. The head is held by reference, not as a submodule, so the state_dict
            keeps the official layout; a CurricularFace ``t`` is saved as ``margin_softmax.t``, and the head's
            buffers and train/eval mode follow this module's ``.to()`` / ``.train()``.
        embedding_size: D.
        num_classes: C (all ranks together).
        sample_rate: fraction of each shard's centres used per step (1.0 = model parallel, no sampling).
        rank, world_size: the shard to hold; default: from ``torch.distributed`` if initialised, else 0 and 1. They
            must match the process group at ``forward`` time.
        checkpoint_layout: ``"shard"`` (official per-rank [n_r, D]) or ``"full"`` ([C, D], gathered; see module doc).

    Attributes:
        weight: [n_r, D] Parameter, N(0, 0.01) (or copied rows of the head's weight). Keep it out of DDP.
        class_start, num_local, num_sample: the shard's first class, its size and the per-step sampled count.
    """

    def __init__(
        self,
        margin: MarginHead | MarginFn,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        rank: int | None = None,
        world_size: int | None = None,
        checkpoint_layout: str = "shard",
    ) -> None:
        super().__init__()
        if not callable(getattr(margin, "margin", None)) and not callable(margin):
            raise TypeError(f"margin must be a MarginHead or a callable (cos, labels) -> logits; got {type(margin)}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1]; got {sample_rate}")
        if checkpoint_layout not in ("shard", "full"):
            raise ValueError(f"checkpoint_layout must be 'shard' or 'full'; got {checkpoint_layout!r}")
        d_rank, d_world = _dist_world()
        self.rank = d_rank if rank is None else int(rank)
        self.world_size = d_world if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world of size {self.world_size}")
        self.embedding_size = int(embedding_size)
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.checkpoint_layout = checkpoint_layout
        self.class_start, self.num_local = shard_range(self.num_classes, self.rank, self.world_size)
        self.num_sample = int(self.sample_rate * self.num_local)
        # Held outside _modules: a head's own (unused) weight must not enter state_dict, DDP or the optimiser.
        self.__dict__["margin_softmax"] = margin
        self.weight = nn.Parameter(torch.empty(self.num_local, self.embedding_size))
        head_weight = getattr(margin, "weight", None)
        full_shape = (self.num_classes, self.embedding_size)
        if isinstance(head_weight, torch.Tensor) and tuple(head_weight.shape) == full_shape:
            with torch.no_grad():
                self.weight.copy_(head_weight[self.class_start : self.class_start + self.num_local])
        else:
            nn.init.normal_(self.weight, 0.0, 0.01)

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, sample_rate={self.sample_rate}, "
            f"rank={self.rank}, world_size={self.world_size}, classes=[{self.class_start}, "
            f"{self.class_start + self.num_local})"
        )

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        # The head is not a submodule, but its buffers (CurricularFace ``t``) must follow .to()/.cuda(); its unused
        # weight must not (it may be C×D).
        head = self.margin_softmax
        if isinstance(head, nn.Module):
            for module in head.modules():
                for name, buf in module._buffers.items():
                    if buf is not None:
                        module._buffers[name] = fn(buf)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if isinstance(self.margin_softmax, nn.Module):
            self.margin_softmax.train(mode)
        return self

    # ------------------------------------------------------------------ forward
    def _distributed(self) -> bool:
        d_rank, d_world = _dist_world()
        if (d_rank, d_world) != (self.rank, self.world_size):
            if d_world == 1 and self.world_size > 1:
                raise RuntimeError(
                    f"PartialFC holds shard {self.rank}/{self.world_size} but torch.distributed is not initialised"
                )
            raise RuntimeError(
                f"PartialFC was built for rank {self.rank} of {self.world_size} but runs as rank {d_rank} of "
                f"{d_world}: build it after the process group exists (LightningModule.configure_model) or call "
                "shard_() in setup()"
            )
        return d_world > 1

    def _gather(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All-gather embeddings (with gradient) and labels of every rank; ranks may hold different batch sizes."""
        size = torch.tensor([labels.numel()], device=labels.device)
        sizes = [torch.empty_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        rows = int(max(s.item() for s in sizes))
        # all_gather needs equal blocks: pad to the largest batch with ignored rows (label -1), dropped below. Unlike
        # the official assert on a constant batch size, a short last batch (drop_last=False) then just works.
        pad = rows - labels.numel()
        emb = F.pad(emb, (0, 0, 0, pad))
        labels = F.pad(labels, (0, pad), value=-1)
        gathered = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(gathered, labels.contiguous())
        return _AllGather.apply(emb, self.rank, self.world_size), torch.cat(gathered)

    def _sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive centres + random negatives (PFC v2 ``sample``); returns sampled rows and remapped labels."""
        with torch.no_grad():
            on_shard = labels >= 0
            positive = torch.unique(labels[on_shard], sorted=True)
            if positive.numel() <= self.num_sample:
                score = torch.rand(self.num_local, device=self.weight.device)
                score[positive] = 2.0
                index = torch.topk(score, k=self.num_sample).indices.sort().values
            else:
                index = positive
            labels = labels.clone()
            labels[on_shard] = torch.searchsorted(index, labels[on_shard])
        return self.weight[index], labels

    def _curricular_margin(self, head: CurricularFace, cos: torch.Tensor, labels: torch.Tensor, distributed: bool):
        """CurricularFace (paper Eq. 7–10) on a shard: the per-row target cosine is shared by all-reduce."""
        local = torch.where(labels >= 0)[0]
        cols = labels[local]
        with torch.no_grad():
            target_all = torch.zeros(cos.shape[0], dtype=cos.dtype, device=cos.device)
            target_all[local] = cos[local, cols]
            if distributed:
                dist.all_reduce(target_all, op=dist.ReduceOp.SUM)
            sin_all = torch.sqrt((1.0 - target_all * target_all).clamp_min(1e-12))
            cos_tm_all = target_all * head.cos_m - sin_all * head.sin_m
            hard = cos > cos_tm_all.unsqueeze(1)
        target = cos[local, cols]
        sin = torch.sqrt((1.0 - target * target).clamp_min(1e-12))
        cos_tm = target * head.cos_m - sin * head.sin_m
        final = torch.where(target > head.threshold, cos_tm, target - head.mm)
        if head.training or head.update_t_in_eval:
            # Sums over the local targets; _update_t all-reduces them, and every row's target lives on one shard.
            head._update_t(target.detach())
        t = head.t.to(cos.dtype)
        logits = torch.where(hard, cos * (t + cos), cos)
        logits = logits.index_put((local, cols), final)
        return logits * head.s

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor,
                confidences: torch.Tensor | None = None) -> torch.Tensor:
        """Margin softmax loss of the global batch.

        Args:
            local_embeddings: B×D raw embeddings of this rank (any float dtype; normalised here in fp32).
            local_labels: B (or B×1) int class indices in [0, C), or -1 to ignore the row. B may differ between
                ranks and steps (the official code needs ``drop_last=True``; here short batches are padded).
            confidences: B×K URL confidences s^(k) when the margin head is a
                :class:`~lrface.losses.url.ConfidenceAwareHead` (gathered with the embeddings, gradient included),
                else None.

        Returns:
            Scalar fp32 loss: mean cross-entropy over the non-ignored rows of all ranks (identical on every rank);
            0 if every row is ignored.
        """
        distributed = self._distributed()
        labels = local_labels.reshape(-1).long()
        if local_embeddings.ndim != 2 or local_embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"expected B×{self.embedding_size} embeddings; got {tuple(local_embeddings.shape)}")
        if labels.numel() != local_embeddings.shape[0]:
            raise ValueError(f"{labels.numel()} labels for {local_embeddings.shape[0]} embeddings")
        url = isinstance(self.margin_softmax, ConfidenceAwareHead)
        if url != (confidences is not None):
            raise ValueError("confidences are given exactly when the margin head is a ConfidenceAwareHead (URL)")
        with torch.autocast(local_embeddings.device.type, enabled=False):
            emb = local_embeddings.float()
            if url:  # one all-gather for both: the confidences ride along as extra columns
                emb = torch.cat([emb, confidences.float()], dim=1)
            if distributed:
                emb, labels = self._gather(emb, labels)
            # Checked on the gathered labels so that every rank raises together instead of leaving the others
            # waiting in the next collective.
            bad = (labels < -1) | (labels >= self.num_classes)
            if bool(bad.any()):
                raise ValueError(
                    f"labels must be -1 (ignore) or in [0, {self.num_classes}); got {labels[bad][:5].tolist()}"
                )
            keep = torch.where(labels != -1)[0]
            if keep.numel() == 0:
                return (local_embeddings.sum() + self.weight.sum()).float() * 0.0
            if keep.numel() != labels.numel():
                emb, labels = emb[keep], labels[keep]
            on_shard = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
            labels = torch.where(on_shard, labels - self.class_start, torch.full_like(labels, -1))

            if url:
                emb, conf = emb[:, : self.embedding_size], emb[:, self.embedding_size:]
            if self.sample_rate < 1.0:
                weight, labels = self._sample(labels)
            else:
                weight = self.weight
            if url:
                logits = self.margin_softmax.logits(emb, conf, labels, weight=weight)
                return _DistCrossEntropy.apply(logits.float(), labels, distributed)
            cos = F.linear(F.normalize(emb, dim=1), F.normalize(weight.float(), dim=1)).clamp(-1.0, 1.0)
            head = self.margin_softmax
            if isinstance(head, CurricularFace):
                logits = self._curricular_margin(head, cos, labels, distributed)
            elif isinstance(head, AdaFace):
                logits = head.margin(cos, labels, head.feature_norms(emb), sync_stats=False)
            elif isinstance(head, MarginHead):
                logits = head.margin(cos, labels)
            else:
                logits = head(cos, labels)
            return _DistCrossEntropy.apply(logits.float(), labels, distributed)

    # ------------------------------------------------------------ checkpoints
    @torch.no_grad()
    def full_weight(self) -> torch.Tensor:
        """All shards concatenated, [C, D] (a collective under ``torch.distributed``: call it on every rank)."""
        if self.world_size == 1:
            return self.weight.detach().clone()
        self._distributed()
        rows = -(-self.num_classes // self.world_size)
        padded = self.weight.new_zeros(rows, self.embedding_size)
        padded[: self.num_local] = self.weight.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        counts = [shard_range(self.num_classes, r, self.world_size)[1] for r in range(self.world_size)]
        return torch.cat([p[:n] for p, n in zip(parts, counts)])

    @torch.no_grad()
    def shard_(self, rank: int | None = None, world_size: int | None = None) -> PartialFC:
        """Keep only the rows of a new shard from a full [C, D] weight (built before the process group existed).

        Call it before the optimiser is created (e.g. ``LightningModule.setup``); every rank must hold the same full
        weight (same seed). Returns self.
        """
        if self.num_local != self.num_classes:
            raise RuntimeError(
                f"shard_() needs the full [{self.num_classes}, D] weight; this is a {self.num_local}-row shard"
            )
        d_rank, d_world = _dist_world()
        self.rank = d_rank if rank is None else int(rank)
        self.world_size = d_world if world_size is None else int(world_size)
        self.class_start, self.num_local = shard_range(self.num_classes, self.rank, self.world_size)
        self.num_sample = int(self.sample_rate * self.num_local)
        old = self.weight
        self.weight = nn.Parameter(old.detach()[self.class_start : self.class_start + self.num_local].clone(),
                                   requires_grad=old.requires_grad)
        if getattr(old, "_ddp_ignored", False):
            self.weight._ddp_ignored = True
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.checkpoint_layout == "full":
            destination[prefix + "weight"] = self.full_weight()
        head = self.margin_softmax
        if isinstance(head, nn.Module):
            for name, buf in head.named_buffers():
                destination[prefix + "margin_softmax." + name] = buf if keep_vars else buf.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        head = self.margin_softmax
        head_buffers = dict(head.named_buffers()) if isinstance(head, nn.Module) else {}
        for key in [k for k in state_dict if k.startswith(prefix + "margin_softmax.")]:
            value = state_dict.pop(key)
            name = key[len(prefix + "margin_softmax.") :]
            if name in head_buffers:
                with torch.no_grad():
                    head_buffers[name].copy_(value)
            elif strict:
                unexpected_keys.append(key)
        key = prefix + "weight"
        full = state_dict.get(key)
        if isinstance(full, torch.Tensor) and full.ndim == 2 and full.shape[0] == self.num_classes != self.num_local:
            state_dict[key] = full[self.class_start : self.class_start + self.num_local]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)


def exclude_from_ddp(root: nn.Module) -> list[str]:
    """Tell DistributedDataParallel to leave every PartialFC ``weight`` under ``root`` alone (sharded, not replicated).

    Must run before ``root`` is wrapped in DDP (Lightning: in the LightningModule's ``__init__``/``configure_model``).
    Uses DDP's ``_set_params_and_buffers_to_ignore_for_model`` (the mechanism DDP itself reads).

    Args:
        root: the module that DDP will wrap.

    Returns:
        The fully qualified parameter names now ignored by DDP.
    """
    names = [f"{name}.weight" if name else "weight" for name, m in root.named_modules() if isinstance(m, PartialFC)]
    ignored = sorted(set(getattr(root, "_ddp_params_and_buffers_to_ignore", [])) | set(names))
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(root, ignored)
    return names
