"""URL's augmentable variations (seed 001, supp. C: "blur, occlusion and pose"), applied on the fly with their labels.

URL's variation decorrelation loss needs, for every training image, a binary label u_t per variation t (1 = the
variation is present). The three *augmentable* variations are synthesised on the device on a whole batch by
:class:`VariationAugment`, which returns the images and those labels; the *additional* ones (gender, age, smiling)
come from θ_A (:mod:`lrface.variation_labeler`).

Order of application: **pose → occlusion → low resolution**. The occluder is drawn on the turned face (its centre
follows the same homography, so it still lands on the eyes / nose / mouth) and the low-resolution round trip then
degrades face and occluder alike, as a camera would.

* ``pose`` — ``source="warp"`` (real data): the 2-D approximation of a head turn. The face is taken as a plane,
  rotated by a yaw ψ ~ U(−max_yaw, max_yaw) about the vertical axis through the crop centre and re-photographed by a
  pinhole camera of focal length f (:func:`yaw_homography`); pixels that come from outside the crop follow
  ``padding_mode``. Label 1 iff |ψ| ≥ ``threshold_deg``. ``source="label"`` (the synthetic world): no warping; the
  label is |yaw| ≥ ``threshold_deg`` for the rendered head yaw the batch carries (``batch["yaw"]``, radians, read by
  :class:`datamodules.ms1m.MS1MDataset` from the synthetic ``train_pose.tsv``). The synthetic MS1M yaw is ≤ 0.45 rad
  (25.8°, sd 0.25 rad), so a threshold around 15° labels about a third of it "large pose" there.
* ``occlusion`` — with probability ``p`` one occluder covering a fraction U(min_area, max_area) of the image: a
  rectangle or an ellipse (aspect w/h log-uniform in ``aspect``), centred on the eyes, the nose tip or the mouth of
  the ArcFace 112 template (:data:`lrface.align.ARCFACE_TEMPLATE_112`, scaled to the image) ± ``jitter`` of the side,
  filled with a flat colour, uniform noise, or the same region of another image of the batch (a hand, another face
  in front). Edges are anti-aliased over one pixel; pixels outside the shape are left exactly as they were. Label 1
  iff an occluder was drawn.
* ``low_resolution`` — :class:`datamodules.transforms.RandomDegradation` with probability ``p``: area-downscale to a
  side s ~ U{min_size..max_size} and bicubic back to the input size (optionally with its blur / noise / JPEG, off by
  default: the label is about resolution). Label 1 iff the image's effective side is below ``threshold``, i.e. the
  drawn s < threshold (an untouched image counts with its own side). Default threshold 40 px: TinyFace / QMUL-SurvFace
  faces are mostly below it, while from ~40 px up the ArcFace-aligned 112 crop keeps the eye / mouth shapes.

Labels come back as ``{name: B float 0/1}`` in the fixed order :data:`VARIATION_ORDER` restricted to the enabled
variations (:attr:`VariationAugment.names`). Call it on fp32 images in [0, 1] outside autocast (kornia's warps and
resizes), e.g. in the training step; the random draws use ``generator`` (a CPU ``torch.Generator``) when given, else
torch's global CPU RNG, so a seed fixes everything. The module has no parameters or buffers (adds nothing to a
checkpoint).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from datamodules.transforms import RandomDegradation
from lrface.align import ARCFACE_TEMPLATE_112

__all__ = ["OCCLUSION_REGIONS", "VARIATION_ORDER", "VariationAugment", "warp_yaw", "yaw_homography"]

#: Label order of the augmentable variations (URL's "blur, occlusion and pose").
VARIATION_ORDER = ("low_resolution", "occlusion", "pose")
#: Occluder centres on the 112 ArcFace template: eye midpoint, nose tip, mouth-corner midpoint (x, y pixels).
OCCLUSION_REGIONS = {
    "eyes": tuple((a + b) / 2 for a, b in zip(ARCFACE_TEMPLATE_112[0], ARCFACE_TEMPLATE_112[1])),
    "nose": ARCFACE_TEMPLATE_112[2],
    "mouth": tuple((a + b) / 2 for a, b in zip(ARCFACE_TEMPLATE_112[3], ARCFACE_TEMPLATE_112[4])),
}
_SHAPES = ("rectangle", "ellipse")
_FILLS = ("flat", "noise", "patch")


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LowResolutionConfig:
    p: float = 0.5
    min_size: int = 7
    max_size: int = 112
    threshold: int = 40
    blur_sigma: Any = None
    p_blur: float = 0.3
    noise_std: Any = None
    p_noise: float = 0.3
    jpeg_quality: Any = None
    p_jpeg: float = 0.3

    def __post_init__(self):
        _check_p("low_resolution", self.p)
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(f"low_resolution: need 1 ≤ min_size ≤ max_size, got {self.min_size}, {self.max_size}")
        if self.threshold < 1:
            raise ValueError(f"low_resolution.threshold must be ≥ 1 px, got {self.threshold}")


@dataclass(frozen=True)
class OcclusionConfig:
    p: float = 0.5
    min_area: float = 0.05
    max_area: float = 0.25
    aspect: Sequence[float] = (0.5, 2.0)
    shapes: Sequence[str] = _SHAPES
    fills: Sequence[str] = _FILLS
    regions: Sequence[str] = tuple(OCCLUSION_REGIONS)
    jitter: float = 0.05

    def __post_init__(self):
        _check_p("occlusion", self.p)
        if not 0.0 < self.min_area <= self.max_area <= 1.0:
            raise ValueError(f"occlusion: need 0 < min_area ≤ max_area ≤ 1 (fractions of the image), got "
                             f"{self.min_area}, {self.max_area}")
        if len(self.aspect) != 2 or not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"occlusion.aspect must be a (lo, hi) range of w/h > 0, got {self.aspect}")
        for key, allowed in (("shapes", _SHAPES), ("fills", _FILLS), ("regions", tuple(OCCLUSION_REGIONS))):
            value = getattr(self, key)
            if not value or any(v not in allowed for v in value):
                raise ValueError(f"occlusion.{key} must be a non-empty subset of {allowed}, got {value}")
        if self.jitter < 0:
            raise ValueError(f"occlusion.jitter must be ≥ 0, got {self.jitter}")


@dataclass(frozen=True)
class PoseConfig:
    p: float = 0.5
    max_yaw_deg: float = 60.0
    threshold_deg: float = 30.0
    source: str = "warp"
    focal: float = 2.0
    padding_mode: str = "border"

    def __post_init__(self):
        _check_p("pose", self.p)
        if self.source not in ("warp", "label"):
            raise ValueError(f"pose.source must be 'warp' or 'label', got {self.source!r}")
        if self.threshold_deg <= 0:
            raise ValueError(f"pose.threshold_deg must be > 0, got {self.threshold_deg}")
        if self.padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"pose.padding_mode must be zeros / border / reflection, got {self.padding_mode!r}")
        if self.source == "warp":
            if not 0 < self.max_yaw_deg < 90 or self.focal <= 0:
                raise ValueError(f"pose: need 0 < max_yaw_deg < 90 and focal > 0, got {self.max_yaw_deg}, "
                                 f"{self.focal}")
            # the image's far edge must stay in front of the camera: cos ψ − sin ψ / (2 focal) > 0 at ψ = max_yaw
            psi = math.radians(self.max_yaw_deg)
            if math.cos(psi) - math.sin(psi) / (2 * self.focal) <= 0.05:
                raise ValueError(f"pose: max_yaw_deg={self.max_yaw_deg} with focal={self.focal} turns the crop's "
                                 "far edge (nearly) edge-on; lower max_yaw_deg or raise focal")


def _check_p(name: str, p: float) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name}.p must be a probability in [0, 1], got {p}")


def _config(cls, name: str, value: Mapping | None):
    if value is None or value is False:
        return None
    value = {} if value is True else dict(value)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; expected some of {sorted(known)}")
    value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return cls(**value)


# --------------------------------------------------------------------------------------------------------------------
# Pose: the planar-face homography
# --------------------------------------------------------------------------------------------------------------------

def yaw_homography(yaw: Tensor, height: int, width: int, focal: float = 2.0) -> Tensor:
    """Homographies of a planar face turned by ``yaw`` about the vertical axis through the image centre.

    A pinhole camera of focal length ``f = focal · width`` pixels, principal point at the image centre, sees the face
    plane fronto-parallel (the input image). Turning the plane by ψ about its vertical centre line and projecting
    again maps centred pixel coordinates (x, y) to ``(x cos ψ, y) / (1 − x sin ψ / f)``: the depth d of the plane
    cancels, only f / width sets the strength of the perspective. ψ > 0 brings the image's right half (x > 0)
    towards the camera (it shrinks by cos ψ but is magnified by perspective) and pushes the left half away (it shrinks
    more); f → ∞ leaves the affine cos ψ squeeze. ``focal=2`` (default): a 112 px ArcFace crop spans about 20 cm of
    head (inter-ocular 35 px ≈ 6.3 cm), so f = 224 px is that head seen from about 40 cm, a webcam / phone distance.

    Args:
        yaw: B angles ψ in radians.
        height, width: image size in pixels (pixel centres at integers, ``align_corners=True``).
        focal: focal length in units of the image width.

    Returns:
        B×3×3 float32 matrices mapping source pixel (u, v, 1) to destination pixel coordinates (kornia's ``M``).
    """
    yaw = yaw.to(torch.float32)
    b = yaw.shape[0]
    f = float(focal) * width
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    h = torch.zeros(b, 3, 3, dtype=torch.float32, device=yaw.device)
    h[:, 0, 0] = torch.cos(yaw)
    h[:, 1, 1] = 1.0
    h[:, 2, 0] = -torch.sin(yaw) / f
    h[:, 2, 2] = 1.0
    shift = torch.eye(3, device=yaw.device).repeat(b, 1, 1)
    back = shift.clone()
    shift[:, 0, 2], shift[:, 1, 2] = -cx, -cy
    back[:, 0, 2], back[:, 1, 2] = cx, cy
    return back @ h @ shift


def warp_yaw(images: Tensor, yaw: Tensor, focal: float = 2.0, padding_mode: str = "border") -> Tensor:
    """Warp B×C×H×W images by :func:`yaw_homography` (bilinear, kornia ``warp_perspective``); B×C×H×W out."""
    import kornia

    h, w = images.shape[-2:]
    m = yaw_homography(yaw.to(images.device), h, w, focal)
    out = kornia.geometry.transform.warp_perspective(images, m, (h, w), mode="bilinear", padding_mode=padding_mode,
                                                     align_corners=True)
    return out.clamp(0.0, 1.0)


def _apply_homography(m: Tensor, points: Tensor) -> Tensor:
    """B×3×3 matrices applied to B×2 points → B×2."""
    ones = torch.ones_like(points[:, :1])
    p = torch.einsum("bij,bj->bi", m, torch.cat([points, ones], dim=1))
    return p[:, :2] / p[:, 2:]


# --------------------------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------------------------

class VariationAugment(nn.Module):
    """URL's augmentable variations with their binary labels, batched on the device (see the module docstring).

    Args:
        low_resolution: ``{p, min_size=7, max_size=112, threshold=40, blur_sigma, p_blur, noise_std, p_noise,
            jpeg_quality, p_jpeg}`` (the last six: :class:`~datamodules.transforms.RandomDegradation`'s, off by
            default) or None (off).
        occlusion: ``{p, min_area=0.05, max_area=0.25, aspect=(0.5, 2), shapes=(rectangle, ellipse),
            fills=(flat, noise, patch), regions=(eyes, nose, mouth), jitter=0.05}`` (areas as fractions of the
            image, jitter of the side) or None.
        pose: ``{p, max_yaw_deg=60, threshold_deg=30, source="warp" | "label", focal=2, padding_mode="border"}`` or
            None. With ``source="label"`` only ``threshold_deg`` matters.

    ``p`` defaults to 0.5 for each variation; a config ``{}`` enables the variation with every default.
    """

    def __init__(self, low_resolution: Mapping | None = None, occlusion: Mapping | None = None,
                 pose: Mapping | None = None):
        super().__init__()
        self.low_resolution = _config(LowResolutionConfig, "low_resolution", low_resolution)
        self.occlusion = _config(OcclusionConfig, "occlusion", occlusion)
        self.pose = _config(PoseConfig, "pose", pose)
        lr = self.low_resolution
        self.degrade = None if lr is None else RandomDegradation(
            lr.min_size, lr.max_size, p=lr.p, blur_sigma=lr.blur_sigma, p_blur=lr.p_blur, noise_std=lr.noise_std,
            p_noise=lr.p_noise, jpeg_quality=lr.jpeg_quality, p_jpeg=lr.p_jpeg, upsample_back=True, out_size=None)

    @property
    def names(self) -> tuple[str, ...]:
        """The enabled variations, in label order (:data:`VARIATION_ORDER`)."""
        return tuple(n for n in VARIATION_ORDER if getattr(self, n) is not None)

    def forward(self, images: Tensor, batch: Mapping[str, Any] | None = None,
                generator: torch.Generator | None = None, return_params: bool = False):
        """Apply pose → occlusion → low resolution.

        Args:
            images: B×3×H×W fp32 in [0, 1] (ArcFace-aligned crops: the occluder regions assume that framing).
            batch: the training batch; ``pose.source="label"`` reads ``batch["yaw"]`` (B radians) from it.
            generator: CPU ``torch.Generator`` for every random draw (None = torch's global CPU RNG).
            return_params: also return what was drawn: ``yaw`` (B radians: applied ψ, or the batch's yaw with
                ``source="label"``), ``low_resolution_side`` (B int64 effective short side), ``occlusion_box``
                (B×4 cx, cy, w, h in pixels; NaN where none) and ``occlusion_mask`` (B×1×H×W coverage in [0, 1]).

        Returns:
            ``(images, labels)`` (+ ``params``): B×3×H×W in [0, 1] and ``{name: B float32 0/1}`` on the images'
            device, keys in :attr:`names` order.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected B×3×H×W images, got {tuple(images.shape)}")
        b, _, h, w = images.shape
        dev = images.device
        labels: dict[str, Tensor] = {}
        params: dict[str, Tensor] = {}
        out = images
        homography = torch.eye(3, device=dev).repeat(b, 1, 1)

        if self.pose is not None:
            cfg = self.pose
            if cfg.source == "label":
                yaw = self._batch_yaw(batch, b).to(dev)
            else:
                apply = torch.rand(b, generator=generator) < cfg.p
                psi = (2 * torch.rand(b, generator=generator) - 1) * math.radians(cfg.max_yaw_deg)
                yaw = torch.where(apply, psi, torch.zeros(b)).to(dev)
                idx = apply.nonzero().squeeze(1).to(dev)
                if idx.numel():
                    out = out.index_copy(0, idx, warp_yaw(out[idx], yaw[idx], cfg.focal, cfg.padding_mode))
                    homography = yaw_homography(yaw, h, w, cfg.focal)
            labels["pose"] = (yaw.abs() >= math.radians(cfg.threshold_deg)).float()
            params["yaw"] = yaw

        if self.occlusion is not None:
            out, labels["occlusion"], box, mask = self._occlude(out, homography, generator)
            params["occlusion_box"], params["occlusion_mask"] = box, mask

        if self.low_resolution is not None:
            out, sizes = self.degrade(out, return_sizes=True, generator=generator)
            side = sizes.min(dim=1).values
            labels["low_resolution"] = (side < self.low_resolution.threshold).float().to(dev)
            params["low_resolution_side"] = side.to(dev)

        labels = {name: labels[name] for name in self.names}
        return (out, labels, params) if return_params else (out, labels)

    @staticmethod
    def _batch_yaw(batch: Mapping[str, Any] | None, b: int) -> Tensor:
        if batch is None or "yaw" not in batch:
            raise ValueError("pose.source='label' needs the rendered head yaw in the batch (batch['yaw'], B radians): "
                             "the synthetic MS1M's train_pose.tsv, read by datamodules.ms1m.MS1MDataset; real data "
                             "has no such ground truth, use pose.source='warp'")
        yaw = torch.as_tensor(batch["yaw"], dtype=torch.float32).reshape(-1)
        if yaw.numel() != b:
            raise ValueError(f"batch['yaw'] has {yaw.numel()} values for {b} images")
        return yaw

    def _occlude(self, x: Tensor, homography: Tensor, generator: torch.Generator | None):
        cfg = self.occlusion
        b, c, h, w = x.shape
        dev = x.device
        apply = torch.rand(b, generator=generator) < cfg.p
        area = (cfg.min_area + (cfg.max_area - cfg.min_area) * torch.rand(b, generator=generator)) * (h * w)
        lo, hi = math.log(cfg.aspect[0]), math.log(cfg.aspect[1])
        aspect = torch.exp(lo + (hi - lo) * torch.rand(b, generator=generator))
        shape = torch.randint(len(cfg.shapes), (b,), generator=generator)
        fill = torch.randint(len(cfg.fills), (b,), generator=generator)
        region = torch.randint(len(cfg.regions), (b,), generator=generator)
        jitter = (2 * torch.rand(b, 2, generator=generator) - 1) * cfg.jitter * torch.tensor([w, h])
        colour = torch.rand(b, c, generator=generator)
        other = (torch.arange(b) + torch.randint(1, max(b, 2), (b,), generator=generator)) % b

        ellipse = torch.tensor([cfg.shapes[int(s)] == "ellipse" for s in shape])
        covered = torch.where(ellipse, area * 4 / math.pi, area)  # an ellipse fills π/4 of its box
        bw = torch.sqrt(covered * aspect).clamp(1.0, float(w))
        bh = torch.sqrt(covered / aspect).clamp(1.0, float(h))
        anchors = torch.tensor([OCCLUSION_REGIONS[r] for r in cfg.regions], dtype=torch.float32)
        anchors = anchors * torch.tensor([w / 112.0, h / 112.0])
        centre = _apply_homography(homography.cpu(), anchors[region]) + jitter  # follows the pose warp
        centre = torch.stack([centre[:, 0].clamp(0, w - 1), centre[:, 1].clamp(0, h - 1)], dim=1)

        ys = torch.arange(h, dtype=torch.float32, device=dev).view(1, h, 1)
        xs = torch.arange(w, dtype=torch.float32, device=dev).view(1, 1, w)
        cx, cy = (centre[:, 0].to(dev).view(b, 1, 1), centre[:, 1].to(dev).view(b, 1, 1))
        hw, hh = (bw / 2).to(dev).view(b, 1, 1), (bh / 2).to(dev).view(b, 1, 1)
        # coverage with a one-pixel anti-aliased edge: 1 inside, 0 beyond half a pixel outside the boundary
        rect = (hw - (xs - cx).abs() + 0.5).clamp(0, 1) * (hh - (ys - cy).abs() + 0.5).clamp(0, 1)
        # ellipse: first-order signed distance (1 − r) / |∇r| to the boundary, kept inside the rectangle's rim
        dx, dy = xs - cx, ys - cy
        r = torch.sqrt((dx / hw) ** 2 + (dy / hh) ** 2)
        grad = torch.sqrt((dx / hw ** 2) ** 2 + (dy / hh ** 2) ** 2) / r.clamp_min(1e-6)
        ell = torch.where(r < 0.5, 1.0, ((1 - r) / grad.clamp_min(1e-6) + 0.5).clamp(0, 1))
        ell = torch.minimum(ell, rect)
        mask = torch.where(ellipse.to(dev).view(b, 1, 1), ell, rect)
        mask = (mask * apply.to(dev, mask.dtype).view(b, 1, 1)).unsqueeze(1)

        kinds = [cfg.fills[int(f)] for f in fill]
        if b < 2:  # no other image to cut a patch from
            kinds = ["flat" if k == "patch" else k for k in kinds]
        content = colour.to(dev, x.dtype).view(b, c, 1, 1).expand(b, c, h, w)
        noisy = [i for i in range(b) if kinds[i] == "noise" and apply[i]]
        patch = [i for i in range(b) if kinds[i] == "patch" and apply[i]]
        if noisy or patch:
            content = content.clone()
        if noisy:
            idx = torch.tensor(noisy, device=dev)
            content[idx] = torch.rand(len(noisy), c, h, w, generator=generator).to(dev, x.dtype)
        if patch:
            idx = torch.tensor(patch)
            content[idx.to(dev)] = x[other[idx].to(dev)]
        out = x * (1 - mask) + content * mask
        nan = torch.full((b,), float("nan"))
        box = torch.stack([torch.where(apply, centre[:, 0], nan), torch.where(apply, centre[:, 1], nan),
                           torch.where(apply, bw, nan), torch.where(apply, bh, nan)], dim=1).to(dev)
        return out, apply.float().to(dev), box, mask

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={getattr(self, n)}" for n in VARIATION_ORDER)
