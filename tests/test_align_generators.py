"""Generator framing: the FFHQ template, generator_template, FixedAlignment and MTCNNAlignment."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lrface.align import (ARCFACE_TEMPLATE_112, FFHQ_TEMPLATE_1024, FixedAlignment, MTCNNAlignment, align_faces,
                          arcface_template, ffhq_template, ffhq_template_np, generator_resolution, generator_template,
                          transform_points)

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "mtcnn"


def _ffhq_quad(lm: np.ndarray) -> np.ndarray:
    """PULSE/FFHQ align_face's crop quad from five landmarks (eyes, nose, mouth corners)."""
    eye_avg = (lm[0] + lm[1]) / 2
    e2e = lm[1] - lm[0]
    e2m = (lm[3] + lm[4]) / 2 - eye_avg
    x = e2e - np.flipud(e2m) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*e2e) * 2.0, np.hypot(*e2m) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + e2m * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def test_ffhq_template_follows_the_ffhq_crop_rule():
    tpl = np.asarray(FFHQ_TEMPLATE_1024)
    # FFHQ's quad built from the template's own landmarks is the whole 1024 image (to the rounding of the template)
    quad = _ffhq_quad(tpl)
    assert np.abs(quad - [[0, 0], [0, 1024], [1024, 1024], [1024, 0]]).max() < 1.0
    # mouth width and nose height keep the ArcFace template's proportions
    arc = np.asarray(ARCFACE_TEMPLATE_112)
    d = tpl[1, 0] - tpl[0, 0]
    assert (tpl[4, 0] - tpl[3, 0]) / d == pytest.approx((arc[4, 0] - arc[3, 0]) / (arc[1, 0] - arc[0, 0]), abs=4e-3)
    drop = lambda t: (t[2, 1] - t[:2, 1].mean()) / (t[3:, 1].mean() - t[:2, 1].mean())  # noqa: E731
    assert drop(tpl) == pytest.approx(drop(arc), abs=4e-3)
    # symmetric about the vertical midline
    assert tpl[0, 0] + tpl[1, 0] == 1024 and tpl[3, 0] + tpl[4, 0] == 1024 and tpl[2, 0] == 512


def test_ffhq_template_scaling():
    assert torch.allclose(ffhq_template(256), torch.tensor(FFHQ_TEMPLATE_1024) / 4)
    assert np.allclose(ffhq_template_np(64), np.asarray(FFHQ_TEMPLATE_1024) / 16)
    assert ffhq_template(32, dtype=torch.float64).dtype == torch.float64


class _Gen(nn.Module):
    def __init__(self, size=None, resolution=None, face_template=None):
        super().__init__()
        self.lin = nn.Linear(1, 1)
        if size is not None:
            self.size = size
        if resolution is not None:
            self.resolution = resolution
        if face_template is not None:
            self.face_template = face_template


def test_generator_template_default_override_and_rescale():
    assert torch.allclose(generator_template(_Gen(size=64)), ffhq_template(64))
    assert torch.allclose(generator_template(_Gen(resolution=1024)), ffhq_template(1024))  # StyleGAN1 naming
    assert torch.allclose(generator_template(_Gen(size=64), resolution=256), ffhq_template(256))
    own = torch.tensor([[20.0, 25], [44, 25], [32, 35], [22, 45], [42, 45]])
    g = _Gen(size=64, face_template=own)
    assert torch.equal(generator_template(g), own)
    assert torch.allclose(generator_template(g, 128), own * 2)
    with pytest.raises(ValueError, match="5×2"):
        generator_template(_Gen(size=64, face_template=torch.zeros(4, 2)))
    with pytest.raises(AttributeError):
        generator_resolution(_Gen())


def _blobs(points: torch.Tensor, side: int, sigma: float) -> torch.Tensor:
    """1×3×side×side image with a Gaussian blob at each point (channel c carries blobs of points c, c+3)."""
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                            indexing="ij")
    img = torch.zeros(1, 3, side, side, dtype=torch.float64)
    for i, (x, y) in enumerate(points.double()):
        img[0, i % 3] += torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return img.float()


def _centroid(channel: torch.Tensor, near: torch.Tensor, radius: float) -> np.ndarray:
    ys, xs = torch.meshgrid(torch.arange(channel.shape[0]).float(), torch.arange(channel.shape[1]).float(),
                            indexing="ij")
    mask = ((xs - near[0]) ** 2 + (ys - near[1]) ** 2) <= radius ** 2
    w = channel * mask
    return np.array([float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum())])


@pytest.mark.parametrize("side", [128, 256])
def test_fixed_alignment_moves_template_points_onto_arcface(side):
    # landmarks given at 128 px; images at 128 and at 256 (rescaled matrix) must land the blobs on the ArcFace points
    tpl128 = ffhq_template(128)
    align = FixedAlignment(tpl128, 128, size=112)
    assert align.matrix.shape == (2, 3)
    assert torch.allclose(transform_points(tpl128[None], align.matrix)[0], arcface_template(112), atol=1.5)
    img = _blobs(tpl128 * side / 128, side, sigma=3.0 * side / 128)
    crop = align(img)
    assert crop.shape == (1, 3, 112, 112)
    arc = arcface_template(112)
    # the FFHQ→ArcFace similarity is a least-squares fit: the points land on the template within its residual
    expected = transform_points(tpl128[None], align.matrix)[0]
    assert (expected - arc).abs().max() < 1.5
    for i in range(5):
        got = _centroid(crop[0, i % 3], expected[i], radius=11.0)
        assert np.abs(got - expected[i].numpy()).max() < 0.1
    # same as the generic differentiable warp with the rescaled landmarks
    assert torch.allclose(crop, align_faces(img, (tpl128 * side / 128)[None], 112), atol=1e-4)


def test_fixed_alignment_gradient_batch_and_for_generator():
    from lrface.nets.stylegan2 import StyleGAN2Generator

    gen = StyleGAN2Generator(32, style_dim=16, n_mlp=1, channels={4: 8, 8: 8, 16: 8, 32: 8})
    align = FixedAlignment.for_generator(gen, size=56)
    assert torch.allclose(align.matrix, FixedAlignment(ffhq_template(32), 32, 56).matrix)
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    out = align(x)
    assert out.shape == (3, 3, 56, 56)
    out[1].sum().backward()
    assert x.grad[1].abs().sum() > 0 and x.grad[0].abs().sum() == 0 and x.grad[2].abs().sum() == 0
    # face_template on the generator overrides FFHQ
    gen.face_template = ffhq_template(32) + 2.0
    assert not torch.allclose(FixedAlignment.for_generator(gen, 56).matrix, align.matrix)


class _FakeMTCNN:
    """Finds a 'face' (fixed landmarks) in images whose mean is above 0.5; records every call."""

    def __init__(self, landmarks: np.ndarray):
        self.landmarks, self.calls = landmarks.astype(np.float32), 0

    def detect(self, image: np.ndarray):
        self.calls += 1
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        if image.mean() > 127.5:
            return (np.array([[0, 0, 10, 10]], np.float32), np.array([0.99], np.float32), self.landmarks[None])
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)


def test_mtcnn_alignment_caching_fallback_and_misses():
    lm = np.array([[20.0, 24], [40, 22], [31, 33], [22, 44], [41, 43]])
    fake = _FakeMTCNN(lm)
    fallback = FixedAlignment(ffhq_template(64), 64, 112)
    align = MTCNNAlignment(fake, size=112, fallback=fallback, redetect_every=3)
    bright, dark = torch.rand(1, 3, 64, 64) * 0.3 + 0.7, torch.rand(1, 3, 64, 64) * 0.3
    x = torch.cat([bright, dark]).requires_grad_(True)
    out = align(x)
    assert fake.calls == 2 and align.misses == 1
    assert torch.allclose(out[0], align_faces(bright, torch.tensor(lm, dtype=torch.float32)[None], 112)[0], atol=1e-5)
    assert torch.allclose(out[1], fallback(dark)[0], atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[1].abs().sum() > 0
    # calls 1 and 2 reuse the cached rows even though row 1 is now bright; call 3 re-detects both rows
    x2 = torch.cat([bright, bright])
    align(x2)
    align(x2)
    assert fake.calls == 2
    out3 = align(x2)
    assert fake.calls == 4 and align.misses == 1
    assert torch.allclose(out3[1], out3[0], atol=1e-6)
    # a new batch shape re-detects at once
    align(bright)
    assert fake.calls == 5


def test_mtcnn_alignment_without_fallback_assumes_ffhq():
    align = MTCNNAlignment(_FakeMTCNN(np.zeros((5, 2))), size=112)
    dark = torch.rand(2, 3, 128, 128) * 0.3
    assert torch.allclose(align(dark), FixedAlignment(ffhq_template(128), 128, 112)(dark), atol=1e-6)
    assert align.misses == 2


@pytest.mark.skipif(not all((WEIGHTS / f).is_file() for f in ("pnet.pt", "rnet.pt", "onet.pt")),
                    reason="MTCNN weights absent: run `lrface weights mtcnn`")
def test_mtcnn_alignment_real_detector_on_a_photo():
    skimage_data = pytest.importorskip("skimage.data")
    from lrface.nets.mtcnn import MTCNN

    torch.set_num_threads(1)
    photo = skimage_data.astronaut()
    det = MTCNN(WEIGHTS)
    _, _, lms = det.detect(photo)
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float().div(255).requires_grad_(True)
    align = MTCNNAlignment(det, size=112)
    crop = align(x)
    assert align.misses == 0
    assert torch.allclose(crop, align_faces(x.detach(), torch.from_numpy(lms[:1]), 112), atol=1e-4)
    crop.mean().backward()
    assert x.grad.abs().sum() > 0
    # MTCNN finds the crop's landmarks where the similarity put them (the least-squares fit onto the ArcFace
    # template leaves the astronaut's own proportions: up to ~5 px from the template itself)
    _, matrix = align_faces(x.detach(), torch.from_numpy(lms[:1]), 112, return_matrix=True)
    expected = transform_points(torch.from_numpy(lms[:1]), matrix)[0].numpy()
    _, _, again = det.detect((crop[0].detach().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    assert len(again) and np.abs(again[0] - expected).max() < 2.0
    assert np.abs(expected - arcface_template(112).numpy()).max() < 6.0
