"""AdaFace augmentations: each op does what the official augmenter does, p=0 is identity, a seed fixes everything."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from datamodules.adaface_augment import AdaFaceAugment

OFF = {"low_res_p": 0.0, "crop_p": 0.0, "photometric_p": 0.0, "flip": 0.0}


def _face(seed: int = 0, size: int = 112) -> np.ndarray:
    """A textured, coloured test image with no zero pixel (so a crop's zeros are visible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    base = np.stack([xx * 2, yy * 2, (xx + yy)], axis=2).astype(np.float64)
    noise = rng.integers(0, 60, (size, size, 3))
    return np.clip(base * 0.6 + noise + 20, 1, 255).astype(np.uint8)


def _high_freq_energy(img: np.ndarray) -> float:
    g = img.astype(np.float64).mean(axis=2)
    return float((np.diff(g, axis=0) ** 2).mean() + (np.diff(g, axis=1) ** 2).mean())


def test_shape_dtype_and_identity_when_everything_is_off():
    img = _face()
    out = AdaFaceAugment(**OFF, seed=0)(img)
    assert out.dtype == np.uint8 and out.shape == img.shape and out.flags.c_contiguous
    assert np.array_equal(out, img)
    default = AdaFaceAugment(seed=0)
    for _ in range(5):
        res = default(img)
        assert res.dtype == np.uint8 and res.shape == img.shape
    with pytest.raises(ValueError, match="uint8"):
        default(img.astype(np.float32))


def test_crop_keeps_a_box_in_place_and_zeroes_the_rest():
    img = _face(1)
    aug = AdaFaceAugment(**{**OFF, "crop_p": 1.0}, seed=3)
    areas = []
    for _ in range(20):
        out = aug(img)
        kept = (out != 0).any(axis=2)
        rows, cols = np.where(kept)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert kept[top:bottom, left:right].all()  # one solid box ...
        assert np.array_equal(out[top:bottom, left:right], img[top:bottom, left:right])  # ... at its own place
        assert not out[~kept].any()
        h, w = bottom - top, right - left
        areas.append(h * w / img.shape[0] / img.shape[1])
        assert 0.75 - 0.05 <= w / h <= 4 / 3 + 0.05
    assert min(areas) >= 0.2 - 0.02 and max(areas) <= 1.0 and np.std(areas) > 0.05


def test_low_resolution_removes_high_frequencies_and_keeps_the_size():
    img = _face(2)
    aug = AdaFaceAugment(**{**OFF, "low_res_p": 1.0}, seed=4)
    energies = []
    for _ in range(12):
        out = aug(img)
        assert out.shape == img.shape
        energies.append(_high_freq_energy(out))
    # a ratio in [0.2, 1) always loses some detail; on average a lot
    assert max(energies) < _high_freq_energy(img)
    assert np.mean(energies) < 0.6 * _high_freq_energy(img)
    # the image content stays (a blurred copy, not noise)
    assert abs(out.astype(float).mean() - img.astype(float).mean()) < 5


def test_photometric_changes_mean_and_contrast_like_the_official_bgr_jitter():
    img = _face(3)
    aug = AdaFaceAugment(**{**OFF, "photometric_p": 1.0}, seed=5)
    means, stds = [], []
    for _ in range(12):
        out = aug(img)
        assert out.shape == img.shape
        means.append(out.astype(float).mean())
        stds.append(out.astype(float).std())
    assert np.ptp(means) > 20 and np.ptp(stds) > 5

    # the exact bytes: brightness / contrast / saturation in the drawn order on the BGR view (as the official code
    # feeds PIL its BGR arrays)
    ref_rng = np.random.default_rng(9)
    ref_rng.random(), ref_rng.random(), ref_rng.random()  # crop, low-res and photometric decisions
    order = ref_rng.permutation(3)
    factors = [ref_rng.uniform(0.5, 1.5) for _ in range(3)]
    pil = Image.fromarray(np.ascontiguousarray(img[..., ::-1]))
    for op in order:
        pil = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[op](pil).enhance(factors[op])
    expected = np.asarray(pil)[..., ::-1]
    got = AdaFaceAugment(**{**OFF, "photometric_p": 1.0}, seed=9)(img)
    assert np.array_equal(got, expected)
    # the channel order matters for contrast / saturation: the RGB luma gives other bytes
    rgb = AdaFaceAugment(**{**OFF, "photometric_p": 1.0}, seed=9, photometric_order="rgb")(img)
    assert not np.array_equal(rgb, got)


def test_flip_mirrors_image_and_keypoints():
    img = _face(4)
    kp = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]], np.float32)
    out, moved = AdaFaceAugment(**{**OFF, "flip": 1.0}, seed=0)(img, kp)
    assert np.array_equal(out, img[:, ::-1])
    # mirrored and re-ordered: the new left eye is the mirror of the old right eye
    np.testing.assert_allclose(moved[0], [111 - 73.5, 51.5])
    np.testing.assert_allclose(moved[3], [111 - 70.7, 92.2])
    same, kept = AdaFaceAugment(**OFF, seed=0)(img, kp)
    assert np.array_equal(same, img) and np.array_equal(kept, kp)


def test_deterministic_under_a_seed_and_reseedable():
    img = _face(5)
    a, b = AdaFaceAugment(0.5, 0.5, 0.5, seed=11), AdaFaceAugment(0.5, 0.5, 0.5, seed=11)
    first = [a(img) for _ in range(8)]
    assert all(np.array_equal(x, y) for x, y in zip(first, [b(img) for _ in range(8)]))
    assert len({x.tobytes() for x in first}) > 3  # not the same draw every time
    a.set_random_seed(11)
    assert all(np.array_equal(x, a(img)) for x in first)
    a.set_random_seed(12)
    assert not all(np.array_equal(x, a(img)) for x in first)
