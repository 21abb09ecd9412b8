"""The translation gate of RAN's feature adaption network (seed 002: RAN supplementary §1 "Effects of W in
translation gate", Fig. 3, §6 Alg. 2; methods.md §2).

The gate translates an HR feature f_HR of the multi-resolution model into the LR feature space and mixes it with
the untranslated feature by a weight W that the low-resolution discriminator D gives:

    f^translate(x_HR) = W · T(f_HR) + (1 − W) · f_HR,        W = σ(D(T(f_HR)))   (Alg. 2 steps 2–5)

Alg. 2 forwards the model first "with W = 1" (pure translator output T(f_HR)), updates D (real: the pre-trained LR
model's features of the synthesised LR face; fake: T(f_HR)), then takes W from D and forwards again with it. This
reading of the supplementary's Fig. 3 text fixes the form: early on T must "amplify the LR representations", T(f_HR)
dominates and W rises quickly; as f_HR itself comes to carry LR information "the weight of f_HR increases" and W
falls to a stable value. W is per sample and carries no gradient (D is trained by its own loss only).

Choices the supplementary leaves open (config): T is a residual MLP f + MLP(f) (starts as the identity, so early
translated features are HR features and D's W starts low, as Fig. 3a's curve does); D is a 3-layer MLP with leaky
ReLU.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FeatureDiscriminator", "TranslationGate", "Translator"]


class Translator(nn.Module):
    """T: B×D → B×D, T(f) = f + Linear(PReLU(BN(Linear(f)))); the last layer starts at zero (T = identity)."""

    def __init__(self, dim: int = 512, hidden: int = 512):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.PReLU(hidden),
                                 nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        return features + self.mlp(features)


class FeatureDiscriminator(nn.Module):
    """The low-resolution discriminator D: B×D features → B×1 logits (high = a realistic LR feature)."""

    def __init__(self, dim: int = 512, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


class TranslationGate(nn.Module):
    """f^translate = W·T(f_HR) + (1 − W)·f_HR.

    Args:
        dim: feature dimension D.
        hidden: translator width.
    """

    def __init__(self, dim: int = 512, hidden: int = 512):
        super().__init__()
        self.translator = Translator(dim, hidden)

    def forward(self, features: Tensor, weight: Tensor | float = 1.0,
                translated: Tensor | None = None) -> Tensor:
        """Args:
            features: f_HR, B×D.
            weight: W, a float or B (or B×1) per-sample weights in [0, 1]; 1 gives T(f_HR).
            translated: T(f_HR) if already computed (Alg. 2 reuses step 2's).

        Returns:
            B×D translated features.
        """
        t = self.translator(features) if translated is None else translated
        if not torch.is_tensor(weight):
            return t if weight == 1.0 else weight * t + (1 - weight) * features
        w = weight.reshape(-1, 1).to(t)
        return w * t + (1 - w) * features
