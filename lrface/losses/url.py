"""URL's losses (seed 001, Shi et al., CVPR 2020, supplementary): confidence-aware identification over K
sub-embeddings, the confidence regulariser, and variation decorrelation.

Confidence-aware identification (Eq. 15–24, main-paper Eq. 8). With unit sub-embeddings f_i^(k), unit prototypes
w_j^(k) and confidences s_i^(k) = 1/σ_i^(k)²::

    a_ij = (1/K) Σ_k s_i^(k) · f_i^(k)ᵀ w_j^(k)          (Eq. 24 without its −Σ_k s_i^(k), which cancels in the
                                                           softmax, "averaged instead of summed" with margin m)
    L_idt = −log softmax_j(a_ij − m·δ_{j,y_i})_{y_i}

so ∂L/∂a_ij = p_ij − δ_{y_i j} (Eq. 25) and s_i^(k) gates the gradients of both the prototypes and the
sub-embeddings (Eq. 26; with the average a factor 1/K joins s_i^(k)). The K per-sub-embedding dot products are never
materialised (B×K×C): each sub-embedding is scaled by s_i^(k)/K and the concatenation meets the sub-normalised
prototypes in one B×D · D×C product, which is also what Partial FC shards.

Choices the paper leaves open (``reference/methods.md`` §3; documented and configurable):
    * m is in logit units, subtracted from a_{i,y_i} after the confidence scaling (Eq. 8's form). With s starting at
      ``URLNet.confidence_init`` = 64 the default m = 0.35·64 = 22.4 equals CosFace's m = 0.35 at scale 64.
    * ``reduction="sum"`` gives Eq. 24's sum over k instead of the average.
    * L_reg = (1/K) Σ_k (s_i^(k))², averaged over the batch (the main paper's regulariser that keeps confidences
      from growing without bound; its weight λ_reg is config).

Variation decorrelation (main-paper §3.3, supp. §C). M binary variations t (low resolution, occlusion, pose;
gender, age, smiling), each with a fixed binary mask V_t over the K sub-embeddings (a random half of them, drawn once
from ``mask_seed`` and stored as a buffer so a resumed run keeps its masks) and a classifier C_t (Linear D → 1,
sigmoid) on the masked features V_t ⊙ f::

    L_cls = Σ_t BCE(C_t(V_t ⊙ f_i), u_t)                        (trains C_t and the embedding)
    L_adv = Σ_t Σ_{t' ≠ t} (σ(C_t'(V_t ⊙ f_i)) − 1/2)²          (trains the embedding only: maximum entropy)

so the sub-embeddings of V_t tell variation t and nothing about the others. Labels −1 mark unknown values (no L_cls
term for them).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lrface.nets.url import split_sub_embeddings

__all__ = ["ConfidenceAwareHead", "confidence_aware_logits", "L_reg", "VariationDecorrelation"]


def confidence_aware_logits(sub_embeddings: torch.Tensor, confidences: torch.Tensor, prototypes: torch.Tensor,
                            reduction: str = "mean") -> torch.Tensor:
    """a_ij = (1/K) Σ_k s_i^(k) f_i^(k)ᵀ w_j^(k) (Eq. 24 / Eq. 8 without the margin), fp32.

    Args:
        sub_embeddings: B×K×d unit sub-embeddings f_i^(k).
        confidences: B×K positive s_i^(k).
        prototypes: C×K×d unit sub-prototypes w_j^(k).
        reduction: ``"mean"`` over k (the paper's Eq. 8) or ``"sum"`` (Eq. 24).

    Returns:
        B×C logits.
    """
    b, k, d = sub_embeddings.shape
    if confidences.shape != (b, k):
        raise ValueError(f"confidences must be B×K = {(b, k)}, got {tuple(confidences.shape)}")
    if prototypes.ndim != 3 or prototypes.shape[1:] != (k, d):
        raise ValueError(f"prototypes must be C×{k}×{d}, got {tuple(prototypes.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    scale = confidences / k if reduction == "mean" else confidences
    scaled = (sub_embeddings * scale.unsqueeze(2)).reshape(b, k * d)
    return F.linear(scaled, prototypes.reshape(-1, k * d))


class ConfidenceAwareHead(nn.Module):
    """Confidence-aware identification head: prototypes per class and sub-embedding, margin on the target logit.

    Args:
        in_features: D (the concatenated sub-embeddings).
        out_features: C classes.
        num_sub_embeddings: K (16); D divisible by K.
        m: margin subtracted from the target logit, in logit units (default 0.35·64; see the module docstring).
        reduction: ``"mean"`` (Eq. 8) or ``"sum"`` (Eq. 24) over sub-embeddings.

    Attributes:
        weight: C×D prototypes (class j's K sub-prototypes side by side, each unit-normalised when used), initialised
            N(0, 0.01) like the margin heads, so Partial FC can shard it the same way.

    Shapes:
        forward(embeddings B×D, confidences B×K, labels B) → B×C fp32 logits for cross-entropy (labels −1: rows
        without a local class get no margin, as the margin heads).
    """

    def __init__(self, in_features: int, out_features: int, num_sub_embeddings: int = 16, m: float = 22.4,
                 reduction: str = "mean") -> None:
        super().__init__()
        if in_features % num_sub_embeddings:
            raise ValueError(f"in_features {in_features} is not divisible by K={num_sub_embeddings}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.num_sub_embeddings, self.m, self.reduction = int(num_sub_embeddings), float(m), reduction
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.normal_(self.weight, 0.0, 0.01)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, K={self.num_sub_embeddings}, "
                f"m={self.m}, reduction={self.reduction}")

    def prototypes(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """C×D weight (this head's or a Partial FC shard) → C×K×d unit sub-prototypes, fp32."""
        w = self.weight if weight is None else weight
        return F.normalize(w.float().reshape(w.shape[0], self.num_sub_embeddings, -1), dim=2)

    def logits(self, embeddings: torch.Tensor, confidences: torch.Tensor, labels: torch.Tensor,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        """Margin logits against ``weight`` (default: all of this head's classes; Partial FC passes its shard)."""
        with torch.autocast(embeddings.device.type, enabled=False):
            f = split_sub_embeddings(embeddings, self.num_sub_embeddings)
            a = confidence_aware_logits(f, confidences.float(), self.prototypes(weight), self.reduction)
            labels = labels.reshape(-1).long()
            pos = torch.where(labels != -1)[0]
            return a.index_put((pos, labels[pos]), a[pos, labels[pos]] - self.m)

    def forward(self, embeddings: torch.Tensor, confidences: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.logits(embeddings, confidences, labels)


def L_reg(confidences: torch.Tensor) -> torch.Tensor:
    """Confidence regulariser: mean over the batch of (1/K) Σ_k (s^(k))² (B×K → scalar fp32)."""
    return confidences.float().pow(2).mean()


def _random_masks(num_variations: int, k: int, fraction: float, seed: int) -> torch.Tensor:
    """M×K bool masks, each a random ``round(fraction·K)`` subset; distinct where the count of subsets allows."""
    size = max(1, min(k, round(fraction * k)))
    gen = torch.Generator().manual_seed(seed)
    masks, seen = [], set()
    for _ in range(num_variations):
        for _attempt in range(100):
            idx = torch.randperm(k, generator=gen)[:size]
            key = tuple(sorted(idx.tolist()))
            if key not in seen:
                break
        seen.add(key)
        mask = torch.zeros(k, dtype=torch.bool)
        mask[idx] = True
        masks.append(mask)
    return torch.stack(masks) if masks else torch.zeros(0, k, dtype=torch.bool)


class VariationDecorrelation(nn.Module):
    """L_cls and L_adv over M binary variations (main-paper §3.3; supp. Table 1 varies M).

    Args:
        num_sub_embeddings: K.
        sub_dim: d (D = K·d).
        variations: the M variation names, e.g. ``("low_resolution", "occlusion", "pose", "gender")``.
        mask_fraction: share of the K sub-embeddings each V_t selects (a random half, fixed).
        mask_seed: seed of the masks.

    Attributes:
        masks: M×K bool buffer V_t.
        classifiers: M Linear(D, 1) C_t.

    Shapes:
        forward(sub_embeddings B×K×d, labels {name: B float 0/1, −1 unknown}) → dict with ``L_cls``, ``L_adv``
        (scalars; 0 when M = 0 for L_cls, M < 2 for L_adv) and ``accuracy/<name>`` (C_t on V_t, known labels).
    """

    def __init__(self, num_sub_embeddings: int, sub_dim: int, variations: Sequence[str] = (),
                 mask_fraction: float = 0.5, mask_seed: int = 0) -> None:
        super().__init__()
        self.variations = tuple(str(v) for v in variations)
        if len(set(self.variations)) != len(self.variations):
            raise ValueError(f"variation names repeat: {self.variations}")
        if not 0.0 < mask_fraction <= 1.0:
            raise ValueError(f"mask_fraction must be in (0, 1], got {mask_fraction}")
        self.num_sub_embeddings, self.sub_dim = int(num_sub_embeddings), int(sub_dim)
        self.register_buffer("masks", _random_masks(len(self.variations), self.num_sub_embeddings, mask_fraction,
                                                    mask_seed))
        dim = self.num_sub_embeddings * self.sub_dim
        self.classifiers = nn.ModuleList(nn.Linear(dim, 1) for _ in self.variations)

    def extra_repr(self) -> str:
        return f"variations={self.variations}, K={self.num_sub_embeddings}"

    def masked(self, sub_embeddings: torch.Tensor, t: int) -> torch.Tensor:
        """V_t ⊙ f: B×K×d → B×D with the sub-embeddings outside V_t zeroed."""
        return (sub_embeddings * self.masks[t].to(sub_embeddings.dtype)[None, :, None]).flatten(1)

    def forward(self, sub_embeddings: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [name for name in self.variations if name not in labels]
        if missing:
            raise KeyError(f"variation labels {missing} are missing from the batch (have {sorted(labels)})")
        with torch.autocast(sub_embeddings.device.type, enabled=False):
            f = sub_embeddings.float()
            zero = f.sum() * 0.0
            l_cls, l_adv, out = zero, zero, {}
            masked = [self.masked(f, t) for t in range(len(self.variations))]
            for t, (name, clf) in enumerate(zip(self.variations, self.classifiers)):
                u = labels[name].to(f.device).float().reshape(-1)
                known = u >= 0
                logit = clf(masked[t]).squeeze(1)
                if known.any():
                    l_cls = l_cls + F.binary_cross_entropy_with_logits(logit[known], u[known])
                    with torch.no_grad():
                        out[f"accuracy/{name}"] = ((logit[known] > 0).float() == u[known]).float().mean()
                # C_t' judges V_t's features: its parameters are constants here, only the embedding moves
                for t2, other in enumerate(self.classifiers):
                    if t2 != t:
                        p = torch.sigmoid(F.linear(masked[t], other.weight.detach(), other.bias.detach())).squeeze(1)
                        l_adv = l_adv + (p - 0.5).pow(2).mean()
            out["L_cls"], out["L_adv"] = l_cls, l_adv
            return out
