"""Browatzki & Wallraven (seed 003) losses against hand computations: SSIM, L_rec, the z / image GAN losses, the
batch-hard triplet miner, L_f^Φ, L_rec^Φ, L_cyc^Φ and the factor swap of L_aug^Φ."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lrface.losses.disentangle import (
    L_adv,
    L_aug_phi,
    L_cyc_phi,
    L_enc,
    L_f,
    L_gen,
    L_rec,
    L_rec_phi,
    batch_hard_triplet,
    d_image_loss,
    d_z_loss,
    gaussian_window,
    ssim,
    swap_factor,
)
from lrface.nets.mad import FACTORS

# float() of a loss that still carries its graph is intended here
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

C1, C2 = 0.01**2, 0.03**2


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ------------------------------------------------------------------------------------------------------------ SSIM
def test_gaussian_window_taps():
    g = gaussian_window(11, 1.5)
    assert g.shape == (11,)
    assert float(g.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(g[5] / g[6]) == pytest.approx(math.exp(1 / (2 * 1.5**2)), rel=1e-5)
    assert float(g[5] / g[8]) == pytest.approx(math.exp(9 / (2 * 1.5**2)), rel=1e-5)
    torch.testing.assert_close(g, g.flip(0))
    # default σ = window / 6.5
    g31 = gaussian_window(31)
    assert float(g31[15] / g31[16]) == pytest.approx(math.exp(1 / (2 * (31 / 6.5) ** 2)), rel=1e-5)


def test_ssim_identical_images_is_one():
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert float(ssim(x, x, window=31)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(x, x, window=11, sigma=1.5)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("va, vb", [(0.0, -0.5), (1.0, -1.0), (0.3, 0.9)])
def test_ssim_of_constant_images_is_the_luminance_term(va, vb):
    a = torch.full((2, 3, 35, 33), va)
    b = torch.full((2, 3, 35, 33), vb)
    pa, pb = (va + 1) / 2, (vb + 1) / 2                      # [-1, 1] → [0, 1]; σ = cov = 0 → contrast term C2/C2
    expected = (2 * pa * pb + C1) / (pa**2 + pb**2 + C1)
    assert float(ssim(a, b)) == pytest.approx(expected, rel=1e-5)
    # (0, -0.5): (0.25 + 1e-4) / (0.3125 + 1e-4) = 0.80006...
    if (va, vb) == (0.0, -0.5):
        assert float(ssim(a, b)) == pytest.approx(0.800064, abs=1e-5)


def test_ssim_single_window_position_by_hand():
    # 7×7 images with a 7-tap window: exactly one valid position, SSIM written out with the 2-D weights
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(1, 1, 7, 7, generator=gen) * 2 - 1
    b = (a * 0.5 + 0.2 * torch.rand(1, 1, 7, 7, generator=gen)).clamp(-1, 1)
    sigma = 1.2
    t = torch.arange(7, dtype=torch.float64) - 3
    g = torch.exp(-t**2 / (2 * sigma**2))
    w = torch.outer(g, g)
    w = w / w.sum()
    x, y = (a.double()[0, 0] + 1) / 2, (b.double()[0, 0] + 1) / 2
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
    cxy = (w * (x - mx) * (y - my)).sum()
    expected = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    got = ssim(a, b, window=7, sigma=sigma)
    assert float(got) == pytest.approx(float(expected), abs=1e-5)
    assert float(got) < 0.99                                   # a real structural difference, not the identity case


def test_ssim_window_clamps_to_small_images_and_rejects_mismatch():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 0.5)
    pa, pb = 0.5, 0.75
    assert float(ssim(a, b, window=31)) == pytest.approx((2 * pa * pb + C1) / (pa**2 + pb**2 + C1), rel=1e-5)
    with pytest.raises(ValueError):
        ssim(a, torch.zeros(1, 3, 8, 9))


def test_ssim_penalises_structure_not_only_brightness():
    gen = torch.Generator().manual_seed(1)
    u, v = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    x = (0.8 * torch.sin(2 * math.pi * u / 16) * torch.cos(2 * math.pi * v / 12)).expand(1, 3, 48, 48)
    shuffled = x.flatten(2)[..., torch.randperm(48 * 48, generator=gen)].reshape_as(x)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    s_shuffled, s_blurred = float(ssim(x, shuffled, window=11)), float(ssim(x, blurred, window=11))
    # same histogram and mean, destroyed structure → near 0; a slight blur of a smooth pattern keeps it → near 1
    assert abs(s_shuffled) < 0.1
    assert 0.85 < s_blurred < 0.999
    assert float(ssim(x, -x, window=11)) < -0.5                # inverted contrast: negative correlation


# ------------------------------------------------------------------------------------------------------------ L_rec
def test_L_rec_on_constant_images_and_gradient_reaches_only_the_reconstruction():
    x = torch.full((2, 3, 32, 32), 0.0, requires_grad=True)
    x_hat = torch.full((2, 3, 32, 32), -0.5, requires_grad=True)
    s = (2 * 0.5 * 0.25 + C1) / (0.25 + 0.0625 + C1)
    loss = L_rec(x, x_hat)
    assert float(loss.detach()) == pytest.approx(0.5 + 60 * (1 - s), rel=1e-5)      # W_RECON 1, W_SSIM 60
    assert float(L_rec(x, x_hat, w_ssim=0).detach()) == pytest.approx(0.5)
    loss.backward()
    assert x.grad is None                                                     # the input is the target
    assert x_hat.grad is not None and float(x_hat.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------------------- GAN terms
def test_z_adversarial_losses_by_hand():
    prior = torch.tensor([[2.0], [0.5]], requires_grad=True)
    enc = torch.tensor([[-1.0], [3.0]], requires_grad=True)
    loss = d_z_loss(prior, enc)
    expected = (softplus(-2.0) + softplus(-0.5)) / 2 + (softplus(-1.0) + softplus(3.0)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    ref = (F.binary_cross_entropy_with_logits(prior, torch.ones_like(prior))
           + F.binary_cross_entropy_with_logits(enc, torch.zeros_like(enc)))
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(prior.grad, -torch.sigmoid(-prior.detach()) / 2)
    torch.testing.assert_close(enc.grad, torch.sigmoid(enc.detach()) / 2)

    # L_enc: Q fools D_z; only the encoder logits take part
    prior.grad, enc.grad = None, None
    l_enc = L_enc(enc)
    assert float(l_enc) == pytest.approx((softplus(1.0) + softplus(-3.0)) / 2, rel=1e-6)
    l_enc.backward()
    assert prior.grad is None
    torch.testing.assert_close(enc.grad, -torch.sigmoid(-enc.detach()) / 2)


def test_L_enc_moves_the_encoder_toward_the_prior_side():
    # a one-parameter "encoder" and a frozen D_z that calls positive codes real: L_enc pushes the code up
    theta = torch.tensor([-1.0], requires_grad=True)
    z = theta * torch.ones(4, 1)
    d_z_logits = 3.0 * z                                        # frozen linear D_z
    L_enc(d_z_logits).backward()
    assert float(theta.grad) < 0                               # gradient descent increases theta


def test_image_gan_losses_by_hand():
    real = torch.tensor([1.0, -2.0])
    fake = torch.tensor([0.0, 1.0])
    gen = torch.tensor([2.0, -1.0])
    d = d_image_loss(real, fake)
    assert float(d) == pytest.approx((softplus(-1) + softplus(2)) / 2 + (softplus(0) + softplus(1)) / 2, rel=1e-6)
    d_gen = d_image_loss(real, fake, gen)
    fake_term = 0.5 * ((softplus(0) + softplus(1)) / 2 + (softplus(2) + softplus(-1)) / 2)
    assert float(d_gen) == pytest.approx((softplus(-1) + softplus(2)) / 2 + fake_term, rel=1e-6)
    assert float(L_adv(fake)) == pytest.approx((softplus(0) + softplus(-1)) / 2, rel=1e-6)
    assert float(L_gen(gen)) == pytest.approx((softplus(-2) + softplus(1)) / 2, rel=1e-6)


# --------------------------------------------------------------------------------------------------------- triplet
def test_batch_hard_triplet_on_the_unit_circle_by_hand():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    y = torch.tensor([0, 0, 1, 1])
    # d01 = √2, d02 = 2, d03 = √0.8, d12 = √2, d13 = √0.4, d23 = √3.2
    r2, r08, r04, r32 = math.sqrt(2), math.sqrt(0.8), math.sqrt(0.4), math.sqrt(3.2)
    per_anchor = [r2 - r08 + 0.2, r2 - r04 + 0.2, r32 - r2 + 0.2, r32 - r04 + 0.2]
    assert sum(per_anchor) / 4 == pytest.approx(0.908147, abs=1e-5)
    assert float(batch_hard_triplet(e, y)) == pytest.approx(sum(per_anchor) / 4, rel=1e-5)
    assert float(batch_hard_triplet(e, y, margin=0.0)) == pytest.approx(sum(per_anchor) / 4 - 0.2, rel=1e-5)


def test_batch_hard_triplet_miner_picks_the_hardest_pairs():
    # 1-D positions: the loss and its gradient show which positive / negative each anchor used
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0], [4.0], [20.0], [3.5]], requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 2, -1])
    # anchors 0-4 are valid (label 2 has no positive, −1 is unknown): relu terms 0, 0, 3-1+.2, 0, 6-1+.2
    loss = batch_hard_triplet(x, y)
    assert float(loss) == pytest.approx((2.2 + 5.2) / 5, rel=1e-6)
    loss.backward()
    # anchor 2 uses (pos 0, neg 4), anchor 4 uses (pos 3, neg 2); samples 1, 5 and the unknown 6 get nothing
    torch.testing.assert_close(x.grad.flatten(), torch.tensor([-0.2, 0.0, 0.6, 0.2, -0.6, 0.0, 0.0]))


def test_batch_hard_triplet_matches_a_brute_force_loop():
    gen = torch.Generator().manual_seed(5)
    e = F.normalize(torch.randn(24, 8, generator=gen), dim=1)
    y = torch.randint(0, 5, (24,), generator=gen)
    y[0] = 9                                                   # a singleton: skipped
    terms = []
    for i in range(24):
        pos = [float((e[i] - e[j]).norm()) for j in range(24) if j != i and y[j] == y[i]]
        neg = [float((e[i] - e[j]).norm()) for j in range(24) if y[j] != y[i]]
        if pos and neg:
            terms.append(max(0.0, max(pos) - min(neg) + 0.3))
    assert float(batch_hard_triplet(e, y, margin=0.3)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_batch_hard_triplet_without_valid_anchor_is_zero_with_grad():
    e = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    for labels in (torch.tensor([1, 1, 1, 1]), torch.tensor([0, 1, 2, 3]), torch.tensor([-1, -1, 2, 2])):
        loss = batch_hard_triplet(e, labels)
        assert float(loss) == 0.0 and loss.requires_grad
        loss.backward()
        assert float(e.grad.abs().sum()) == 0.0
    # duplicates (distance 0) give finite gradients
    dup = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    batch_hard_triplet(dup, torch.tensor([0, 0, 1])).backward()
    assert torch.isfinite(dup.grad).all()


# ------------------------------------------------------------------------------------------------------------ L_f^Φ
def _line_factors(b_pose: torch.Tensor) -> dict[str, torch.Tensor]:
    pos = torch.tensor([0.0, 1.0, 3.0, 10.0, 4.0, 20.0])
    emb = torch.zeros(6, 32)
    emb[:, 0] = pos                                            # distances = the 1-D case above
    return {"pose": b_pose, "identity": emb.clone().requires_grad_(), "style": emb.clone().requires_grad_(),
            "expression": emb.clone().requires_grad_()}


def test_L_f_weights_and_skips_factors():
    pose = torch.zeros(6, 3, requires_grad=True)
    f = _line_factors(pose)
    tri = torch.tensor([0, 0, 0, 1, 1, 2])
    labels = {"pose": torch.ones(6, 3), "identity": tri, "style": None, "expression": tri}
    total, terms = L_f(f, labels)
    assert set(terms) == {"pose", "identity", "expression"}
    assert float(terms["pose"]) == pytest.approx(1.0)
    assert float(terms["identity"]) == pytest.approx(1.48, rel=1e-6)
    assert float(terms["expression"]) == pytest.approx(1.48, rel=1e-6)
    assert float(total) == pytest.approx(1.0 + 1.48 + 2 * 1.48, rel=1e-6)    # expression ×2 (the code)
    total.backward()
    assert f["style"].grad is None
    torch.testing.assert_close(pose.grad, torch.full((6, 3), -2.0 / 18))      # d/dp mean((p − 1)²)

    total_w, _ = L_f(f, {"identity": tri}, weights={"identity": 0.5})
    assert float(total_w) == pytest.approx(0.74, rel=1e-6)


def test_L_f_pose_rows_with_nan_are_skipped_and_bad_keys_fail():
    pose = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 2.0, 5.0], [float("nan"), 0.0, 0.0]])
    total, terms = L_f({"pose": pose, "identity": torch.zeros(2, 32)}, {"pose": target})
    assert float(terms["pose"]) == pytest.approx(4.0 / 3)
    assert float(total) == pytest.approx(4.0 / 3)
    total, terms = L_f({"pose": pose.requires_grad_()}, {"pose": None})
    assert terms == {} and float(total) == 0.0 and total.requires_grad
    with pytest.raises(KeyError):
        L_f({"pose": pose}, {"shape": torch.zeros(2)})


# ------------------------------------------------------------------------------------------ L_rec^Φ, L_cyc^Φ, L_aug^Φ
def test_L_rec_phi_and_L_cyc_phi_by_hand():
    z = torch.zeros(2, 99)
    z_re = torch.zeros(2, 99)
    z_re[0, :33] = 3.0                                         # |Δ| sum 99 over 198 elements
    assert float(L_rec_phi(z, z_re)) == pytest.approx(0.5)
    f = torch.linspace(-1, 1, 2 * 99).reshape(2, 99)
    f_cycle = f + 0.25
    assert float(L_cyc_phi(f, f_cycle)) == pytest.approx(0.25)
    as_dict = {name: f_cycle[:, sl] for name, sl in FACTORS.items()}
    assert float(L_cyc_phi({name: f[:, sl] for name, sl in FACTORS.items()}, as_dict)) == pytest.approx(0.25)
    # the concatenation follows FACTORS, not the dict's insertion order
    shuffled = dict(reversed(list(as_dict.items())))
    assert float(L_cyc_phi(f, shuffled)) == pytest.approx(0.25)


def test_swap_factor_takes_exactly_the_factor_dims_and_passes_gradients():
    f_a = torch.zeros(3, 99, requires_grad=True)
    f_b = torch.ones(3, 99, requires_grad=True)
    out = swap_factor(f_a, f_b, "identity")
    assert out.shape == (3, 99)
    expected = torch.zeros(3, 99)
    expected[:, 3:35] = 1.0
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    torch.testing.assert_close(f_b.grad, expected)
    torch.testing.assert_close(f_a.grad, 1 - expected)
    assert float(swap_factor(f_a, f_b, "pose")[:, :3].sum()) == 9.0
    assert float(swap_factor(f_a, f_b, "expression")[:, 67:].sum()) == 3 * 32
    with pytest.raises(KeyError):
        swap_factor(f_a, f_b, "shape")


def test_L_aug_phi_compares_the_swapped_part_with_the_donor():
    f_a = torch.zeros(2, 99)
    f_b = torch.ones(2, 99)
    swapped = swap_factor(f_a, f_b, "expression")
    assert float(L_aug_phi(swapped, f_a, f_b, "expression")) == 0.0
    # the swap got lost (recovered = f_a): only the 32 expression dims are wrong, by 1
    assert float(L_aug_phi(f_a, f_a, f_b, "expression")) == pytest.approx(32 / 99)
    # the whole vector came back as f_b: the 67 other dims are wrong
    assert float(L_aug_phi(f_b, f_a, f_b, "expression")) == pytest.approx(67 / 99)
    assert float(L_aug_phi(f_b, f_a, f_b, "pose")) == pytest.approx(96 / 99)
