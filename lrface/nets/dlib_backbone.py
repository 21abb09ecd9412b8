"""dlib's face-recognition ResNet as a pretrained F: the suite's backbone convention in front of the port.

Every F here takes ArcFace-aligned crops (insightface's five points at :func:`lrface.align.arcface_template` of the
crop's side S) in [-1, 1] and returns an embedding compared by angle (seed paper Eq. 4–6). :class:`DlibBackbone`
gives dlib's ResNet (:class:`lrface.nets.dlib_resnet.DlibFaceResNet`, read from ``dlib_face_recognition_resnet_model_
v1.dat``) that interface, so the one network here trained on millions of real faces can stand wherever F does:
``lrface upscale --features dlib``, ``PulseSearchModule(features="dlib")``, the flagship evaluation's ``baseline`` /
``ours``, ``lrface evaluate --backbone dlib``.

From the ArcFace crop to dlib's chip: the crop's five ArcFace template points are carried to dlib's five
``shape_predictor_5_face_landmarks`` points through dlib's mean face (:func:`lrface.judge_scores.
dlib_landmarks_from_five`), and dlib's 150×150 chip (padding 0.25) is cut from the crop by :func:`lrface.dlib_chip.
dlib_face_chips` — differentiable, so L_sim's gradient reaches the generated image. Choices, measured on the real
photos by ``benchmarks/dlib_features.py``:

- The chip spans about 0.92·S of the crop per side but sits lower: it reaches about 10% of its height below the
  crop's bottom edge (the chin), which the crop does not hold; those rows are 0 (black, insightface's border).
- Descriptors of a photo from this path are 0.21 (mean; 0.25 at most) from dlib-bin's own (HOG landmarks, its chip
  from the whole photo): 0.17 of it is the aligner (MTCNN's points through the mean face vs dlib's landmarks), 0.12
  the crop alone. dlib's same-person distances on the photos are 0.33–0.43, and every verdict at 0.6 agrees.
- The crop's side S only sets the resampling (150 chip pixels from 0.92·S crop pixels): 112, 150 and 224 give the
  same 0.21; 112 is the default, as for every other F.

Angles: dlib's descriptors are not normalised, but their norms are all close to 1.4 (1.36–1.46 on the photos,
:data:`DESCRIPTOR_NORM`), so dlib's same-person distance 0.6 is an angle of 2·asin(0.6 / (2·1.4)) ≈ 24.7°
(:data:`SAME_PERSON_ANGLE`): the α_thr of L_sim with this F, where F's own is the official code's 65°. On the photos
dlib-bin's same-person pairs are 14–18° apart and different people 34–37°. γ_temp is scaled by the same factor
(:data:`SAME_PERSON_TEMP`, 10° · 24.7 / 65 = 3.8°), so that Eq. 4's sigmoid spans dlib's angles as it spans F's: the
paper's acceptance rule L_sim < 0.1 then means θ < α_thr − γ_temp·ln 9 ≈ 16.4°, inside dlib's same-person range,
where with γ_temp = 10° it would need θ < 2.8°.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrface.judges.dlib_identity import THRESHOLD
from lrface.losses.identity import ALPHA_THR, GAMMA_TEMP

__all__ = ["DlibBackbone", "DESCRIPTOR_NORM", "SAME_PERSON_ANGLE", "SAME_PERSON_TEMP", "DLIB_F_NAMES", "is_dlib_features",
           "sim_parameters"]

#: the norm of dlib's descriptors (1.36–1.46 on the real photos, dlib-bin's and this F's alike)
DESCRIPTOR_NORM = 1.4


def sim_parameters(threshold: float = THRESHOLD, norm: float = DESCRIPTOR_NORM) -> tuple[float, float]:
    """(α_thr, γ_temp) of Eq. 4 in degrees for descriptors of ``norm`` judged the same person below ``threshold``:
    the angle whose chord is the threshold, and the official γ_temp scaled as α_thr is (ALPHA_THR → that angle)."""
    angle = math.degrees(2 * math.asin(threshold / (2 * norm)))
    return angle, GAMMA_TEMP * angle / ALPHA_THR


#: dlib's same-person distance 0.6 as an angle (degrees), and the γ_temp that goes with it
SAME_PERSON_ANGLE, SAME_PERSON_TEMP = sim_parameters()

#: the names that select this F (``features: dlib``, ``--backbone dlib``)
DLIB_F_NAMES = ("dlib", "dlib_resnet")


def is_dlib_features(spec: str | os.PathLike | None) -> bool:
    """Whether a features / backbone spec means dlib's ResNet: one of :data:`DLIB_F_NAMES`, or a ``.dat`` file."""
    if spec is None:
        return False
    text = str(spec)
    return text.lower() in DLIB_F_NAMES or text.lower().endswith(".dat")


class DlibBackbone(nn.Module):
    """B×3×S×S ArcFace-aligned crops in [-1, 1] → B×128 dlib descriptors (dlib's units, not normalised).

    Args:
        weights: dlib's ``.dat`` (None: ``face_recognition_models``' own, which the ``judges`` extra installs).
        input_size: S, the side of the crops this F is fed (any S works; it is what ``FixedAlignment`` is asked for).
        net: an already loaded :class:`lrface.nets.dlib_resnet.DlibFaceResNet` instead of ``weights``.

    Raises:
        ImportError: ``weights`` is None and ``face-recognition-models`` is not installed (the message gives pip's
            command).
        lrface.nets.dlib_dat.DlibDatError: a bad ``.dat`` (file, byte offset and layer named).
    """

    def __init__(self, weights: str | os.PathLike | None = None, input_size: int = 112,
                 net: nn.Module | None = None):
        super().__init__()
        from lrface.align import arcface_template_np
        from lrface.judge_scores import dlib_landmarks_from_five

        if net is None:
            from lrface.nets.dlib_resnet import load_dlib_face_resnet

            if weights is None:
                from lrface.judges.dlib_identity import dlib_model_file

                weights = dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")
            net = load_dlib_face_resnet(Path(weights))
        self.net = net
        self.weights = None if weights is None else str(weights)
        self.input_size = int(input_size)
        self.num_features = int(getattr(net, "num_features", 128))
        # from the threshold the .dat itself stores (dlib's loss_metric: 0.6 in dlib's file)
        self.same_person_angle, self.same_person_temp = sim_parameters(
            float(getattr(net, "distance_threshold", THRESHOLD)))
        points = dlib_landmarks_from_five(arcface_template_np(self.input_size))
        self.register_buffer("points", torch.as_tensor(np.asarray(points), dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lrface.dlib_chip import dlib_face_chips

        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"expected B×3×S×S ArcFace-aligned crops in [-1, 1], got {tuple(x.shape)}")
        points = self.points.to(x.device) * (x.shape[-1] / self.input_size)
        chips = dlib_face_chips((x + 1) / 2, points.expand(x.shape[0], 5, 2))
        return self.net(chips)
