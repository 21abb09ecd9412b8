"""MR-GAN's LR faces as a training augmentation (seed 002 §2: "the aim of MR-GAN is to generate the LR faces which
can be used for data augmentation"; Alg. 2's inputs).

RAN's feature adaption stage needs a pre-trained LR model trained on synthesised LR faces x_LR = G(x_HR). That is a
``FeatureExtractorModule`` run with this module as its ``variation_augment``: each training face is replaced, with
probability ``probability``, by MR-GAN's LR version of it (one of the generator's LR sizes drawn per face, fresh local
noise), at the same size.

The generator is a frozen network loaded on first use (:func:`lrface.weights.load_mrgan_generator`, so a pipeline can
name a file an earlier step writes), kept outside the module's parameters and checkpoint (it is not trained and must
not reach the optimiser), and moved with the module.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MRGANAugment"]


class MRGANAugment(nn.Module):
    """Args:
        weights: the MR-GAN run's ``mrgan_generator.pt`` (or its ``checkpoints/*.ckpt``).
        probability: share of the faces replaced by their MR-GAN version (1: Model_LR sees only LR faces).

    Shapes:
        images B×3×H×W in [0, 1] (H = W = the generator's image size) → (B×3×H×W in [0, 1], {}).
    """

    names: tuple[str, ...] = ()

    def __init__(self, weights: str, probability: float = 1.0):
        super().__init__()
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1]; got {probability}")
        self.weights, self.probability = str(weights), float(probability)
        self._nets: dict[str, nn.Module] = {}

    @property
    def generator(self) -> nn.Module:
        if "G" not in self._nets:
            from lrface.weights import load_mrgan_generator

            self._nets["G"] = load_mrgan_generator(self.weights)
        return self._nets["G"]

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for net in self._nets.values():
            net._apply(fn, *args, **kwargs)
        return self

    @torch.no_grad()
    def forward(self, images: Tensor, batch: dict | None = None) -> tuple[Tensor, dict]:
        g = self.generator.to(images.device)
        if images.shape[-2:] != (g.image_size, g.image_size):
            raise ValueError(f"MR-GAN ({self.weights}) makes {g.image_size}×{g.image_size} faces; the batch is "
                             f"{tuple(images.shape[-2:])}")
        if self.probability <= 0:
            return images, {}
        lr = (g(images.float() * 2 - 1)["image"].clamp(-1, 1) + 1) / 2
        if self.probability >= 1:
            return lr, {}
        keep = torch.rand(images.shape[0], device=images.device) >= self.probability
        return torch.where(keep[:, None, None, None], images, lr), {}
