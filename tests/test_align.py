"""Five-point alignment: Umeyama vs skimage, kornia warp vs cv2, NumPy PIL/cv2 paths, gradients."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.transform import SimilarityTransform

from lrface.align import (ARCFACE_TEMPLATE_112, FIVE_POINT_FLIP, align_face_np, align_faces, arcface_template,
                          arcface_template_np, estimate_similarity, estimate_similarity_np, transform_points,
                          transform_points_np, warp_np)


def _skimage_params(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    if hasattr(SimilarityTransform, "from_estimate"):  # skimage ≥ 0.26
        return SimilarityTransform.from_estimate(src, dst).params
    tf = SimilarityTransform()
    assert tf.estimate(src, dst)
    return tf.params


def test_template_values_and_scaling():
    tpl = arcface_template(112)
    assert tpl.shape == (5, 2)
    assert tpl[0].tolist() == pytest.approx([38.2946, 51.6963])
    assert tpl[4].tolist() == pytest.approx([70.7299, 92.2041])
    assert np.allclose(arcface_template_np(224), 2 * np.asarray(ARCFACE_TEMPLATE_112))
    assert FIVE_POINT_FLIP == (1, 0, 2, 4, 3)


def test_umeyama_matches_skimage_on_random_points():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (16, 5, 2))
    dst = rng.uniform(0, 112, (16, 5, 2))
    dst[3] = src[3] * np.array([-1.0, 1.0])  # a pure mirror: the best proper rotation must not reflect
    m_torch = estimate_similarity(torch.from_numpy(src), torch.from_numpy(dst)).numpy()
    assert m_torch.shape == (16, 2, 3)
    for i in range(16):
        ref = _skimage_params(src[i], dst[i])[:2]
        assert np.abs(m_torch[i] - ref).max() < 1e-8, i
        assert np.abs(estimate_similarity_np(src[i], dst[i]) - ref).max() < 1e-8, i
        lin = m_torch[i][:, :2]
        assert np.linalg.det(lin) > 0  # rotation × positive scale, never a reflection


def test_umeyama_recovers_an_exact_similarity_in_float32():
    rng = np.random.default_rng(1)
    tpl = arcface_template_np()
    a, s, t = 0.4, 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src = tpl + rng.normal(0, 3, tpl.shape)
    dst = src @ (s * rot).T + t
    m = estimate_similarity(torch.tensor(src, dtype=torch.float32), torch.tensor(dst, dtype=torch.float32))
    assert m.shape == (2, 3) and m.dtype == torch.float32
    assert np.allclose(m[:, :2].numpy(), s * rot, atol=1e-4)
    assert np.allclose(m[:, 2].numpy(), t, atol=2e-3)
    pts = transform_points(torch.tensor(src, dtype=torch.float32)[None], m[None])[0].numpy()
    assert np.abs(pts - dst).max() < 2e-3
    assert np.abs(transform_points_np(src, estimate_similarity_np(src, dst)) - dst).max() < 1e-9


def _smooth_image(seed=0, h=218, w=178):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 4)


def test_align_faces_matches_cv2_warp_affine():
    rng = np.random.default_rng(2)
    imgs = np.stack([_smooth_image(s) for s in range(3)])
    lm = np.array([[69, 111], [107, 111], [88, 134], [71, 152], [105, 152]], float)[None] + rng.normal(0, 3, (3, 5, 2))
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    out, m = align_faces(x, torch.from_numpy(lm), 112, return_matrix=True)
    assert out.shape == (3, 3, 112, 112) and m.shape == (3, 2, 3)
    for i in range(3):
        ref_m = _skimage_params(lm[i], arcface_template_np())[:2]
        assert np.abs(m[i].numpy() - ref_m).max() < 1e-4
        ref = cv2.warpAffine(imgs[i].astype(np.float32) / 255, ref_m, (112, 112), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        diff = np.abs(out[i].permute(1, 2, 0).numpy() - ref)[1:-1, 1:-1]
        assert diff.max() < 1e-3, diff.max()
    moved = transform_points(torch.from_numpy(lm).float(), m)
    # residual of a 4-dof fit to 5 noisy points: a few pixels, not tens
    assert (moved - arcface_template()).norm(dim=-1).max() < 8


def test_align_faces_is_differentiable():
    x = torch.from_numpy(_smooth_image(3)).permute(2, 0, 1)[None].float().div(255).requires_grad_(True)
    lm = torch.tensor([[[69.0, 111], [107, 111], [88, 134], [71, 152], [105, 152]]], requires_grad=True)
    out = align_faces(x, lm)
    (out * torch.linspace(0, 1, 112)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.isfinite(lm.grad).all() and lm.grad.abs().sum() > 0


def test_numpy_warp_pil_and_cv2_agree_and_align_face_np():
    img = _smooth_image(4)
    lm = np.array([[66, 108], [110, 114], [90, 136], [70, 155], [104, 158]], float)
    crop_cv2, pts = align_face_np(img, lm, 112, backend="cv2")
    crop_pil, pts2 = align_face_np(img, lm, 112, backend="pil")
    assert crop_cv2.shape == crop_pil.shape == (112, 112, 3) and crop_cv2.dtype == np.uint8
    assert np.abs(crop_cv2.astype(int) - crop_pil.astype(int))[1:-1, 1:-1].max() <= 2
    assert np.allclose(pts, pts2)
    assert np.abs(pts - arcface_template_np()).max() < 6
    # a shifted identity matrix moves content by exactly that shift in both backends
    shift = np.array([[1.0, 0, 5], [0, 1, 3]])
    for backend in ("cv2", "pil"):
        moved = warp_np(img, shift, (100, 90), backend=backend)
        assert moved.shape == (100, 90, 3)
        assert np.array_equal(moved[3:, 5:], img[:97, :85]), backend
        assert (moved[:3] == 0).all() and (moved[:, :5] == 0).all()
    with pytest.raises(ValueError, match="backend"):
        warp_np(img, shift, backend="skimage")
