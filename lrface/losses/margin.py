"""Margin softmax heads for face recognition: ArcFace, CosFace (insightface ``CombinedMarginLoss``) and CurricularFace.

Each head holds the class centres ``weight`` (C×D, the nn.Linear / Partial FC layout) and maps embeddings and labels
to scaled logits for plain cross-entropy::

    logits = head(embeddings, labels)          # B×C, fp32
    loss = F.cross_entropy(logits, labels, ignore_index=-1)

Cosines, margins and the scale are computed in fp32 with autocast disabled, whatever the caller's precision.

Labels equal to -1 mark samples without a class here (in Partial FC: classes on another shard): their rows get no
margin (and no CurricularFace modulation) and are plain ``s·cos θ``, as in the official code.

Papers:
    ArcFace: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019, Eq. 3:
        s·cos(θ_y + m).
    CosFace: Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018, Eq. 4:
        s·(cos θ_y − m).
    Combined: ArcFace paper Eq. 4, s·(cos(m1·θ_y + m2) − m3); only the ArcFace and CosFace branches exist.
    CurricularFace: Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face Recognition",
        CVPR 2020, Eq. 7–10.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["MarginHead", "CombinedMarginHead", "ArcFace", "CosFace", "CurricularFace"]

#: Keeps sqrt(1 − cos²) differentiable at |cos| = 1 (the analytic margin's known NaN source); changes sin θ by at
#: most 1e-6.
_SIN_EPS = 1e-12


def _arange_like(n: int, ref: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, device=ref.device)


class MarginHead(nn.Module):
    """Base class: class centres and the fp32 cosine matrix.

    Args:
        in_features: embedding size D.
        out_features: number of classes C.
        s: logit scale.

    Attributes:
        weight: C×D Parameter, initialised N(0, 0.01) (Partial FC v2).
    """

    def __init__(self, in_features: int, out_features: int, s: float = 64.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.s = float(s)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, 0.0, 0.01)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, s={self.s}"

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity to every class centre, in fp32.

        Args:
            embeddings: B×D, any float dtype.

        Returns:
            B×C fp32 cosines clamped to [-1, 1].
        """
        # bf16 cosines are off by ~1e-2, the size of the margin's effect near convergence: always fp32.
        with torch.autocast(embeddings.device.type, enabled=False):
            emb = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return F.linear(emb, w).clamp(-1.0, 1.0)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled margin logits.

        Args:
            embeddings: B×D raw embeddings (normalised here).
            labels: B int64 class indices in [0, C), or -1 for rows without a local class.

        Returns:
            B×C fp32 logits for cross-entropy.
        """
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.margin(self.cosine(embeddings), labels.reshape(-1).long())

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Apply the margin to precomputed cosines (B×C fp32, labels B) and scale; returns B×C."""
        raise NotImplementedError


class CombinedMarginHead(MarginHead):
    """insightface ``CombinedMarginLoss`` with its class centres: s·(cos(m1·θ_y + m2) − m3) at the label.

    Only the two branches of the official code exist: ArcFace (m1 = 1, m3 = 0) and CosFace (m3 > 0, with m1 = 1 and
    m2 = 0). The official code silently ignores m2 when m3 > 0; we raise instead.

    ArcFace variants (``arcface_impl``):
        ``"straight_through"`` (default; the official implementation since insightface 657ae30, Dec 2022): the target
            logit is cos(θ_y + m2), computed under no_grad, and the backward pass treats the margin as the identity
            (the gradient w.r.t. the pre-margin cosine is s·∂CE/∂logit). No θ + m > π handling, as upstream.
        ``"analytic"`` (the classic pre-2022 code, also CurricularFace's target): cos θ·cos m − sin θ·sin m with
            ordinary autograd; if cos θ ≤ cos(π − m) the target becomes cos θ − sin(π − m)·m (keeps the logit
            monotonic in θ), or with ``easy_margin=True`` the margin applies only where cos θ > 0.

    Args:
        in_features: embedding size D.
        out_features: number of classes C.
        s: scale (train_v2.py hard-codes 64).
        m1, m2, m3: multiplicative angular, additive angular and additive cosine margins.
        interclass_filtering_threshold: if > 0, every non-target cosine above it is replaced by 0 (zero gradient),
            including all high cosines of rows labelled -1 (insightface "abnormal inter-class filtering").
        arcface_impl: ``"straight_through"`` or ``"analytic"`` (see above).
        easy_margin: analytic ArcFace only.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        interclass_filtering_threshold: float = 0.0,
        arcface_impl: str = "straight_through",
        easy_margin: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, s)
        if m1 == 1.0 and m3 == 0.0:
            self.kind = "arcface"
        elif m3 > 0.0 and m1 == 1.0 and m2 == 0.0:
            self.kind = "cosface"
        else:
            raise ValueError(
                f"unsupported margins (m1={m1}, m2={m2}, m3={m3}): use ArcFace (m1=1, m3=0) or CosFace "
                "(m1=1, m2=0, m3>0); SphereFace and combined margins are not implemented (as in insightface)"
            )
        if arcface_impl not in ("straight_through", "analytic"):
            raise ValueError(f"arcface_impl must be 'straight_through' or 'analytic'; got {arcface_impl!r}")
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.interclass_filtering_threshold = float(interclass_filtering_threshold)
        self.arcface_impl = arcface_impl
        self.easy_margin = easy_margin
        self.cos_m = math.cos(self.m2)
        self.sin_m = math.sin(self.m2)
        self.th = math.cos(math.pi - self.m2)
        self.mm = math.sin(math.pi - self.m2) * self.m2

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, m1={self.m1}, m2={self.m2}, m3={self.m3}, kind={self.kind}, "
            f"arcface_impl={self.arcface_impl}, interclass_filtering_threshold={self.interclass_filtering_threshold}"
        )

    def _filter(self, cos: torch.Tensor, labels: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            keep = cos <= self.interclass_filtering_threshold
            keep[pos, labels[pos]] = True
        # Multiplying (not masking in place) zeroes both the value and the gradient of filtered entries.
        return cos * keep.to(cos.dtype)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos = torch.where(labels != -1)[0]
        if self.interclass_filtering_threshold > 0:
            cos = self._filter(cos, labels, pos)
        cols = labels[pos]
        target = cos[pos, cols]
        if self.kind == "cosface":
            final = target - self.m3
        elif self.arcface_impl == "straight_through":
            with torch.no_grad():
                delta = torch.cos(torch.arccos(target) + self.m2) - target
            final = target + delta
        else:
            sin = torch.sqrt((1.0 - target * target).clamp_min(_SIN_EPS))
            cos_tm = target * self.cos_m - sin * self.sin_m
            if self.easy_margin:
                final = torch.where(target > 0, cos_tm, target)
            else:
                final = torch.where(target > self.th, cos_tm, target - self.mm)
        logits = cos.index_put((pos, cols), final)
        return logits * self.s


class ArcFace(CombinedMarginHead):
    """ArcFace head: s·cos(θ_y + m) at the label, s·cos θ elsewhere (ArcFace paper Eq. 3).

    Args:
        in_features: embedding size D.
        out_features: number of classes C.
        s: scale (64).
        m: additive angular margin (0.5).
        **kwargs: ``arcface_impl``, ``easy_margin``, ``interclass_filtering_threshold`` of
            :class:`CombinedMarginHead`.
    """

    def __init__(self, in_features: int, out_features: int, s: float = 64.0, m: float = 0.5, **kwargs) -> None:
        super().__init__(in_features, out_features, s=s, m1=1.0, m2=m, m3=0.0, **kwargs)
        self.m = float(m)


class CosFace(CombinedMarginHead):
    """CosFace head: s·(cos θ_y − m) at the label, s·cos θ elsewhere (CosFace paper Eq. 4).

    Args:
        in_features: embedding size D.
        out_features: number of classes C.
        s: scale (64).
        m: additive cosine margin (0.4).
        **kwargs: ``interclass_filtering_threshold``.
    """

    def __init__(self, in_features: int, out_features: int, s: float = 64.0, m: float = 0.4, **kwargs) -> None:
        super().__init__(in_features, out_features, s=s, m1=1.0, m2=0.0, m3=m, **kwargs)
        self.m = float(m)


class CurricularFace(MarginHead):
    """CurricularFace head (official ``head/metrics.py`` semantics; paper Eq. 7–10).

    For a row with label y, target cosine c_y and T = cos(θ_y + m) (analytic, with the ArcFace fallback
    c_y − sin(π − m)·m when c_y ≤ cos(π − m)):

    * logit at y: s·T (Eq. 7's positive term);
    * logit at j ≠ y: s·c_j if c_j ≤ T, else s·c_j·(t + c_j) for the "hard" negatives (Eq. 8); the gradient flows
      through both factors, t carries none;
    * t is an EMA of the batch-mean target cosine, t ← α·mean(c_y) + (1 − α)·t, updated before the modulation
      (Eq. 10, α = 0.01; Tencent TFace uses 0.1). t starts at 0.

    Deliberate differences from the official code (``reference/face_recognition.md`` §3.3, §9):

    * t moves only in training mode (official: on every call); set ``update_t_in_eval=True`` for the official
      behaviour.
    * Under an initialised ``torch.distributed`` the batch mean is taken over the global batch (all-reduce of the
      sum of target cosines and of the row count), so every rank holds the same t without relying on DDP buffer
      broadcasts. Every rank must then call the head in training mode the same number of times.
    * Rows labelled -1 are left as s·cos θ and do not enter the mean (the official head has no -1 handling; this is
      the Partial FC port's behaviour). A batch with no labelled row leaves t unchanged.

    Args:
        in_features: embedding size D.
        out_features: number of classes C.
        s: scale (64).
        m: additive angular margin (0.5).
        t_alpha: EMA weight α of the new batch mean (0.01).
        update_t_in_eval: also update t when ``self.training`` is False.

    Attributes:
        weight: C×D class centres. The official ``kernel`` (D×C) is accepted by ``load_state_dict`` and transposed.
        t: 1-element fp32 buffer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 64.0,
        m: float = 0.5,
        t_alpha: float = 0.01,
        update_t_in_eval: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, s)
        self.m = float(m)
        self.t_alpha = float(t_alpha)
        self.update_t_in_eval = update_t_in_eval
        self.cos_m = math.cos(self.m)
        self.sin_m = math.sin(self.m)
        self.threshold = math.cos(math.pi - self.m)
        self.mm = math.sin(math.pi - self.m) * self.m
        self.register_buffer("t", torch.zeros(1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, t_alpha={self.t_alpha}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        kernel = prefix + "kernel"
        if kernel in state_dict and prefix + "weight" not in state_dict:
            state_dict[prefix + "weight"] = state_dict.pop(kernel).t()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    @torch.no_grad()
    def _update_t(self, target: torch.Tensor) -> None:
        stats = torch.stack([target.sum(), torch.tensor(float(target.numel()), device=target.device)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        if stats[1] > 0:
            mean = stats[0] / stats[1]
            self.t.mul_(1.0 - self.t_alpha).add_(self.t_alpha * mean)

    def margin(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pos = torch.where(labels != -1)[0]
        cols = labels[pos]
        rows = cos[pos]
        target = rows[_arange_like(len(pos), rows), cols].unsqueeze(1)
        sin = torch.sqrt((1.0 - target * target).clamp_min(_SIN_EPS))
        cos_tm = target * self.cos_m - sin * self.sin_m
        with torch.no_grad():
            hard = rows > cos_tm
        final = torch.where(target > self.threshold, cos_tm, target - self.mm)
        if self.training or self.update_t_in_eval:
            self._update_t(target.detach())
        t = self.t.to(rows.dtype)
        rows = torch.where(hard, rows * (t + rows), rows)
        rows = rows.index_put((_arange_like(len(pos), rows), cols), final.squeeze(1))
        logits = cos.index_put((pos,), rows)
        return logits * self.s
