"""PULSE losses against hand computations: bicubic taps, GEOCROSS, L2/L1 with eps, the loss-string parser."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lrface.losses.pulse import BicubicDownsample, bicubic_taps, downscale_loss, geocross, parse_loss_string


def keys(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x < 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def test_bicubic_taps_factor_2_by_formula():
    # size 8, positions (i - 4 + 0.5) / 2 = -1.75, -1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 1.75
    raw = [keys(p) for p in (-1.75, -1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 1.75)]
    # Keys at 0.25 = 0.0234375 - 0.15625 + 1; at 1.75 = -2.6796875 + 7.65625 - 7 + 2
    assert raw[4] == pytest.approx(0.8671875)
    assert raw[7] == pytest.approx(-0.0234375)
    expected = torch.tensor(raw) / sum(raw)
    got = bicubic_taps(2)
    assert got.shape == (8,)
    torch.testing.assert_close(got, expected.float(), atol=1e-7, rtol=0)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-6)


def test_bicubic_taps_factor_4_by_formula():
    pos = [(i - 8 + 0.5) / 4 for i in range(16)]
    raw = torch.tensor([keys(p) for p in pos], dtype=torch.float64)
    torch.testing.assert_close(bicubic_taps(4), (raw / raw.sum()).float(), atol=1e-7, rtol=0)
    # outer lobes negative, symmetric
    got = bicubic_taps(4)
    assert got[0] < 0 and got[15] < 0 and got[7] > 0.1
    torch.testing.assert_close(got, got.flip(0))


def test_bicubic_factor_32_reference_extremes():
    taps = bicubic_taps(32)
    assert taps.shape == (128,)
    assert float(taps.max()) == pytest.approx(0.03123, abs=1e-5)
    assert float(taps.min()) == pytest.approx(-0.00231, abs=1e-5)


def test_downsample_matches_explicit_reflect_conv():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    y = BicubicDownsample(4)(x)
    assert y.shape == (2, 3, 4, 4)
    k = bicubic_taps(4).double()
    # pad 12 = 6 before / 6 after, reflect, output pixel o uses padded rows 4o .. 4o+15
    xp = F.pad(x.double(), (6, 6, 6, 6), mode="reflect")
    expected = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    for o in range(4):
        for q in range(4):
            patch = xp[:, :, 4 * o : 4 * o + 16, 4 * q : 4 * q + 16]
            expected[:, :, o, q] = torch.einsum("bcij,i,j->bc", patch, k, k)
    torch.testing.assert_close(y.double(), expected, atol=1e-6, rtol=0)


def test_downsample_interior_equals_torch_antialiased_bicubic():
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 64)
    ours = BicubicDownsample(4)(x)
    theirs = F.interpolate(x, size=16, mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], theirs[..., 2:-2, 2:-2], atol=2e-6, rtol=0)


def test_downsample_constant_and_ramp():
    const = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(BicubicDownsample(8)(const), torch.full((1, 3, 4, 4), 0.3), atol=1e-6, rtol=0)
    # A linear ramp along the width: away from the reflect border the symmetric kernel reproduces the ramp sampled at
    # the block centres, i.e. the average of each block of `factor` pixels.
    f = 4
    ramp = torch.arange(64, dtype=torch.float32).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    y = BicubicDownsample(f)(ramp)
    block_means = ramp[0, 0, 0].view(16, f).mean(1)
    torch.testing.assert_close(y[0, :, 5, 2:-2], block_means[2:-2].expand(3, 12), atol=1e-4, rtol=0)
    # rows are constant in a width-only ramp
    torch.testing.assert_close(y[0, 0], y[0, 0, :1].expand(16, 16))


def test_downsample_any_channel_count_and_bad_factor():
    assert BicubicDownsample(2)(torch.rand(2, 1, 8, 8)).shape == (2, 1, 4, 4)
    assert BicubicDownsample(32)(torch.rand(1, 3, 1024, 1024)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="positive integer"):
        BicubicDownsample(2.5)
    with pytest.raises(ValueError, match="positive integer"):
        BicubicDownsample(0)


def test_geocross_three_rows_by_hand():
    # rows of equal norm: angles e1/e2 = 90°, e1/(-e1) = 180° -> e2/(-e1) = 90°
    d = 4
    rows = torch.zeros(1, 3, d)
    rows[0, 0, 0] = 2.0
    rows[0, 1, 1] = 2.0
    rows[0, 2, 0] = -2.0
    # ordered pairs, diagonal ≈ 0: 2·(θ01² + θ02² + θ12²) / 9 · 512 / 8
    t01, t02, t12 = math.pi / 2, math.pi, math.pi / 2
    expected = 2 * (t01**2 + t02**2 + t12**2) / 9 * 64
    got = geocross(rows, reduction="none")
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, rel=1e-4)
    # 2·atan2(|x-y|, |x+y|) for unequal norms: x=(1,0), y=(1,1)·3 -> not the true angle
    x = torch.tensor([[[1.0, 0.0], [3.0, 3.0], [1.0, 0.0]]])
    a = math.sqrt(4 + 9 + 1e-9)
    b = math.sqrt(16 + 9 + 1e-9)
    th = 2 * math.atan2(a, b)
    th_diag = 2 * math.atan2(math.sqrt(1e-9), 2.0)
    th_diag2 = 2 * math.atan2(math.sqrt(1e-9), math.sqrt(72))
    th_02 = th_diag  # rows 0 and 2 are identical
    total = 4 * th**2 + 2 * th_02**2 + 2 * th_diag**2 + th_diag2**2
    assert float(geocross(x, reduction="none")[0]) == pytest.approx(total / 9 * 64, rel=1e-5)


def test_geocross_batch_sum_tiled_and_reference_scale():
    torch.manual_seed(0)
    w = torch.randn(3, 18, 512)
    per = geocross(w, reduction="none")
    assert float(geocross(w)) == pytest.approx(float(per.sum()), rel=1e-6)
    # independent random rows: all off-diagonal angles ≈ 90°: 64 · (306/324) · (π/2)² ≈ 149
    assert float(per.mean()) == pytest.approx(64 * 306 / 324 * (math.pi / 2) ** 2, rel=0.03)
    assert float(geocross(w[:, :1])) == 0.0
    tiled = w[:, :1].expand(-1, 18, -1)
    assert float(geocross(tiled).abs()) < 1e-6


def test_downscale_loss_l2_l1_with_eps():
    ref = torch.zeros(2, 3, 2, 2)
    gen = torch.zeros(2, 3, 2, 2)
    gen[0] = 0.1  # MSE 0.01, MAE 0.1
    gen[1, 0, 0, 0] = 0.12  # MSE 0.0144/12 = 0.0012, MAE 0.01
    l2 = downscale_loss(gen, ref, "L2", eps=2e-3, reduction="none")
    torch.testing.assert_close(l2, torch.tensor([0.01, 2e-3]), atol=1e-7, rtol=0)
    assert float(downscale_loss(gen, ref, "L2", eps=1e-3)) == pytest.approx(0.01 + 0.0012, abs=1e-7)
    l1 = downscale_loss(gen, ref, "L1", eps=0.02, reduction="none")
    torch.testing.assert_close(l1, torch.tensor([1.0, 0.2]), atol=1e-6, rtol=0)
    assert float(downscale_loss(gen, ref, "L1", eps=1e-3)) == pytest.approx(1.0 + 0.1, abs=1e-6)
    # clamped sample gets no gradient
    g = gen.clone().requires_grad_(True)
    downscale_loss(g, ref, "L2", eps=2e-3).backward()
    assert float(g.grad[1].abs().sum()) == 0.0 and float(g.grad[0].abs().sum()) > 0
    with pytest.raises(ValueError):
        downscale_loss(gen, ref, "L3")


def test_parse_loss_string():
    assert parse_loss_string("100*L2+0.05*GEOCROSS") == [(100.0, "L2"), (0.05, "GEOCROSS")]
    assert parse_loss_string("10*L1") == [(10.0, "L1")]
    assert parse_loss_string(" 1e2 * L2 + 5e-2*GEOCROSS ") == [(100.0, "L2"), (0.05, "GEOCROSS")]
    for bad in ("100*L3", "L2", "x*L2", "1*L2+1*L2", "1*L2*3"):
        with pytest.raises(ValueError):
            parse_loss_string(bad)
    assert parse_loss_string("2*ID", known=None) == [(2.0, "ID")]
