"""Labels for MAD's disentanglement heads (seed 003, L_f^Φ of supplementary Table 2; methods.md §4) from our datasets.

The authors train each factor on a dataset of its own: identity on VGGFace2, expression on AffectNet (8 classes),
style ("shape") on VoxCeleb1 video ids, pose from OpenFace head-pose estimates. **AffectNet, VoxCeleb and VGGFace2
are not among our datasets**; CelebA (real or synthetic) plays every role, one batch labelling all four factors:

* identity — the dataset identity (CelebA's ``identity_CelebA.txt``, any dataset's ``identity``): a triplet label
  as in the code (VGGFace2 ids).
* expression — 2·Smiling + Mouth_Slightly_Open, 4 classes (0 neutral closed, 1 neutral open, 2 smile closed,
  3 smile open): CelebA's only expression attributes stand in for AffectNet's 8 categories.
* style — the bit-packed id of a configurable list of CelebA appearance attributes (default Male, Eyeglasses,
  Wearing_Hat, Blond_Hair, Black_Hair → 32 classes, bit i = attribute i): appearance beyond identity and
  expression, the role VoxCeleb's video ids (same person, same recording conditions) play in the code.
* pose — B×3 yaw / pitch / roll proxies from the 5 landmarks (CelebA order: left eye, right eye, nose, left mouth
  corner, right mouth corner; "left" is the image left) in place of OpenFace's head-pose estimates:

  - yaw = (nose_x − eye_mid_x) / interocular: the nose tip's horizontal offset from the eye midpoint in units of
    the eye distance (0 frontal, sign = the side the nose moves to in the image);
  - pitch = (nose_y − eye_mid_y) / (mouth_mid_y − eye_mid_y) − 0.5: where the nose tip sits between the eye line and
    the mouth line; 0.5 is the frontal value (ArcFace's 112 template: (71.74 − 51.60) / (92.29 − 51.60) = 0.495),
    so 0 is frontal, positive = nose nearer the mouth (face tilted down), negative = tilted up;
  - roll = atan2(right_eye_y − left_eye_y, right_eye_x − left_eye_x) in radians, image coordinates (y down):
    positive when the image-right eye is lower (the face turned clockwise on screen).

  All three are ratios / angles of the landmarks, so they do not change with the image's scale or position (an
  ArcFace-aligned crop, a similarity warp, keeps yaw and pitch and zeroes roll). Degenerate geometry (coincident
  eyes, mouth on the eye line) gives a non-finite row, which L_f skips.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lrface.labels import CELEBA_ATTRIBUTES

__all__ = ["DEFAULT_STYLE_ATTRIBUTES", "EXPRESSION_ATTRIBUTES", "FRONTAL_PITCH", "expression_labels", "mad_labels",
           "pose_labels", "style_labels"]

#: CelebA attributes whose bit-packed combination is the style class (bit i ↔ attribute i).
DEFAULT_STYLE_ATTRIBUTES = ("Male", "Eyeglasses", "Wearing_Hat", "Blond_Hair", "Black_Hair")
#: expression class = 2·Smiling + Mouth_Slightly_Open.
EXPRESSION_ATTRIBUTES = ("Smiling", "Mouth_Slightly_Open")
#: Nose position between eye and mouth lines of a frontal face (ArcFace template: 0.495), subtracted from pitch.
FRONTAL_PITCH = 0.5


def _column(name: str) -> int:
    try:
        return CELEBA_ATTRIBUTES.index(name)
    except ValueError:
        raise KeyError(f"unknown CelebA attribute {name!r}; expected one of {list(CELEBA_ATTRIBUTES)}") from None


def _binary(attributes: Tensor, names: Sequence[str]) -> Tensor:
    """B×40 attributes (0/1 floats, or ±1 as in the release files) → B×len(names) int64 bits."""
    if attributes.dim() != 2 or attributes.shape[1] != len(CELEBA_ATTRIBUTES):
        raise ValueError(f"attributes must be B×{len(CELEBA_ATTRIBUTES)} (CelebA order); got {tuple(attributes.shape)}")
    cols = torch.tensor([_column(n) for n in names], dtype=torch.long, device=attributes.device)
    return (attributes.index_select(1, cols) > 0).long()


def expression_labels(attributes: Tensor) -> Tensor:
    """2·Smiling + Mouth_Slightly_Open. Shapes: B×40 → B int64 in {0, 1, 2, 3}."""
    bits = _binary(attributes, EXPRESSION_ATTRIBUTES)
    return 2 * bits[:, 0] + bits[:, 1]


def style_labels(attributes: Tensor, style_attributes: Sequence[str] = DEFAULT_STYLE_ATTRIBUTES) -> Tensor:
    """Σ_i 2^i · attribute_i over ``style_attributes``. Shapes: B×40 → B int64 in [0, 2^len)."""
    if not style_attributes:
        raise ValueError("style_attributes is empty")
    bits = _binary(attributes, style_attributes)
    weights = 2 ** torch.arange(len(style_attributes), device=bits.device)
    return (bits * weights).sum(1)


def pose_labels(landmarks: Tensor) -> Tensor:
    """Yaw / pitch / roll proxies (see the module docstring). Shapes: B×5×2 (x, y pixels, CelebA order) → B×3 fp32."""
    if landmarks.dim() != 3 or landmarks.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must be B×5×2; got {tuple(landmarks.shape)}")
    p = landmarks.float()
    left_eye, right_eye, nose = p[:, 0], p[:, 1], p[:, 2]
    eye_mid, mouth_mid = (left_eye + right_eye) / 2, (p[:, 3] + p[:, 4]) / 2
    eye_line = right_eye - left_eye
    interocular = eye_line.norm(dim=1)
    yaw = (nose[:, 0] - eye_mid[:, 0]) / interocular
    pitch = (nose[:, 1] - eye_mid[:, 1]) / (mouth_mid[:, 1] - eye_mid[:, 1]) - FRONTAL_PITCH
    roll = torch.atan2(eye_line[:, 1], eye_line[:, 0])
    return torch.stack([yaw, pitch, roll], dim=1)


def mad_labels(batch: Mapping[str, Any],
               style_attributes: Sequence[str] = DEFAULT_STYLE_ATTRIBUTES) -> dict[str, Tensor | None]:
    """Per-factor labels of a batch for :func:`lrface.losses.disentangle.L_f`.

    Args:
        batch: a collated dataset batch; uses ``identity`` (B), ``attributes`` (B×40, CelebA order) and
            ``landmarks`` (B×5×2) where present.
        style_attributes: CelebA attribute names packed into the style class.

    Returns:
        {"pose": B×3 fp32 | None, "identity": B int64 | None, "style": B int64 | None, "expression": B int64 | None}
        (None where the batch lacks the field).
    """
    identity = batch.get("identity")
    attributes = batch.get("attributes")
    landmarks = batch.get("landmarks")
    return {
        "pose": None if landmarks is None else pose_labels(landmarks),
        "identity": None if identity is None else torch.as_tensor(identity).reshape(-1).long(),
        "style": None if attributes is None else style_labels(attributes, style_attributes),
        "expression": None if attributes is None else expression_labels(attributes),
    }
