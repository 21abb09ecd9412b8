"""Seed paper 000's identity / race / attribute losses (Eq. 4–10) on tiny hand-computed vectors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrface.losses.identity import (
    AttributeWeights,
    L_att,
    L_attribute_class,
    L_race,
    L_race_class,
    L_siam,
    L_sim,
    PulseConstraints,
    attribute_class_weights,
    feature_extractor_loss,
    pulse_constraint_loss,
    rejected,
    sim,
    theta,
)
from lrface.metrics.angles import angles_deg
from lrface.pulse import PulseSearch, gaussian_fit


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


E1 = torch.tensor([[1.0, 0.0]])
E2 = torch.tensor([[0.0, 1.0]])
DIAG = torch.tensor([[1.0, 1.0]])


def test_theta_hand_values_and_gradients():
    f1 = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    f2 = torch.tensor([[0.0, 2.0], [1.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    ang = theta(f1, f2)
    assert torch.allclose(ang, torch.tensor([90.0, 45.0, 0.0, 180.0]), atol=1e-4)
    assert torch.allclose(theta(f1, f2, unit="rad"), torch.deg2rad(ang), atol=1e-6)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randn(6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(theta(x, y), angles_deg(x, y), atol=1e-9)
    # Finite gradients even at 0° (arccos would give inf/NaN there).
    g = f2.clone().requires_grad_(True)
    theta(f1, g).sum().backward()
    assert torch.isfinite(g.grad).all()


def test_sim_eq4_hand_values():
    # θ = 90°, α_thr = 65°, γ = 10° → σ(2.5); θ = 45° → σ(−2).
    assert sim(E1, E2, 0.0).item() == pytest.approx(sig(2.5), abs=1e-6)
    assert sim(E1, E2, 1.0).item() == pytest.approx(1 - sig(2.5), abs=1e-6)
    assert sim(E1, E2, "different").item() == pytest.approx(1 - sig(2.5), abs=1e-6)
    assert sim(E1, DIAG, "same").item() == pytest.approx(sig(-2.0), abs=1e-6)
    assert sim(E1, DIAG, 0.0, alpha_thr=70.0, gamma_temp=5.0).item() == pytest.approx(sig(-5.0), abs=1e-6)
    assert sim(E1, DIAG, 0.0, alpha_thr=math.radians(65), gamma_temp=math.radians(10), unit="rad").item() == \
        pytest.approx(sig(-2.0), abs=1e-6)
    # tgt 0 is minimised by parallel features, tgt 1 by orthogonal ones (the paper's wording).
    assert sim(E1, E1, 0.0).item() < sim(E1, DIAG, 0.0).item() < sim(E1, E2, 0.0).item()
    assert sim(E1, E2, 1.0).item() < sim(E1, DIAG, 1.0).item()
    # A per-sample target tensor and 1×D broadcasting.
    both = sim(torch.cat([E2, E2]), E1, torch.tensor([0.0, 1.0]))
    assert torch.allclose(both, torch.tensor([sig(2.5), 1 - sig(2.5)]), atol=1e-6)
    with pytest.raises(ValueError):
        sim(E1, E2, "maybe")
    with pytest.raises(ValueError):
        sim(E1, E2, 0.0, gamma_temp=0.0)


def test_L_sim_eq5_value_and_gradient_reduces_angle():
    assert L_sim(DIAG, E1).item() == pytest.approx(sig(-2.0), abs=1e-6)
    assert L_sim(DIAG, E1, alpha_thr=65.0, gamma_temp=10.0, tgt=1).item() == pytest.approx(1 - sig(-2.0), abs=1e-6)
    g = torch.Generator().manual_seed(3)
    f_ref = torch.randn(4, 16, generator=g)
    f_gen = torch.randn(4, 16, generator=g).requires_grad_(True)
    before = theta(f_gen, f_ref).detach()
    loss = L_sim(f_gen, f_ref)
    assert loss.shape == (4,)
    loss.sum().backward()
    with torch.no_grad():
        stepped = f_gen - 5.0 * f_gen.grad
    after = theta(stepped, f_ref)
    # Every angle shrinks; far beyond α_thr the sigmoid saturates (135° moves ~0.1°), near it the pull is strong.
    assert bool((after < before - 0.05).all()), (before, after)
    near = (before - 65.0).abs() < 25.0
    assert bool(near.any()) and bool((after[near] < before[near] - 5.0).all()), (before, after)
    # tgt = 1 pushes the features apart instead.
    f_gen.grad = None
    L_sim(f_gen, f_ref, tgt=1).sum().backward()
    with torch.no_grad():
        assert bool((theta(f_gen - 5.0 * f_gen.grad, f_ref) > before + 0.05).all())


def test_L_race_eq6_values_and_gradient():
    logits = torch.zeros(2, 7)
    logits[:, 1] = math.log(3.0)  # softmax p_1 = 3 / (3 + 6) = 1/3
    out = L_race(logits, torch.tensor([1, 0]))
    assert torch.allclose(out, torch.tensor([2 / 3, 8 / 9]), atol=1e-6)
    assert L_race(logits[:1], 1, squared=True).item() == pytest.approx(4 / 9, abs=1e-6)
    assert L_race(logits[:1], 1, activation="sigmoid").item() == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ValueError):
        L_race(logits, 7)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(5, 7, generator=g).requires_grad_(True)
    target = torch.tensor([0, 1, 2, 3, 6])
    nll_before = F.cross_entropy(z, target, reduction="none").detach()
    L_race(z, target).sum().backward()
    with torch.no_grad():
        nll_after = F.cross_entropy(z - 2.0 * z.grad, target, reduction="none")
    assert bool((nll_after < nll_before).all())


def test_L_att_eq7_values_mask_and_gradient():
    logits = torch.tensor([[0.0, math.log(3.0), -math.log(3.0)]])  # p = 0.5, 0.75, 0.25
    values = torch.tensor([[1.0, 0.0, float("nan")]])
    assert L_att(logits, values).item() == pytest.approx((0.5 + 0.75) / 2, abs=1e-6)
    mask = torch.tensor([[True, False, True]])
    values2 = torch.tensor([[1.0, 1.0, 1.0]])
    assert L_att(logits, values2, mask).item() == pytest.approx((0.5 + 0.75) / 2, abs=1e-6)
    assert L_att(logits, values2, mask, squared=True).item() == pytest.approx((0.25 + 0.5625) / 2, abs=1e-6)
    # No constrained attribute → 0.
    assert L_att(logits, torch.full((1, 3), float("nan"))).item() == 0.0

    z = torch.zeros(2, 40, requires_grad=True)
    t = torch.full((2, 40), float("nan"))
    t[0, 20], t[0, 31], t[1, 2] = 1.0, 0.0, 0.0
    loss = L_att(z, t)
    assert torch.allclose(loss, torch.tensor([0.5, 0.5]))
    loss.sum().backward()
    grad = z.grad
    constrained = torch.isfinite(t)
    assert bool((grad[~constrained] == 0).all()) and torch.isfinite(grad).all()
    p_after = torch.sigmoid(z.detach() - 1.0 * grad)
    assert p_after[0, 20] > 0.5 and p_after[0, 31] < 0.5 and p_after[1, 2] < 0.5


def test_pulse_constraint_sum_and_rejection_rule():
    a, b, c = torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.0]), torch.tensor([1.0, 0.5])
    assert torch.allclose(pulse_constraint_loss(a, b, c, (1.0, 2.0, 3.0)), torch.tensor([3.7, 1.7]))
    assert torch.allclose(pulse_constraint_loss(l_race=b, lambdas=(1.0, 2.0, 3.0)), torch.tensor([0.6, 0.0]))
    terms = {"L_sim": torch.tensor([0.05, 0.2, 0.1, 0.0]), "L_race": torch.tensor([0.01, 0.01, 0.02, 0.5]),
             "L2": torch.tensor([9.0, 9.0, 9.0, 9.0])}
    assert rejected(terms).tolist() == [False, True, False, True]  # 0.1 itself passes ("above")
    assert rejected(terms, names=["L_sim"]).tolist() == [False, True, False, False]
    assert rejected(terms, threshold=0.3).tolist() == [False, False, False, True]
    with pytest.raises(ValueError):
        rejected({"L2": torch.zeros(2)})
    with pytest.raises(KeyError):
        rejected(terms, names=["L_att"])


def test_L_siam_hand_value_and_directions():
    gt = torch.cat([E1, E1])
    i = torch.cat([E2, E1])
    i_prime = torch.cat([DIAG, E2])
    flip = torch.cat([E2, DIAG])
    # Sample 0: sim(gt, i, 1) at 90°, sim(i, i', 1) at 45°, sim(i, flip, 0) at 0°.
    s0 = (1 - sig(2.5)) + (1 - sig(-2.0)) + sig(-6.5)
    # Sample 1: 0°, 90°, 45°.
    s1 = (1 - sig(-6.5)) + (1 - sig(2.5)) + sig(-2.0)
    per = L_siam(gt, i, i_prime, flip, reduction="none")
    assert torch.allclose(per, torch.tensor([s0, s1]), atol=1e-6)
    assert L_siam(gt, i, i_prime, flip).item() == pytest.approx((s0 + s1) / 2, abs=1e-6)
    assert L_siam(gt, i, i_prime, flip, reduction="sum").item() == pytest.approx(s0 + s1, abs=1e-6)
    assert L_siam(gt, i, None, None).item() == pytest.approx(((1 - sig(2.5)) + (1 - sig(-6.5))) / 2, abs=1e-6)
    # A gradient step on the lookalike features pushes i away from i_GT and i', toward flip(i).
    g = torch.Generator().manual_seed(11)
    fg, fi, fp, ff = (torch.randn(3, 8, generator=g) for _ in range(4))
    fi = fi.requires_grad_(True)
    L_siam(fg, fi, None, None).backward()
    assert bool((theta(fi.detach() - 3.0 * fi.grad, fg) > theta(fi.detach(), fg)).all())
    fi.grad = None
    L_siam(None, fi, None, ff).backward()
    assert bool((theta(fi.detach() - 3.0 * fi.grad, ff) < theta(fi.detach(), ff)).all())
    fi.grad = None
    L_siam(None, fi, fp, None).backward()
    assert bool((theta(fi.detach() - 3.0 * fi.grad, fp) > theta(fi.detach(), fp)).all())


def test_race_class_eq9_and_total_eq10():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([0, 2])
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert L_race_class(logits, target).item() == pytest.approx((ce0 + math.log(3)) / 2, abs=1e-6)
    arc, siam, race, att = (torch.tensor(v, requires_grad=True) for v in (1.0, 0.5, 0.2, 0.1))
    total, parts = feature_extractor_loss(arc, siam, race, att)
    assert total.item() == pytest.approx(1.0 + 5.0 + 2.0 + 1.0)
    assert parts["L_siam"].item() == 0.5 and not parts["L_siam"].requires_grad
    total.backward()
    assert siam.grad.item() == 10.0 and arc.grad.item() == 1.0
    total0, parts0 = feature_extractor_loss(arc, None, race, att, weights=(10, 0.2, 0.2))
    assert total0.item() == pytest.approx(1.0 + 0.04 + 0.02) and parts0["L_siam"] is None


def test_attribute_class_weights_known_frequencies():
    p = torch.tensor([0.5, 0.1, 0.8])
    w = attribute_class_weights(p)
    assert isinstance(w, AttributeWeights)
    assert torch.allclose(w.pos, torch.tensor([2.0, 10.0, 1.25])) and torch.allclose(w.neg, torch.tensor([2.0, 10 / 9,
                                                                                                         5.0]))
    wb = attribute_class_weights(p, method="balanced")
    assert torch.allclose(wb.pos, w.pos / 2) and torch.allclose(wb.neg, w.neg / 2)
    # Expected balanced weight over the data is 1 per attribute.
    assert torch.allclose(p * wb.pos + (1 - p) * wb.neg, torch.ones(3))
    # From labels (CelebA's −1/1): column rates 0.5, 0.25.
    labels = torch.tensor([[1, -1], [-1, -1], [1, 1], [-1, -1]])
    wl = attribute_class_weights(labels)
    assert torch.allclose(wl.pos, torch.tensor([2.0, 4.0])) and torch.allclose(wl.neg, torch.tensor([2.0, 4 / 3]))
    # Effective number: β = 0 → 1, 1; β → 1 → inverse frequency normalised to w⁺ + w⁻ = 2 (w⁺ = 2(1 − p)).
    we0 = attribute_class_weights(p, method="effective", beta=0.0, n_samples=1000)
    assert torch.allclose(we0.pos, torch.ones(3)) and torch.allclose(we0.neg, torch.ones(3))
    we1 = attribute_class_weights(p, method="effective", beta=1 - 1e-9, n_samples=1000)
    assert torch.allclose(we1.pos, 2 * (1 - p), atol=1e-4) and torch.allclose(we1.neg, 2 * p, atol=1e-4)
    # Cui et al. with β = 0.99 and n = 1000: n⁺ = 100, n⁻ = 900 for the second attribute.
    we = attribute_class_weights(p, method="effective", beta=0.99, n_samples=1000)
    cp, cn = 0.01 / (1 - 0.99**100), 0.01 / (1 - 0.99**900)
    assert we.pos[1].item() == pytest.approx(2 * cp / (cp + cn), rel=1e-5)
    with pytest.raises(ValueError):
        attribute_class_weights(p, method="effective")
    with pytest.raises(ValueError):
        attribute_class_weights(torch.tensor([1.5]))
    # An absent attribute gets a large finite weight.
    assert torch.isfinite(attribute_class_weights(torch.tensor([0.0])).pos).all()


def test_L_attribute_class_weighted_bce():
    logits = torch.zeros(2, 3)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    w = AttributeWeights(torch.tensor([2.0, 10.0, 1.25]), torch.tensor([2.0, 10 / 9, 5.0]))
    ln2 = math.log(2.0)
    # Sample 0 weights 2, 10/9, 1.25; sample 1: 2, 10/9, 1.25 → both mean (2 + 10/9 + 1.25)/3 · ln 2.
    per = L_attribute_class(logits, targets, w, reduction="none")
    expected = (2 + 10 / 9 + 1.25) / 3 * ln2
    assert torch.allclose(per, torch.tensor([expected, expected]), atol=1e-6)
    assert L_attribute_class(logits, targets).item() == pytest.approx(ln2, abs=1e-6)
    assert L_attribute_class(logits, targets, kind="mse").item() == pytest.approx(0.25, abs=1e-6)
    masked = L_attribute_class(logits, targets, w, mask=torch.tensor([[True, False, False]] * 2), reduction="none")
    assert torch.allclose(masked, torch.tensor([2 * ln2, 2 * ln2]), atol=1e-6)
    # The weights steer the gradient: a rare positive (w⁺ = 10) pulls 10× harder than an unweighted one.
    z = torch.zeros(1, 3, requires_grad=True)
    L_attribute_class(z, torch.tensor([[0.0, 1.0, 0.0]]), w).backward()
    assert z.grad[0, 1].item() == pytest.approx(10 * -0.5 / 3, abs=1e-6)


# -- PulseConstraints ----------------------------------------------------------------------------------------------


class TinyF(nn.Module):
    """Features of 8×8 images: BN over a linear map (BN makes eval mode observable)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3 * 8 * 8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.bn(self.lin(x.flatten(1)))


@pytest.fixture()
def models():
    f = TinyF()
    torch.manual_seed(1)
    return f, nn.Linear(16, 7), nn.Linear(16, 40)


def test_pulse_constraints_terms_match_functions(models):
    f, c_r, c_a = models
    g = torch.Generator().manual_seed(2)
    images = torch.rand(4, 3, 8, 8, generator=g)
    ref_images = torch.rand(2, 3, 8, 8, generator=g)
    pc0 = PulseConstraints(f, c_r, c_a, target_race=0)
    with torch.no_grad():
        ref = pc0.features(ref_images)
    pc = PulseConstraints(f, c_r, c_a, lambdas=(1.0, 2.0, 3.0), reference_features=ref, target_race=torch.tensor([1, 6]),
                          target_attributes={20: 1.0, 31: 0.0})
    assert pc.active == ("L_sim", "L_race", "L_att")
    f.train()
    out = pc(images)
    assert out.shape == (4,) and f.training  # mode restored
    with torch.no_grad():
        f.eval()
        feats = f(images)
        ref_rows = ref.repeat_interleave(2, 0)  # 2 thumbnails × 2 restarts
        l_sim = L_sim(feats, ref_rows)
        l_race = L_race(c_r(feats), torch.tensor([1, 1, 6, 6]))
        t = torch.full((4, 40), float("nan"))
        t[:, 20], t[:, 31] = 1.0, 0.0
        l_att = L_att(c_a(feats), t)
    for name, val in (("L_sim", l_sim), ("L_race", l_race), ("L_att", l_att)):
        assert torch.allclose(pc.last_terms[name], val, atol=1e-6), name
    assert torch.allclose(out, l_sim + 2 * l_race + 3 * l_att, atol=1e-5)
    rej = pc.rejected()
    assert torch.equal(rej, (l_sim > 0.1) | (l_race > 0.1) | (l_att > 0.1))
    # Model parameters got no gradients; the images did.
    x = images.clone().requires_grad_(True)
    pc(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for m in models for p in m.parameters())
    assert all(p.requires_grad for m in models for p in m.parameters())
    # Inactive: λ = 0 or no target; errors for impossible set-ups.
    assert PulseConstraints(f, c_r, c_a, lambdas=(1, 0, 1), target_race=1, reference_features=ref).active == ("L_sim",)
    with pytest.raises(ValueError, match="no active"):
        PulseConstraints(f, c_r, c_a)
    with pytest.raises(ValueError, match="C_R"):
        PulseConstraints(f, target_race=1)
    with pytest.raises(ValueError, match="rows"):
        PulseConstraints(f, reference_features=torch.randn(3, 16))(images)


def test_constraints_optimised_on_images_decrease(models):
    f, c_r, c_a = models
    g = torch.Generator().manual_seed(4)
    ref = torch.randn(1, 16, generator=g)
    values = torch.full((40,), float("nan"))
    values[5], values[9] = 1.0, 0.0
    setups = {"L_sim": {"reference_features": ref}, "L_race": {"target_race": 3}, "L_att": {"target_attributes": values}}
    for name, kw in setups.items():
        pc = PulseConstraints(f, c_r, c_a, **kw)
        logit = torch.zeros(2, 3, 8, 8)
        logit[1] = 0.5
        logit.requires_grad_(True)  # images = σ(logit) stay in [0, 1]
        opt = torch.optim.Adam([logit], lr=0.1)
        first = pc.terms(torch.sigmoid(logit))[name].detach()
        for _ in range(60):
            opt.zero_grad()
            pc(torch.sigmoid(logit)).sum().backward()
            opt.step()
        last = pc.terms(torch.sigmoid(logit))[name].detach()
        assert bool((last < 0.6 * first).all()), (name, first, last)


class ToyGenerator(nn.Module):
    """Minimal PulseSearch generator: 2 W+ rows of 8 dims → 3×8×8 in [−1, 1]."""

    n_latent, style_dim = 2, 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.map = nn.Linear(8, 8)
        self.syn = nn.Linear(16, 3 * 8 * 8)

    def noise_shapes(self) -> list[tuple[int, int, int]]:
        return [(1, 8, 8)]

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.map(z), 0.2)

    def synthesis(self, w_plus: torch.Tensor, noise: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = self.syn(w_plus.flatten(1)).view(-1, 3, 8, 8)
        if noise is not None:
            x = x + 0.01 * noise[0]
        return torch.tanh(x)


def test_hook_contract_with_pulse_search(models):
    f, c_r, c_a = models
    gen = ToyGenerator()
    fit = gaussian_fit(gen, n_samples=2000, batch=1000, seed=0)
    pc = PulseConstraints(f, c_r, c_a, lambdas=(0.0, 1.0, 1.0), target_race=torch.tensor([2, 4]),
                          target_attributes={0: 1.0})
    thumbs = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    common = {"steps": 8, "eps": 1e-9, "restarts": 2, "num_trainable_noise_layers": 1, "bad_noise_layers": ()}
    f.calls = 0
    out = PulseSearch(gen, fit, extra_losses=pc.as_extra_losses(), **common).search(thumbs, seeds=[0, 1])
    assert f.calls == 9  # one F forward per step shared by both terms
    assert set(out["losses"]) >= {"L_race", "L_att", "TOTAL"} and out["losses"]["L_race"].shape == (2,)
    assert rejected(out["losses"]).shape == (2,)
    single = PulseSearch(gen, fit, extra_losses=[(1.0, "constraints", pc)], **common).search(thumbs, seeds=[0, 1])
    assert torch.allclose(single["losses"]["constraints"], out["losses"]["L_race"] + out["losses"]["L_att"],
                          atol=1e-5)
    pc.clear_cache()
