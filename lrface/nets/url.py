"""URL's embedding network: a recognition backbone split after its last convolution into two FC branches.

Seed 001 (Shi et al., "Towards Universal Representation Learning for Deep Face Recognition", supplementary §B):
"The network is split into two different branches after the last convolution layer, each of which includes one fully
connected layer. The first branch outputs a 512-D vector, which is further split into 16 sub-embeddings. The other
branch outputs a 16-D vector, which are confidence values for the sub-embeddings. The exp function is used to
guarantee all the confidence values s_i^(k) are positive."

* Embedding branch: the backbone's own head (IResNet / TimmBackbone ``fc`` + ``features`` BN), untouched, so an
  insightface ``backbone.pth`` loads into ``body`` with ``strict=True`` and every tool that embeds faces (verification,
  PULSE's identity loss, lookalikes) uses a URL model exactly like any other backbone: ``forward(x)`` returns the
  B×D embedding only.
* Confidence branch: ``confidence`` = Linear(trunk features → K); s = exp(·), computed in fp32 (exp of a bf16 logit
  is off by up to ~0.4 %, and s scales every logit of the identification loss).

Choices the paper leaves open (documented, configurable):
    confidence_init: the branch starts with zero weights and bias log(confidence_init), so training begins as a
        CosFace-like head with scale s = confidence_init for every sample (the ArcFace recipe's 64); see
        :class:`lrface.losses.url.ConfidenceAwareHead` for the margin in the same units.
    max_log_confidence: log s is clamped from above (default log 1000) so one sample cannot blow the softmax up
        before the regulariser L_reg catches it; ``None`` disables the clamp.

Keys: ``body.*`` (the backbone's own), ``confidence.weight`` (K×F), ``confidence.bias`` (K).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["URLNet", "split_sub_embeddings"]


def split_sub_embeddings(embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """B×D → B×K×(D/K) unit-norm sub-embeddings f_i^(k) (Eq. 20–24 assume ‖f_i^(k)‖ = 1), fp32."""
    b, d = embeddings.shape
    if d % k:
        raise ValueError(f"embedding size {d} is not divisible into {k} sub-embeddings")
    with torch.autocast(embeddings.device.type, enabled=False):
        return F.normalize(embeddings.float().reshape(b, k, d // k), dim=2)


class URLNet(nn.Module):
    """A backbone with URL's confidence branch.

    Args:
        backbone: an embedding network with ``forward_trunk(x)`` (B×F features after the last convolution),
            ``forward_head(trunk)`` (B×D) and ``num_features`` (``lrface.nets.iresnet`` / ``timm_backbone``).
        num_sub_embeddings: K (16); D must be divisible by K.
        confidence_init: initial s of every sub-embedding (zero weights, bias log confidence_init).
        max_log_confidence: upper clamp of log s (None: no clamp).

    Shapes:
        forward: B×3×S×S in [-1, 1] → B×D fp32 embeddings.
        forward_with_confidence: → (B×D embeddings, B×K confidences s > 0, fp32).
    """

    def __init__(self, backbone: nn.Module, num_sub_embeddings: int = 16, confidence_init: float = 64.0,
                 max_log_confidence: float | None = math.log(1000.0)) -> None:
        super().__init__()
        for method in ("forward_trunk", "forward_head", "fc"):
            if getattr(backbone, method, None) is None:
                raise TypeError(f"URLNet needs a backbone with {method} (IResNet or TimmBackbone); got "
                                f"{type(backbone).__name__}")
        self.body = backbone
        self.num_features = int(backbone.num_features)
        self.input_size = getattr(backbone, "input_size", None)
        if self.num_features % num_sub_embeddings:
            raise ValueError(f"num_features {self.num_features} is not divisible by K={num_sub_embeddings}")
        self.num_sub_embeddings = int(num_sub_embeddings)
        if confidence_init <= 0:
            raise ValueError(f"confidence_init must be > 0, got {confidence_init}")
        self.max_log_confidence = max_log_confidence
        self.confidence = nn.Linear(backbone.fc.in_features, self.num_sub_embeddings)
        self.confidence_init = float(confidence_init)
        self.reset_confidence()

    def reset_confidence(self) -> None:
        """Zero weights and bias log(confidence_init): every sample starts with s^(k) = confidence_init."""
        nn.init.zeros_(self.confidence.weight)
        nn.init.constant_(self.confidence.bias, math.log(self.confidence_init))

    def extra_repr(self) -> str:
        return f"K={self.num_sub_embeddings}, confidence_init={self.confidence_init}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×S×S in [-1, 1] → B×D fp32 embeddings (the concatenated sub-embeddings, not normalised)."""
        return self.body.forward_head(self.body.forward_trunk(x))

    def log_confidence(self, trunk: torch.Tensor) -> torch.Tensor:
        """B×F trunk features → B×K fp32 log s (clamped above at ``max_log_confidence``)."""
        with torch.autocast(trunk.device.type, enabled=False):
            log_s = self.confidence(trunk.float())
        if self.max_log_confidence is not None:
            log_s = log_s.clamp(max=self.max_log_confidence)
        return log_s

    def forward_with_confidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×3×S×S in [-1, 1] → (B×D embeddings, B×K confidences s^(k) = exp(·) > 0), both fp32."""
        trunk = self.body.forward_trunk(x)
        return self.body.forward_head(trunk), self.log_confidence(trunk).exp()

    def sub_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """B×D → B×K×(D/K) unit-norm sub-embeddings."""
        return split_sub_embeddings(embeddings, self.num_sub_embeddings)
