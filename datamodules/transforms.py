"""Training augmentations: albumentations on CPU workers, kornia degradations batched on the device.

Two stages, because they have different needs:

* :class:`AlbumentationsTransform` (built by :func:`build_train_augment`) is the per-sample ``transform`` a dataset
  applies to its uint8 H×W×3 RGB array in a DataLoader worker: flip, colour, blur, JPEG, coarse dropout. It carries
  the 5 face landmarks through geometric ops and keeps their *semantic* order after a flip (see below).
  albumentations 2.0.8 never reseeds itself per worker, so every worker (and, without persistent workers, every
  epoch) would replay the same random stream; ``datamodules.base.worker_init_fn`` calls our ``set_random_seed``
  with a per-worker, per-epoch, per-rank seed.
* :class:`RandomDegradation` is an ``nn.Module`` run on the device on a whole batch (e.g. in
  ``on_after_batch_transfer``): random downscale to any resolution in [min_size, max_size] and optionally back up,
  blur, noise, JPEG. It is differentiable w.r.t. its input, and never runs inside workers (kornia + torch RNG in
  workers repeat across epochs, Lightning #20412).

Flip and landmarks: albumentations mirrors keypoint x (``x' = W - 1 - x``) but keeps their order, which would turn
"left eye" into a point on the right eye. The wrapper records whether a ``HorizontalFlip`` fired (Compose
``save_applied_params``) and then permutes the points with ``flip_pairs`` (for the 5-point layout
``(1, 0, 2, 4, 3)``: swap the eyes and the mouth corners).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lrface.align import FIVE_POINT_FLIP

DEFAULT_COLOR = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.5}
DEFAULT_BLUR = {"blur_limit": 0, "sigma_limit": (0.3, 1.5), "p": 0.2}
DEFAULT_COARSE_DROPOUT = {"num_holes_range": (1, 2), "hole_height_range": (0.1, 0.25),
                          "hole_width_range": (0.1, 0.25), "fill": 0, "p": 0.2}


class AlbumentationsTransform:
    """Callable wrapper of an albumentations ``Compose`` for dataset items.

    Args:
        compose: an ``A.Compose``. For landmark support it must have been built with
            ``keypoint_params=A.KeypointParams(format="xy", remove_invisible=False)`` and
            ``save_applied_params=True`` (:func:`build_train_augment` does this).
        flip_pairs: permutation applied to keypoints after an odd number of horizontal flips, or None to leave the
            order alone. Only applied to point sets of the same length.

    Call ``t(image)`` → image, or ``t(image, keypoints)`` → ``(image, keypoints)``; images are H×W×3 uint8 RGB,
    keypoints N×2 float (x, y) pixel coordinates (pixel centres at integers).
    """

    handles_keypoints = True

    def __init__(self, compose: Any, flip_pairs: Sequence[int] | None = FIVE_POINT_FLIP):
        self.compose = compose
        self.flip_pairs = None if flip_pairs is None else np.asarray(flip_pairs, dtype=np.int64)

    def set_random_seed(self, seed: int | None) -> None:
        """Reseed the underlying Compose (called per worker / epoch by ``datamodules.base.worker_init_fn``)."""
        self.compose.set_random_seed(seed)

    def __call__(self, image: np.ndarray, keypoints: np.ndarray | None = None):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 uint8 RGB image, got {image.dtype} {image.shape}")
        if keypoints is None:
            return self.compose(image=image)["image"]
        keypoints = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2)
        out = self.compose(image=image, keypoints=keypoints)
        if "keypoints" not in out:
            raise ValueError("the Compose was built without keypoint_params; landmarks cannot follow it")
        kp = np.asarray(out["keypoints"], dtype=np.float32)[:, :2]
        if len(kp) != len(keypoints):
            raise ValueError("the Compose dropped keypoints: build it with KeypointParams(remove_invisible=False)")
        applied = out.get("applied_transforms")
        if applied is None and self.flip_pairs is not None:
            raise ValueError("the Compose must be built with save_applied_params=True to keep landmark order")
        n_flips = sum(name == "HorizontalFlip" for name, _ in (applied or ()))
        if n_flips % 2 == 1 and self.flip_pairs is not None and len(self.flip_pairs) == len(kp):
            kp = kp[self.flip_pairs]
        return out["image"], kp

    def __repr__(self) -> str:
        return f"AlbumentationsTransform({self.compose!r})"


def _kwargs(value: Mapping | None, defaults: Mapping) -> dict | None:
    if value is None or value is False:
        return None
    if value is True:
        return dict(defaults)
    out = dict(defaults)
    out.update({k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(value).items()})
    return out


def build_train_augment(flip: float = 0.5, color: Mapping | bool | None = True, blur: Mapping | bool | None = True,
                        jpeg: Sequence[int] | None = (30, 90), jpeg_p: float = 0.3,
                        coarse_dropout: Mapping | bool | None = True, strict: bool = True, seed: int | None = None,
                        flip_pairs: Sequence[int] | None = FIVE_POINT_FLIP) -> AlbumentationsTransform:
    """The training augmentation pipeline (albumentations 2.0.8 argument names).

    Args:
        flip: probability of ``A.HorizontalFlip`` (0 disables it).
        color: kwargs of ``A.ColorJitter`` (``True`` = :data:`DEFAULT_COLOR`, ``None``/``False`` = off).
        blur: kwargs of ``A.GaussianBlur`` (``blur_limit=0`` derives the kernel from ``sigma_limit``).
        jpeg: ``quality_range`` of ``A.ImageCompression`` (``None`` = off); applied with probability ``jpeg_p``.
        jpeg_p: probability of the JPEG round trip.
        coarse_dropout: kwargs of ``A.CoarseDropout`` (``num_holes_range``, ``hole_height_range``,
            ``hole_width_range``, ``fill``, ``p``).
        strict: albumentations strict mode: an unknown / removed argument name (e.g. 1.x ``max_holes``) raises
            ``ValueError`` instead of being silently ignored.
        seed: initial Compose seed; ``None`` → drawn from torch's seed, so ``seed_everything`` makes single-process
            (``num_workers=0``) runs reproducible (DataLoader workers are reseeded per worker and epoch anyway).
        flip_pairs: keypoint permutation after a flip (see module docstring).

    Returns:
        An :class:`AlbumentationsTransform`.
    """
    import albumentations as A

    if seed is None:
        seed = torch.initial_seed() % 2**32
    ops: list = []
    if flip:
        ops.append(A.HorizontalFlip(p=float(flip), strict=strict))
    if (kw := _kwargs(color, DEFAULT_COLOR)) is not None:
        ops.append(A.ColorJitter(**kw, strict=strict))
    if (kw := _kwargs(blur, DEFAULT_BLUR)) is not None:
        ops.append(A.GaussianBlur(**kw, strict=strict))
    if jpeg is not None:
        lo, hi = (int(q) for q in jpeg)
        ops.append(A.ImageCompression(compression_type="jpeg", quality_range=(lo, hi), p=jpeg_p, strict=strict))
    if (kw := _kwargs(coarse_dropout, DEFAULT_COARSE_DROPOUT)) is not None:
        ops.append(A.CoarseDropout(**kw, strict=strict))
    compose = A.Compose(ops, keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
                        save_applied_params=True, strict=strict, seed=seed)
    return AlbumentationsTransform(compose, flip_pairs=flip_pairs)


def _as_range(value: float | Sequence[float] | None, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return (0.0, float(value))
    lo, hi = (float(v) for v in value)
    if lo > hi or lo < 0:
        raise ValueError(f"{name} must be a non-negative (lo, hi) range, got {value}")
    return lo, hi


def resize_tensor(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize B×C×H×W images in [0, 1] to ``size`` (h, w): area when shrinking (no aliasing), bicubic when growing,
    clamped to [0, 1] because bicubic overshoots (a step edge reaches about -0.11..1.11)."""
    import kornia

    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if size[0] <= h and size[1] <= w:
        return kornia.geometry.transform.resize(x, size, interpolation="area")
    y = kornia.geometry.transform.resize(x, size, interpolation="bicubic", align_corners=False)
    return y.clamp(0.0, 1.0)


class RandomDegradation(nn.Module):
    """Batched random low-resolution degradation on the device (the LR-face training input).

    Per sample, with probability ``p``: Gaussian blur (``p_blur``, sigma in ``blur_sigma``) at the input
    resolution → area downscale to a random side ``s`` ∈ [min_size, max_size] (integer, uniform; the short side for
    non-square inputs, aspect kept) → additive Gaussian noise (``p_noise``, std in ``noise_std``) → JPEG round trip
    at the low resolution (``p_jpeg``, quality in ``jpeg_quality``, kornia's differentiable codec) → bicubic
    upscale to ``out_size`` if ``upsample_back`` → clamp to [0, 1]. Samples not selected keep their content
    (only resized to ``out_size`` when ``upsample_back``).

    Samples are grouped by their drawn size so each distinct size is one batched resize (at most
    ``max_size - min_size + 1`` groups, usually far fewer than the batch), and the results are scattered back in
    the original order. With ``upsample_back=False`` each sample stays at its low resolution (``out_size`` is
    ignored; untouched samples keep the input size): a tensor if all sizes agree, else a list of C×h×w tensors.

    Everything applied to the image is differentiable (area/bicubic resize, blur, additive noise,
    ``jpeg_codec_differentiable``); the random draws use ``generator`` (CPU) if given, else torch's global RNG.
    Call it on fp32 outside autocast (e.g. in ``on_after_batch_transfer``): kornia's ops have had half-precision
    and autocast bugs, and the degradation is cheap next to the network.

    Args:
        min_size, max_size: range of the low-resolution side.
        p: probability a sample is degraded.
        blur_sigma: (lo, hi) sigma range, or None to disable. A scalar x means (0, x).
        p_blur: probability of blur for a degraded sample.
        noise_std: (lo, hi) std range in [0, 1] units, or None.
        p_noise: probability of noise for a degraded sample.
        jpeg_quality: (lo, hi) JPEG quality range, or None.
        p_jpeg: probability of JPEG for a degraded sample.
        upsample_back: upscale to ``out_size`` (bicubic) after degrading.
        out_size: output side when ``upsample_back`` (None = input size).
    """

    def __init__(self, min_size: int = 7, max_size: int = 112, p: float = 1.0,
                 blur_sigma: float | Sequence[float] | None = (0.2, 1.5), p_blur: float = 0.3,
                 noise_std: float | Sequence[float] | None = (0.0, 0.03), p_noise: float = 0.3,
                 jpeg_quality: Sequence[float] | None = (30, 90), p_jpeg: float = 0.3,
                 upsample_back: bool = True, out_size: int | None = 112):
        super().__init__()
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 ≤ min_size ≤ max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.p, self.p_blur, self.p_noise, self.p_jpeg = float(p), float(p_blur), float(p_noise), float(p_jpeg)
        self.blur_sigma = _as_range(blur_sigma, "blur_sigma")
        self.noise_std = _as_range(noise_std, "noise_std")
        self.jpeg_quality = None if jpeg_quality is None else tuple(float(q) for q in jpeg_quality)
        if self.jpeg_quality is not None and not (1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100):
            raise ValueError(f"jpeg_quality must be a (lo, hi) range within [1, 100], got {jpeg_quality}")
        self.upsample_back = upsample_back
        self.out_size = out_size

    def _uniform(self, n: int, lo: float, hi: float, generator) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    def forward(self, x: Tensor, *, return_sizes: bool = False, generator: torch.Generator | None = None):
        """Degrade a batch.

        Args:
            x: B×C×H×W in [0, 1].
            return_sizes: also return the B×2 int64 low-resolution [h, w] each sample went through (its input
                size if it was not degraded).
            generator: optional CPU ``torch.Generator`` for the random draws.

        Returns:
            B×C×S×S tensor in [0, 1] (S = ``out_size`` or the input size); with ``upsample_back=False`` the
            low-resolution images (a tensor if their sizes agree, else a list of B C×h×w tensors); and, if asked,
            the B×2 sizes.
        """
        import kornia

        if x.dim() != 4:
            raise ValueError(f"expected B×C×H×W, got {tuple(x.shape)}")
        b, _, h, w = x.shape
        dev = x.device
        degrade = torch.rand(b, generator=generator) < self.p
        sides = torch.randint(self.min_size, self.max_size + 1, (b,), generator=generator)
        short = min(h, w)
        sides = sides.clamp_max(short)  # never "degrade" by enlarging an input smaller than max_size
        lr_h = torch.where(degrade, (sides * h / short).round().long().clamp_min(1), torch.full((b,), h))
        lr_w = torch.where(degrade, (sides * w / short).round().long().clamp_min(1), torch.full((b,), w))

        y = x
        if self.blur_sigma is not None:
            use = degrade & (torch.rand(b, generator=generator) < self.p_blur)
            if use.any():
                sigma = self._uniform(b, *self.blur_sigma, generator).clamp_min(1e-3)
                idx = use.nonzero().squeeze(1)
                s = sigma[idx].to(dev, x.dtype)
                k = int(2 * int(3.0 * float(s.max()) + 0.5) + 1)
                k = max(1, min(k, 2 * ((min(h, w) - 1) // 2) + 1))  # reflect padding needs k // 2 < the image side
                blurred = kornia.filters.gaussian_blur2d(y[idx.to(dev)], (k, k), torch.stack([s, s], dim=1))
                y = y.index_copy(0, idx.to(dev), blurred)

        out_hw = (h, w) if self.out_size is None else (self.out_size, self.out_size)
        noise_use = degrade & (torch.rand(b, generator=generator) < self.p_noise) if self.noise_std else None
        noise_sd = self._uniform(b, *self.noise_std, generator) if self.noise_std else None
        jpeg_use = degrade & (torch.rand(b, generator=generator) < self.p_jpeg) if self.jpeg_quality else None
        jpeg_q = self._uniform(b, *self.jpeg_quality, generator) if self.jpeg_quality else None

        outputs: list[Tensor | None] = [None] * b
        keys = torch.stack([lr_h, lr_w], dim=1)
        for key in torch.unique(keys, dim=0):
            members = (keys == key).all(dim=1).nonzero().squeeze(1)
            group = y[members.to(dev)]
            lr = resize_tensor(group, (int(key[0]), int(key[1])))
            if noise_use is not None and noise_use[members].any():
                sd = (noise_sd[members] * noise_use[members]).to(dev, x.dtype)
                noise = torch.randn(lr.shape, generator=generator).to(dev, x.dtype)
                lr = (lr + sd[:, None, None, None] * noise).clamp(0.0, 1.0)
            if jpeg_use is not None and jpeg_use[members].any():
                sel = jpeg_use[members].nonzero().squeeze(1)
                q = jpeg_q[members][sel].to(dev, lr.dtype)
                coded = kornia.enhance.jpeg_codec_differentiable(lr[sel.to(dev)], q).clamp(0.0, 1.0)
                lr = lr.index_copy(0, sel.to(dev), coded)
            if self.upsample_back:
                lr = resize_tensor(lr, out_hw)
            for j, i in enumerate(members.tolist()):
                outputs[i] = lr[j]
        if all(o.shape == outputs[0].shape for o in outputs):
            result: Tensor | list[Tensor] = torch.stack(outputs)
        else:
            result = outputs
        sizes = torch.stack([lr_h, lr_w], dim=1)
        return (result, sizes) if return_sizes else result

    def extra_repr(self) -> str:
        return (f"size=[{self.min_size}, {self.max_size}], p={self.p}, blur_sigma={self.blur_sigma}, "
                f"noise_std={self.noise_std}, jpeg_quality={self.jpeg_quality}, upsample_back={self.upsample_back}, "
                f"out_size={self.out_size}")


def resize_uint8(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resize an H×W×3 uint8 image to ``size`` (side or (height, width)) with PIL bicubic.

    PIL's bicubic widens its kernel when shrinking, so downscaling is antialiased; the dataset ``image_size``
    option uses this.
    """
    from PIL import Image

    out_h, out_w = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if image.shape[:2] == (out_h, out_w):
        return image
    return np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BICUBIC))


def scale_points(points: np.ndarray, from_hw: Sequence[int], to_hw: Sequence[int]) -> np.ndarray:
    """Map N×2 (x, y) pixel coordinates (centres at integers) through a resize from ``from_hw`` to ``to_hw``."""
    sx, sy = to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]
    points = np.asarray(points, dtype=np.float32)
    return np.stack([(points[:, 0] + 0.5) * sx - 0.5, (points[:, 1] + 0.5) * sy - 0.5], axis=1).astype(np.float32)


def apply_transform(transform, image: np.ndarray, keypoints: np.ndarray | None = None):
    """Apply a per-sample ``transform`` to an H×W×3 uint8 image (and its keypoints when it can carry them).

    A transform with ``handles_keypoints = True`` (:class:`AlbumentationsTransform`) moves the points with the
    image. Any other callable gets the image only and must be photometric (or the caller must not use the points):
    if it changes the image size, the points are rescaled to the new size.

    Returns:
        ``(image, keypoints)``; ``keypoints`` is None if none were given.
    """
    if transform is None:
        return image, keypoints
    if keypoints is not None and getattr(transform, "handles_keypoints", False):
        return transform(image, keypoints)
    out = transform(image)
    if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3):
        raise TypeError(f"a dataset transform must return an H×W×3 uint8 array, got {type(out).__name__} "
                        f"{getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}")
    if keypoints is not None and out.shape[:2] != image.shape[:2]:
        keypoints = scale_points(keypoints, image.shape[:2], out.shape[:2])
    return out, keypoints
