"""Any timm image model as a face-embedding backbone with IResNet's interface.

``TimmBackbone("resnet10t")`` = ``timm.create_model(name, pretrained=False, num_classes=0)`` (the pooled pre-logits
features, B×F) followed by IResNet's embedding head (dropout → Linear(F, num_features) → BatchNorm1d with its scale
frozen at 1), so margin heads, Partial FC, verification and the Lightning modules take it wherever they take an
IResNet: B×3×input_size×input_size RGB in [-1, 1] → B×num_features fp32, attributes ``num_features``,
``input_size`` and ``fp16``.

Weights are never downloaded (``pretrained=False`` always; no hub access at run time). Load trained weights with
``load_state_dict`` (through ``lrface.weights`` for foreign files). Vision transformers need the face resolution at
construction: pass ``img_size=input_size`` in ``timm_kwargs``.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

__all__ = ["TimmBackbone"]

_FORBIDDEN = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


class TimmBackbone(nn.Module):
    """timm trunk + IResNet-style embedding head.

    Args:
        model_name: a timm architecture name (``timm.list_models()``), e.g. ``"resnet10t"``, ``"convnext_atto"``.
        num_features: embedding size (512).
        input_size: square input side the model is fed (112).
        fp16: run the timm trunk under ``torch.autocast(<input device>, enabled=fp16)``, exactly as IResNet's
            ``fp16`` (False switches autocast *off* in the trunk even inside an outer autocast); the head is fp32.
        dropout: dropout before ``fc`` (IResNet's default 0).
        grad_checkpointing: timm's ``set_grad_checkpointing`` (recompute activations in backward).
        **timm_kwargs: forwarded to ``timm.create_model`` (``drop_path_rate``, ``img_size``, ...). Any pretrained /
            checkpoint option is refused.

    Attributes:
        body: the timm model with its classifier removed (``num_classes=0``).
        fc: Linear(width of timm's pooled pre-logits features, num_features).
        features: BatchNorm1d(num_features) with ``weight`` fixed at 1 (IResNet's ``features``).

    Shapes:
        x: B×3×input_size×input_size → B×num_features (fp32).
    """

    def __init__(
        self,
        model_name: str,
        num_features: int = 512,
        input_size: int = 112,
        fp16: bool = False,
        dropout: float = 0.0,
        grad_checkpointing: bool = False,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        refused = [k for k in _FORBIDDEN if k in timm_kwargs]
        if refused:
            raise ValueError(
                f"TimmBackbone never loads pretrained weights (no hub downloads); remove {refused} and load a state "
                "dict instead"
            )
        if not timm.is_model(model_name):
            raise ValueError(f"unknown timm model {model_name!r}")
        self.model_name = model_name
        self.num_features = int(num_features)
        self.input_size = int(input_size)
        self.fp16 = fp16
        self.body = timm.create_model(model_name, pretrained=False, num_classes=0, **timm_kwargs)
        if grad_checkpointing:
            self.body.set_grad_checkpointing(True)
        self.dropout = nn.Dropout(p=dropout)
        # With num_classes=0 timm returns the pre-logits features: wider than ``num_features`` when the model has a
        # hidden head layer (MobileNetV3, GhostNet: ``head_hidden_size``).
        width = getattr(self.body, "head_hidden_size", None) or self.body.num_features
        self.fc = nn.Linear(width, self.num_features)
        self.features = nn.BatchNorm1d(self.num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        # IResNet keeps this scale frozen at 1: embeddings of both backbones then behave alike under the margin heads.
        self.features.weight.requires_grad = False

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, num_features={self.num_features}, input_size={self.input_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed aligned faces.

        Args:
            x: B×3×S×S float RGB in [-1, 1], S = ``input_size``.

        Returns:
            B×num_features fp32 raw embeddings (no L2 normalisation).
        """
        return self.forward_head(self.forward_trunk(x))

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """timm's pooled pre-logits features, B×width (URL's confidence branch starts here, beside ``fc``)."""
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"TimmBackbone expects B×3×{self.input_size}×{self.input_size} input; got {tuple(x.shape)}"
            )
        with torch.autocast(x.device.type, enabled=self.fp16):
            return self.body(x)

    def forward_head(self, trunk: torch.Tensor) -> torch.Tensor:
        """Dropout → fc → features BN: B×width → B×num_features fp32 embeddings."""
        with torch.autocast(trunk.device.type, enabled=self.fp16):
            trunk = self.dropout(trunk)
        # Same precision rule as IResNet: the embedding head (BN1d statistics, later margins) stays fp32.
        with torch.autocast(trunk.device.type, enabled=False):
            return self.features(self.fc(trunk.float()))
