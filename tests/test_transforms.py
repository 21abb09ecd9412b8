"""Augmentations: per-worker/per-epoch reseeding, strict argument names, landmark-safe flips, device degradations."""
from __future__ import annotations

import warnings

import kornia
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import worker_init_fn
from datamodules.transforms import (AlbumentationsTransform, RandomDegradation, apply_transform, build_train_augment,
                                    resize_tensor, resize_uint8, scale_points)

DROPOUT_ONLY = dict(flip=0, color=None, blur=None, jpeg=None,
                    coarse_dropout={"num_holes_range": (1, 3), "hole_height_range": (0.1, 0.4),
                                    "hole_width_range": (0.1, 0.4), "fill": 0, "p": 1.0})


class _Constant(Dataset):
    """Every item is the same grey image through the transform: any difference comes from the RNG."""

    def __init__(self, transform, n=4):
        self.transform, self.n = transform, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.from_numpy(self.transform(np.full((32, 32, 3), 128, np.uint8)))


def _epochs(init_fn, n_epochs=2):
    ds = _Constant(build_train_augment(**DROPOUT_ONLY, seed=123))
    loader = DataLoader(ds, batch_size=1, num_workers=2, worker_init_fn=init_fn, shuffle=False)
    # batch i comes from worker i % 2, so items 0 and 1 are the first draw of worker 0 and of worker 1
    return [[b[0] for b in loader] for _ in range(n_epochs)]


@pytest.mark.timeout(120)
def test_workers_and_epochs_get_different_augmentations():
    (e0, e1) = _epochs(worker_init_fn)
    assert not torch.equal(e0[0], e0[1]), "two workers drew the same holes"
    assert not torch.equal(e0[0], e1[0]), "two epochs drew the same holes"
    assert not torch.equal(e0[1], e1[1])
    assert all((x == 0).any() for x in e0 + e1)  # holes were actually cut


@pytest.mark.timeout(120)
def test_without_reseeding_albumentations_repeats_itself():
    """The albumentations 2.0.8 behaviour the reseeding fixes (guards the test above against passing vacuously)."""
    (e0, e1) = _epochs(None)
    assert torch.equal(e0[0], e0[1]) and torch.equal(e0[0], e1[0])


def test_strict_rejects_old_argument_names():
    with pytest.raises(ValueError, match="max_holes"):
        build_train_augment(coarse_dropout={"max_holes": 8, "p": 1.0})
    with pytest.raises(ValueError, match="quality_lower"):
        build_train_augment(color={"quality_lower": 3})
    with warnings.catch_warnings(record=True) as caught:  # non-strict: only a warning, the arg is ignored
        warnings.simplefilter("always")
        build_train_augment(coarse_dropout={"max_holes": 8}, strict=False)
    assert any("max_holes" in str(w.message) for w in caught)


def test_new_argument_names_take_effect():
    t = build_train_augment(flip=0, color=None, blur=None, jpeg=None,
                            coarse_dropout={"num_holes_range": (1, 1), "hole_height_range": (8, 8),
                                            "hole_width_range": (8, 8), "fill": 0, "p": 1.0}, seed=0)
    out = t(np.full((32, 32, 3), 200, np.uint8))
    assert (out == 0).all(axis=2).sum() == 64  # exactly one 8×8 hole


def test_flip_keeps_landmark_semantics():
    t = build_train_augment(flip=1.0, color=None, blur=None, jpeg=None, coarse_dropout=None, seed=0)
    img = np.zeros((20, 30, 3), np.uint8)
    img[5, 2] = (255, 0, 0)  # a red pixel at x=2
    pts = np.array([[3, 5], [20, 5], [12, 10], [6, 15], [18, 15]], np.float32)
    out, moved = t(img, pts)
    assert tuple(out[5, 27]) == (255, 0, 0)  # x' = W - 1 - x
    # image-left eye (index 0) is still the one with the smaller x, i.e. the mirrored right eye
    assert moved.tolist() == [[9, 5], [26, 5], [17, 10], [11, 15], [23, 15]]
    no_swap = AlbumentationsTransform(t.compose, flip_pairs=None)
    assert no_swap(img, pts)[1][0].tolist() == [26, 5]
    assert np.array_equal(t(img), out)  # image-only call


def test_apply_transform_rescales_points_for_plain_resizing_callables():
    img = np.zeros((40, 20, 3), np.uint8)
    out, pts = apply_transform(lambda a: resize_uint8(a, (80, 40)), img, np.array([[0.0, 0.0], [19, 39]]))
    assert out.shape == (80, 40, 3)
    assert np.allclose(pts, [[0.5, 0.5], [38.5, 78.5]])
    assert np.allclose(scale_points(np.array([[-0.5, -0.5]]), (40, 20), (7, 9)), [[-0.5, -0.5]])
    with pytest.raises(TypeError, match="uint8"):
        apply_transform(lambda a: a.astype(np.float32), img)


def _step_batch(b=6, size=112):
    x = torch.zeros(b, 3, size, size)
    x[..., :, size // 2:] = 1.0  # a hard edge: bicubic upscaling overshoots it
    return x


def test_degradation_range_sizes_and_clamp():
    deg = RandomDegradation(min_size=7, max_size=112, p=1.0, blur_sigma=None, noise_std=None, jpeg_quality=None)
    x = _step_batch(8)
    y, sizes = deg(x, return_sizes=True, generator=torch.Generator().manual_seed(0))
    assert y.shape == (8, 3, 112, 112) and sizes.shape == (8, 2) and sizes.dtype == torch.int64
    assert ((sizes >= 7) & (sizes <= 112)).all() and (sizes[:, 0] == sizes[:, 1]).all()
    assert len(set(sizes[:, 0].tolist())) > 1  # per-sample sizes
    assert y.min() >= 0 and y.max() <= 1
    # the clamp is needed: the same resample without it leaves [0, 1]
    raw = kornia.geometry.transform.resize(resize_tensor(x[:1], (7, 7)), (112, 112), interpolation="bicubic",
                                           align_corners=False)
    assert raw.min() < -0.02 or raw.max() > 1.02
    # a 7-pixel sample lost its edge sharpness; samples kept at 112 are untouched
    small = int(sizes[:, 0].argmin())
    edge = (y[small, 0, 56, 52:60] - x[small, 0, 56, 52:60]).abs().max()
    assert sizes[small, 0] < 40 and edge > 0.1


def test_degradation_full_pipeline_and_gradients():
    deg = RandomDegradation(p=1.0, p_blur=1.0, p_noise=1.0, p_jpeg=1.0, jpeg_quality=(30, 60), out_size=64)
    x = torch.rand(5, 3, 112, 112, requires_grad=True)
    y = deg(x, generator=torch.Generator().manual_seed(1))
    assert y.shape == (5, 3, 64, 64) and y.min() >= 0 and y.max() <= 1
    y.mean().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(dim=(1, 2, 3)) > 0).all()


def test_degradation_determinism_and_p_zero():
    deg = RandomDegradation(p=1.0, p_noise=1.0, p_jpeg=0.0)
    x = torch.rand(4, 3, 112, 112)
    a = deg(x, generator=torch.Generator().manual_seed(5))
    b = deg(x, generator=torch.Generator().manual_seed(5))
    c = deg(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    off = RandomDegradation(p=0.0)
    y, sizes = off(x, return_sizes=True)
    assert torch.equal(y, x) and (sizes == 112).all()


def test_degradation_without_upsampling_returns_low_resolution_images():
    deg = RandomDegradation(min_size=7, max_size=30, p=1.0, blur_sigma=None, noise_std=None, jpeg_quality=None,
                            upsample_back=False)
    out, sizes = deg(torch.rand(6, 3, 112, 96), return_sizes=True, generator=torch.Generator().manual_seed(2))
    assert isinstance(out, list) and len(out) == 6
    for img, (h, w) in zip(out, sizes.tolist()):
        assert img.shape == (3, h, w) and 7 <= w <= 30  # short side (width) drawn, aspect kept
        assert abs(h / w - 112 / 96) < 0.1
    same = RandomDegradation(min_size=16, max_size=16, upsample_back=False)(torch.rand(3, 3, 64, 64))
    assert torch.is_tensor(same) and same.shape == (3, 3, 16, 16)


def test_degradation_rejects_bad_ranges():
    with pytest.raises(ValueError):
        RandomDegradation(min_size=20, max_size=10)
    with pytest.raises(ValueError):
        RandomDegradation(jpeg_quality=(0, 120))
