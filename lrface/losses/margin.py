"""Margin softmax heads for face recognition: ArcFace, CosFace (insightface ``CombinedMarginLoss``), CurricularFace and
AdaFace.

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
    AdaFace: Kim, Jain and Liu, "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022: angular and
        additive margins scaled by the batch-normalised feature norm (official ``head.py``).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["MarginHead", "CombinedMarginHead", "ArcFace", "CosFace", "CurricularFace", "AdaFace"]

#: Keeps sqrt(1 − cos²) differentiable at |cos| = 1 (the analytic margin's known NaN source); changes sin θ by at
#: most 1e-6.
_SIN_EPS = 1e-12


def _arange_like(n: int, ref: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, device=ref.device)


def _kernel_to_weight(state_dict: dict, prefix: str) -> None:
    """Accept the official CurricularFace / AdaFace ``kernel`` (D×C, a class centre per column) as our ``weight``
    (C×D), in place, unless the state_dict already holds a ``weight``."""
    kernel = prefix + "kernel"
    if kernel in state_dict and prefix + "weight" not in state_dict:
        state_dict[prefix + "weight"] = state_dict.pop(kernel).t()


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
        _kernel_to_weight(state_dict, prefix)
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


class AdaFace(MarginHead):
    """AdaFace head (official ``head.py`` semantics): the margin adapts to image quality through the feature norm.

    For a row with raw embedding f, label y and cosines c_j (all clamped to ±(1 − eps)):

    * ‖f‖ is computed in fp32, clipped to [0.001, 100] and detached (no gradient flows through the norm);
    * the EMA statistics move first (training mode): μ ← α·mean(‖f‖) + (1 − α)·μ, σ ← α·std(‖f‖) + (1 − α)·σ, with
      the unbiased batch std (``torch.std``); μ starts at 20, σ at 100;
    * then, with those updated statistics, the margin scaler is ẑ = clip((‖f‖ − μ)/(σ + eps)·h, −1, 1);
    * logit at y: s·(cos(clip(θ_y − m·ẑ, eps, π − eps)) − (m + m·ẑ)), i.e. g_angle = −m·ẑ on the angle and
      g_add = m + m·ẑ on the cosine; logits at j ≠ y: s·c_j.

    The official code routes every entry through arccos / θ clip / cos; for j ≠ y nothing is added to θ and
    θ_j ∈ [arccos(1 − eps), π − arccos(1 − eps)] lies inside [eps, π − eps], so the clip never acts there and those
    logits equal s·c_j up to rounding: only the target column goes through arccos here (cheaper for large C).

    Defaults are the published recipe (README, ``scripts/run_ir50_ms1mv2.sh``): m = 0.4, h = 0.333, s = 64 and
    t_alpha = 0.01. The official class defaults to t_alpha = 1.0 (no averaging) and ``config.py`` to m = 0.5, h = 0.0
    (a constant CosFace + ArcFace margin): do not copy those.

    Deliberate differences from the official code:

    * The statistics move only in training mode (official: on every call, validation included); set
      ``update_stats_in_eval=True`` for the official behaviour (as CurricularFace's ``update_t_in_eval``).
    * With ``sync_stats=True`` under an initialised ``torch.distributed``, the batch mean and std are those of the
      global batch (all-reduce of the count, Σ‖f‖ and Σ‖f‖² in fp64), so every rank holds the same μ, σ. The official
      head keeps per-rank statistics of its own B/W rows, which DDP's buffer broadcast then overwrites with rank 0's
      at every forward: effectively rank 0's local statistics. ``sync_stats=False`` gives the local behaviour. Every
      rank must then call the head in training mode the same number of times.
    * Rows labelled -1 get no margin (s·c_j) and, in :meth:`forward`, do not enter the statistics (the official head
      has no -1 handling). In :meth:`margin` (Partial FC) -1 means "class on another shard": every row given counts.
    * A batch of a single row (std undefined; the official head would write NaN into σ for good) updates μ and
      leaves σ unchanged; a batch with no row leaves both unchanged.

    Args:
        in_features: embedding size D.
        out_features: number of classes C.
        s: scale (64).
        m: margin (0.4).
        h: concentration of the norm scaler, (‖f‖ − μ)/σ·h (0.333: ±1σ maps to ±0.333).
        t_alpha: EMA weight α of the new batch statistics (0.01).
        eps: cosine clamp, θ clip and σ offset (1e-3, as the official code).
        sync_stats: global-batch statistics under ``torch.distributed`` (see above).
        update_stats_in_eval: also update μ, σ when ``self.training`` is False.

    Attributes:
        weight: C×D class centres. The official ``kernel`` (D×C) is accepted by ``load_state_dict`` and transposed.
        batch_mean, batch_std: 1-element fp32 buffers (μ, σ).
        t: 1-element buffer, unused; kept because the official head registers it (state_dict key compatibility).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
        sync_stats: bool = True,
        update_stats_in_eval: bool = False,
    ) -> None:
        super().__init__(in_features, out_features, s)
        self.m = float(m)
        self.h = float(h)
        self.t_alpha = float(t_alpha)
        self.eps = float(eps)
        self.sync_stats = sync_stats
        self.update_stats_in_eval = update_stats_in_eval
        self.register_buffer("t", torch.zeros(1))
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}, eps={self.eps}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        _kernel_to_weight(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    @staticmethod
    def feature_norms(embeddings: torch.Tensor) -> torch.Tensor:
        """‖f‖ of B×D raw embeddings: B fp32, detached (the margin never back-propagates into the norm)."""
        with torch.autocast(embeddings.device.type, enabled=False):
            return embeddings.detach().float().norm(dim=1)

    @torch.no_grad()
    def _batch_stats(self, norms: torch.Tensor, sync: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Mean and unbiased std of the (clipped) norms of this batch, or of the global batch when synced."""
        if sync and dist.is_available() and dist.is_initialized():
            x = norms.double()
            stats = torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x * x).sum()])
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            n, total, squares = stats.tolist()
            if n < 1:
                return None, None
            mean = total / n
            if n < 2:
                return norms.new_tensor(mean), None
            return norms.new_tensor(mean), norms.new_tensor(math.sqrt(max(squares - n * mean * mean, 0.0) / (n - 1)))
        if norms.numel() == 0:
            return None, None
        return norms.mean(), (norms.std() if norms.numel() > 1 else None)

    @torch.no_grad()
    def _update_stats(self, norms: torch.Tensor, sync: bool) -> None:
        mean, std = self._batch_stats(norms, sync)
        if mean is not None:
            self.batch_mean.mul_(1.0 - self.t_alpha).add_(self.t_alpha * mean.to(self.batch_mean.dtype))
        if std is not None:
            self.batch_std.mul_(1.0 - self.t_alpha).add_(self.t_alpha * std.to(self.batch_std.dtype))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled AdaFace logits.

        Args:
            embeddings: B×D raw embeddings (normalised here; their norms drive the margin).
            labels: B int64 class indices in [0, C), or -1 for rows without a class (no margin, not in the stats).

        Returns:
            B×C fp32 logits for cross-entropy.
        """
        labels = labels.reshape(-1).long()
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.margin(self.cosine(embeddings), labels, self.feature_norms(embeddings),
                               stats_rows=labels != -1)

    def margin(
        self,
        cos: torch.Tensor,
        labels: torch.Tensor,
        norms: torch.Tensor,
        sync_stats: bool | None = None,
        stats_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the adaptive margin to precomputed cosines and scale (Partial FC calls this).

        Args:
            cos: B×C fp32 cosines.
            labels: B int64 column of the true class, or -1 for no margin.
            norms: B feature norms ‖f‖ of the same rows (detached and clipped here).
            sync_stats: all-reduce the statistics over ranks; None → ``self.sync_stats``. Pass False when the rows
                are already the global batch (Partial FC gathers them).
            stats_rows: B bool mask of the rows whose norms enter the statistics; None → all rows.

        Returns:
            B×C fp32 logits.
        """
        labels = labels.reshape(-1).long()
        safe_norms = norms.detach().float().reshape(-1).clamp(0.001, 100.0)
        if self.training or self.update_stats_in_eval:
            sync = self.sync_stats if sync_stats is None else sync_stats
            self._update_stats(safe_norms if stats_rows is None else safe_norms[stats_rows], sync)
        cos = cos.float().clamp(-1.0 + self.eps, 1.0 - self.eps)
        pos = torch.where(labels != -1)[0]
        cols = labels[pos]
        mean, std = self.batch_mean.float(), self.batch_std.float()
        scaler = ((safe_norms[pos] - mean) / (std + self.eps) * self.h).clamp(-1.0, 1.0)
        theta = torch.acos(cos[pos, cols])
        theta_m = (theta - self.m * scaler).clamp(self.eps, math.pi - self.eps)
        final = torch.cos(theta_m) - (self.m + self.m * scaler)
        return cos.index_put((pos, cols), final) * self.s
