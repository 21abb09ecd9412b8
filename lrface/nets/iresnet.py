"""IResNet: the improved residual network of ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019, LResNet-E-IR), laid out exactly like insightface ``arcface_torch/backbones/iresnet.py``.

Module names, parameter and buffer shapes equal the official ones, so an official ``backbone.pth`` loads with
``strict=True`` and gives the same embeddings. Input: B×3×112×112 RGB in [-1, 1]; output: B×512 raw (un-normalised)
``features``.

``widths`` and ``input_size`` exist only to build tiny networks for tests and laptop configs; their defaults give the
official shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "IBasicBlock",
    "IResNet",
    "LAYERS",
    "get_model",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
    "init_weights",
]

#: Blocks per stage for each official depth (``get_model(name)`` in ``backbones/__init__.py``).
LAYERS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}

_BN_EPS = 1e-5


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation style basic block: BN → conv3×3 → BN → PReLU → conv3×3 (strided) → BN, plus shortcut.

    No activation follows the addition. ``downsample`` (if any) acts on the raw block input.

    Args:
        inplanes: input channels C_in.
        planes: output channels C.
        stride: stride of ``conv2`` (the second conv carries the stride, not the first).
        downsample: shortcut projection, ``Sequential(conv1×1(stride), BN)``, or None for identity.
        grad_checkpointing: recompute the block in backward (training only) to save activation memory.

    Shapes:
        x: B×C_in×H×W → B×C×(H/stride)×(W/stride).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=_BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.downsample = downsample
        self.stride = stride
        self.grad_checkpointing = grad_checkpointing

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward_impl, x, use_reentrant=False)
        return self._forward_impl(x)


def init_weights(module: nn.Module) -> None:
    """arcface_torch's initialisation: every conv N(0, 0.1), every BN / GroupNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.1)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class IResNet(nn.Module):
    """IResNet trunk + embedding head (insightface arcface_torch layout).

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 14, 3)`` for r50.
        dropout: dropout probability before ``fc`` (0 in the official training configs).
        num_features: embedding size (512).
        zero_init_residual: zero each block's *middle* BN (``bn2``) weight, as the official code does.
        fp16: run stem → layer4 → bn2 → flatten → dropout under ``torch.autocast(<input device type>, enabled=fp16)``.
            With ``fp16=False`` autocast is switched *off* there (the official semantics), so the trunk runs in fp32
            even inside an outer autocast; pass ``fp16=True`` under Lightning ``bf16-mixed`` to keep it mixed (the
            nested autocast inherits the outer dtype; alone it uses the device default, fp16 on CUDA, bf16 on CPU).
            ``fc`` and ``features`` always run in fp32 with autocast disabled, so the embedding is fp32.
        widths: channels of the four stages (the stem has ``widths[0]``). Default: the official (64, 128, 256, 512).
        input_size: square input side; must be a multiple of 16. ``fc`` takes ``widths[-1]·(input_size/16)²``
            features (25088 at the defaults).
        grad_checkpointing: recompute each block in backward while training (official ``using_ckpt``).

    Shapes:
        x: B×3×input_size×input_size (RGB in [-1, 1]) → B×num_features (fp32).
    """

    def __init__(
        self,
        layers: Sequence[int],
        dropout: float = 0.0,
        num_features: int = 512,
        zero_init_residual: bool = False,
        fp16: bool = False,
        widths: Sequence[int] = (64, 128, 256, 512),
        input_size: int = 112,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet needs 4 stages; got layers={tuple(layers)}, widths={tuple(widths)}")
        if input_size % 16 != 0:
            raise ValueError(f"input_size must be a multiple of 16 (four stride-2 stages); got {input_size}")
        self.fp16 = fp16
        self.num_features = num_features
        self.input_size = input_size
        self.widths = tuple(int(w) for w in widths)
        self._grad_checkpointing = grad_checkpointing

        self.inplanes = self.widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=_BN_EPS)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(self.widths[0], layers[0])
        self.layer2 = self._make_layer(self.widths[1], layers[1])
        self.layer3 = self._make_layer(self.widths[2], layers[2])
        self.layer4 = self._make_layer(self.widths[3], layers[3])
        self.bn2 = nn.BatchNorm2d(self.widths[3], eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        side = input_size // 16
        self.fc = nn.Linear(self.widths[3] * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=_BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        # Kept as a (frozen) Parameter rather than a buffer so the state_dict matches the official one.
        self.features.weight.requires_grad = False

        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        # Every stage strides by 2, so block 0 always needs a projection shortcut (layer1 included).
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=_BN_EPS),
        )
        mods = [IBasicBlock(self.inplanes, planes, 2, downsample, self._grad_checkpointing)]
        self.inplanes = planes
        mods += [IBasicBlock(planes, planes, grad_checkpointing=self._grad_checkpointing) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed aligned faces.

        Args:
            x: B×3×S×S float RGB in [-1, 1], S = ``input_size``.

        Returns:
            B×num_features fp32 raw embeddings (no L2 normalisation).
        """
        return self.forward_head(self.forward_trunk(x))

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Stem → layer4 → bn2 → flatten: the output of the last convolution, B×(widths[-1]·(S/16)²).

        URL's confidence branch (:class:`lrface.nets.url.URLNet`) starts here, beside the embedding ``fc``.
        """
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"IResNet expects B×3×{self.input_size}×{self.input_size} input; got {tuple(x.shape)}"
            )
        with torch.autocast(x.device.type, enabled=self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return torch.flatten(self.bn2(x), 1)

    def forward_head(self, trunk: torch.Tensor) -> torch.Tensor:
        """Dropout → fc → features BN: B×trunk features → B×num_features fp32 embeddings."""
        with torch.autocast(trunk.device.type, enabled=self.fp16):
            trunk = self.dropout(trunk)
        # The embedding head is precision-sensitive (BN1d statistics, later margins): keep it fp32 always.
        with torch.autocast(trunk.device.type, enabled=False):
            return self.features(self.fc(trunk.float()))


def _iresnet(name: str, **kwargs) -> IResNet:
    return IResNet(LAYERS[name], **kwargs)


def iresnet18(**kwargs) -> IResNet:
    """IResNet-18, blocks (2, 2, 2, 2), 24.03 M parameters. Keyword arguments go to :class:`IResNet`."""
    return _iresnet("r18", **kwargs)


def iresnet34(**kwargs) -> IResNet:
    """IResNet-34, blocks (3, 4, 6, 3), 34.14 M parameters. Keyword arguments go to :class:`IResNet`."""
    return _iresnet("r34", **kwargs)


def iresnet50(**kwargs) -> IResNet:
    """IResNet-50 (ArcFace LResNet50E-IR), blocks (3, 4, 14, 3), 43.59 M parameters."""
    return _iresnet("r50", **kwargs)


def iresnet100(**kwargs) -> IResNet:
    """IResNet-100 (ArcFace LResNet100E-IR), blocks (3, 13, 30, 3), 65.16 M parameters."""
    return _iresnet("r100", **kwargs)


def iresnet200(**kwargs) -> IResNet:
    """IResNet-200, blocks (6, 26, 60, 6), 118.83 M parameters."""
    return _iresnet("r200", **kwargs)


def get_model(name: str, **kwargs) -> IResNet:
    """Build an IResNet by its arcface_torch name.

    Args:
        name: one of ``"r18"``, ``"r34"``, ``"r50"``, ``"r100"``, ``"r200"``.
        **kwargs: forwarded to :class:`IResNet` (``dropout``, ``num_features``, ``fp16``, ``widths``, ...).

    Returns:
        The network.
    """
    if name not in LAYERS:
        raise ValueError(f"unknown IResNet {name!r}; expected one of {sorted(LAYERS)}")
    return _iresnet(name, **kwargs)
