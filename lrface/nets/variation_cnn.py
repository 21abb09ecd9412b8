"""θ_A, URL's labeller of additional variations (seed 001, supp. B): "a four layer CNN; the four layers have 64, 128,
256 and 512 kernels, respectively, all of which are 3×3".

The supplementary gives only the kernel counts and sizes. Our choices, for a small classifier that trains from
scratch: every 3×3 convolution (stride 1, padding 1, no bias) is followed by BatchNorm, ReLU and a 2×2 max-pool
(112 → 56 → 28 → 14 → 7), then global average pooling and one Linear layer to the outputs (one logit per binary
variation). Four poolings give each final unit a 46 px receptive field on the input, enough for a mouth or an eye
region at 112 px; the global average pool makes the net indifferent to the input size.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VariationCNN"]


class VariationCNN(nn.Module):
    """Four 3×3 conv layers (``widths`` kernels) + BN + ReLU + 2×2 max-pool each, GAP, Linear.

    Args:
        num_outputs: logits per image (one per binary variation).
        widths: kernels of the four conv layers (paper: 64, 128, 256, 512).
        input_size: square side the net is trained at; inputs of another size are resized to it (bilinear,
            antialiased) so a labeller keeps seeing faces at the scale it learned.

    Input B×3×H×W RGB in [-1, 1]; output B×num_outputs logits.
    """

    def __init__(self, num_outputs: int = 3, widths: Sequence[int] = (64, 128, 256, 512), input_size: int = 112):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"θ_A has four conv layers: widths must be 4 positive ints, got {widths}")
        if num_outputs < 1 or input_size < 16:
            raise ValueError(f"need num_outputs ≥ 1 and input_size ≥ 16 (four 2×2 poolings), got {num_outputs}, "
                             f"{input_size}")
        self.widths, self.num_outputs, self.input_size = widths, int(num_outputs), int(input_size)
        layers: list[nn.Module] = []
        cin = 3
        for cout in widths:
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, self.num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        """B×3×H×W in [-1, 1] → B×num_outputs logits."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected B×3×H×W RGB images, got {tuple(x.shape)}")
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.fc(self.features(x).mean(dim=(2, 3)))
