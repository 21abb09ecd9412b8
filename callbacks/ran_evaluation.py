"""End-of-fit evaluation of RAN (seed 002) and its baselines: the multi-resolution protocols of
:class:`callbacks.multi_resolution_evaluation.MultiResolutionEvaluation` (``.bin`` pairs at r1&r2, QMUL-SurvFace
1:1 and 1:N at native sizes resized to the model's input) plus the IJB-C-TinyFace-style 1:1 covariate protocol
(supp. §3; :mod:`lrface.covariate_protocol`) on a landmark-annotated set, written to ``evaluation.json`` /
``evaluation.md`` under the set name ``tinyface_covariate``.

IJB-C itself is not among the suite's datasets; the protocol builder runs on any landmark-annotated set with
identities — CelebA here, whose faces are all large, so on it (and on the synthetic world) each image is first shrunk
by a seeded per-image factor (``simulate_scales``) to stand in for IJB-C's natively small faces. Name the rows
accordingly: they are TinyFace-*style*, not IJB-C TinyFace.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lrface.covariate_protocol import build_covariate_protocol

from .multi_resolution_evaluation import DEFAULT_PAIRS, MultiResolutionEvaluation

__all__ = ["COVARIATE", "RANEvaluation"]

COVARIATE = "tinyface_covariate"


class RANEvaluation(MultiResolutionEvaluation):
    """Args (beyond :class:`MultiResolutionEvaluation`'s):
        covariate_root: a CelebA root (aligned or in-the-wild images + landmarks + identities); None = skip.
        covariate_split: ``list_eval_partition`` split of the faces (``"test"``, ``"valid"``, ``"train"``, ``"all"``).
        simulate_scales: (lo, hi) shrink factors for sets without natively small faces, or None.
        low, high: the LR criterion on the eye-centre-to-mouth-centre distance (supp. §3: 10 < d < 30 px).
        positives_per_face, negatives_per_face, seed: the protocol builder's.
    """

    def __init__(self, bins: Sequence[str] = (), pairs: Sequence[Sequence[int]] = DEFAULT_PAIRS,
                 survface_root: str | None = None, covariate_root: str | None = None,
                 covariate_split: str = "test", simulate_scales: Sequence[float] | None = None, low: float = 10.0,
                 high: float = 30.0, positives_per_face: int = 20, negatives_per_face: int = 1000, seed: int = 0,
                 batch_size: int = 128):
        super().__init__(bins=bins, pairs=pairs, survface_root=survface_root, indicators=(), strategies=(),
                         batch_size=batch_size)
        self.covariate_root, self.covariate_split = covariate_root, covariate_split
        self.simulate_scales = None if simulate_scales is None else tuple(float(s) for s in simulate_scales)
        self.low, self.high = float(low), float(high)
        self.positives_per_face, self.negatives_per_face, self.seed = positives_per_face, negatives_per_face, seed
        self._device: torch.device | str = "cpu"

    def evaluate(self, model: nn.Module, device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
        self._device = device
        return super().evaluate(model, device)

    def extra_results(self, model: nn.Module) -> dict[str, dict[str, float]]:
        if not self.covariate_root:
            return {}
        from datamodules.covariate_faces import CovariateFaces, evaluate_covariate_faces

        faces = CovariateFaces(self.covariate_root, split=self.covariate_split, simulate_scales=self.simulate_scales,
                               seed=self.seed)
        protocol = build_covariate_protocol(faces.landmarks, faces.identities, low=self.low, high=self.high,
                                            positives_per_face=self.positives_per_face,
                                            negatives_per_face=self.negatives_per_face, seed=self.seed)
        return {COVARIATE: evaluate_covariate_faces(model, faces, protocol, batch_size=self.batch_size,
                                                    device=self._device)}
