"""AdaFace's training augmentations as a per-sample dataset ``transform`` (uint8 H×W×3 RGB in and out).

Kim, Jain and Liu, "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022; behaviour of the official
``dataset/augmenter.py`` + the ``RandomHorizontalFlip`` of its training transform, re-implemented. In this order,
each with its own probability:

1. crop (``crop_p``): a ``RandomResizedCrop`` box (scale (0.2, 1), aspect (3/4, 4/3), torchvision's sampling with
   10 tries and its centre-crop fallback) is kept *at its place* and everything outside it is set to 0. Nothing is
   resized: only the box parameters of RandomResizedCrop are used.
2. low resolution (``low_res_p``): side ratio r ~ U(0.2, 1), resize to an ``int(r·H)`` square with a random OpenCV
   interpolation (nearest, linear, area, cubic, Lanczos-4), then back to H×W with another random one.
3. photometric (``photometric_p``): ``ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0)``: factors
   ~ U(0.5, 1.5), the three ops in random order, each PIL ``ImageEnhance`` (as torchvision does on PIL images).
4. horizontal flip (``flip``).

Channel order: the official pipeline feeds BGR arrays to PIL as if they were RGB. Brightness (a per-channel scale) and
the geometric / resampling ops do not care, but contrast (blend with the mean *luma*) and saturation (blend with the
per-pixel luma) weight the channels 0.299 / 0.587 / 0.114, so on BGR data the red and blue weights are swapped. With
``photometric_order="bgr"`` (default) the jitter runs on the BGR view of our RGB image and reproduces the official
bytes; ``"rgb"`` uses the ordinary RGB luma.

Randomness: one ``numpy.random.Generator``, reseeded by ``set_random_seed`` (``datamodules.base.worker_init_fn`` calls
it per worker / epoch / rank), so a seed fixes every draw.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from lrface.align import FIVE_POINT_FLIP

__all__ = ["INTERPOLATIONS", "AdaFaceAugment"]


def _interpolations() -> tuple[int, ...]:
    import cv2

    return (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)


#: The OpenCV interpolations the low-resolution augmentation draws from (down and up independently).
INTERPOLATIONS = _interpolations()


class AdaFaceAugment:
    """The official AdaFace augmenter + flip; ``t(image)`` or ``t(image, keypoints)``.

    Args:
        low_res_p: probability of the low-resolution round trip (recipe 0.2).
        crop_p: probability of the zero-padded random crop (recipe 0.2).
        photometric_p: probability of the colour jitter (recipe 0.2).
        flip: probability of a horizontal flip (0.5, the official ``RandomHorizontalFlip``).
        seed: initial seed; ``None`` → drawn from torch's seed, so ``seed_everything`` makes single-process runs
            reproducible (DataLoader workers are reseeded anyway).
        crop_scale: area fraction range of the crop box.
        crop_ratio: aspect-ratio (w/h) range of the crop box.
        low_res_range: range of the side ratio r of the low-resolution round trip.
        brightness, contrast, saturation: jitter strengths x (factor ~ U(1 − x, 1 + x)).
        photometric_order: ``"bgr"`` (the official byte-exact behaviour) or ``"rgb"`` (see module docstring).
        flip_pairs: permutation of the keypoints after a flip (5-point layout: swap eyes and mouth corners), or None.

    Keypoints (N×2 float x, y pixel centres at integers) follow the flip (x' = W − 1 − x, then ``flip_pairs``); the
    crop, low-resolution and photometric ops leave every pixel where it was.
    """

    handles_keypoints = True

    def __init__(self, low_res_p: float = 0.2, crop_p: float = 0.2, photometric_p: float = 0.2, flip: float = 0.5,
                 seed: int | None = None, crop_scale: Sequence[float] = (0.2, 1.0),
                 crop_ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0), low_res_range: Sequence[float] = (0.2, 1.0),
                 brightness: float = 0.5, contrast: float = 0.5, saturation: float = 0.5,
                 photometric_order: str = "bgr", flip_pairs: Sequence[int] | None = FIVE_POINT_FLIP):
        for name, p in (("low_res_p", low_res_p), ("crop_p", crop_p), ("photometric_p", photometric_p),
                        ("flip", flip)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if photometric_order not in ("bgr", "rgb"):
            raise ValueError(f"photometric_order must be 'bgr' or 'rgb', got {photometric_order!r}")
        self.low_res_p, self.crop_p, self.photometric_p = float(low_res_p), float(crop_p), float(photometric_p)
        self.flip = float(flip)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.low_res_range = (float(low_res_range[0]), float(low_res_range[1]))
        if not 0.0 < self.low_res_range[0] <= self.low_res_range[1] <= 1.0:
            raise ValueError(f"low_res_range must lie in (0, 1], got {low_res_range}")
        self.jitter = (float(brightness), float(contrast), float(saturation))
        self.photometric_order = photometric_order
        self.flip_pairs = None if flip_pairs is None else np.asarray(flip_pairs, dtype=np.int64)
        self.set_random_seed(torch.initial_seed() % 2**32 if seed is None else seed)

    def set_random_seed(self, seed: int | None) -> None:
        """Restart the random stream (called per worker / epoch by ``datamodules.base.worker_init_fn``)."""
        self.rng = np.random.default_rng(seed)

    # ---------------------------------------------------------------------------------------------------- ops
    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w) of a random box."""
        area = height * width
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        for _ in range(10):
            target_area = area * self.rng.uniform(*self.crop_scale)
            aspect = math.exp(self.rng.uniform(log_lo, log_hi))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(self.rng.integers(0, height - h + 1))
                left = int(self.rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            w, h = width, round(width / self.crop_ratio[0])
        elif in_ratio > self.crop_ratio[1]:
            h, w = height, round(height * self.crop_ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def crop(self, image: np.ndarray) -> np.ndarray:
        top, left, h, w = self.crop_box(*image.shape[:2])
        out = np.zeros_like(image)
        out[top:top + h, left:left + w] = image[top:top + h, left:left + w]
        return out

    def low_resolution(self, image: np.ndarray) -> np.ndarray:
        import cv2

        height, width = image.shape[:2]
        ratio = self.rng.uniform(*self.low_res_range)
        # The official code makes a square of the *height* whatever the aspect (its faces are 112×112).
        side = max(int(ratio * height), 1)
        down = INTERPOLATIONS[int(self.rng.integers(len(INTERPOLATIONS)))]
        small = cv2.resize(image, (side, side), interpolation=down)
        up = INTERPOLATIONS[int(self.rng.integers(len(INTERPOLATIONS)))]
        return cv2.resize(small, (width, height), interpolation=up)

    def photometric(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image, ImageEnhance

        order = self.rng.permutation(3)
        factors = [self.rng.uniform(max(0.0, 1.0 - x), 1.0 + x) for x in self.jitter]
        bgr = self.photometric_order == "bgr"
        pil = Image.fromarray(np.ascontiguousarray(image[..., ::-1] if bgr else image))
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        for op in order:
            if self.jitter[op] > 0:
                pil = enhancers[op](pil).enhance(factors[op])
        out = np.asarray(pil)
        return np.ascontiguousarray(out[..., ::-1] if bgr else out)

    # ---------------------------------------------------------------------------------------------------- call
    def __call__(self, image: np.ndarray, keypoints: np.ndarray | None = None):
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise ValueError(f"expected an H×W×3 uint8 RGB image, got {getattr(image, 'dtype', type(image))} "
                             f"{getattr(image, 'shape', '')}")
        out = image
        if self.rng.random() < self.crop_p:
            out = self.crop(out)
        if self.rng.random() < self.low_res_p:
            out = self.low_resolution(out)
        if self.rng.random() < self.photometric_p:
            out = self.photometric(out)
        flipped = self.rng.random() < self.flip
        if flipped:
            out = out[:, ::-1]
        out = np.ascontiguousarray(out)
        if keypoints is None:
            return out
        kp = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2).copy()
        if flipped:
            kp[:, 0] = image.shape[1] - 1 - kp[:, 0]
            if self.flip_pairs is not None and len(self.flip_pairs) == len(kp):
                kp = kp[self.flip_pairs]
        return out, kp

    def __repr__(self) -> str:
        return (f"AdaFaceAugment(low_res_p={self.low_res_p}, crop_p={self.crop_p}, photometric_p={self.photometric_p}, "
                f"flip={self.flip}, photometric_order={self.photometric_order!r})")
