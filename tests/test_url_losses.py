"""URL (seed 001): the confidence-aware identification loss, its gradient gating (Eq. 26) and variation
decorrelation."""
import math

import pytest
import torch
import torch.nn.functional as F

from lrface.losses.margin import CosFace
from lrface.losses.url import ConfidenceAwareHead, L_reg, VariationDecorrelation, confidence_aware_logits
from lrface.nets.iresnet import get_model
from lrface.nets.url import URLNet, split_sub_embeddings


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_eq26_gradient_gating_matches_autograd(reduction):
    b, k, d, c, m = 5, 4, 3, 6, 0.7
    f = _unit(b, k, d, seed=1).requires_grad_()
    w = _unit(c, k, d, seed=2).requires_grad_()
    s = torch.rand(b, k, generator=torch.Generator().manual_seed(3)) * 20 + 0.5
    y = torch.tensor([0, 3, 5, 3, 1])
    a = confidence_aware_logits(f, s, w, reduction)
    a = a.index_put((torch.arange(b), y), a[torch.arange(b), y] - m)
    loss = F.cross_entropy(a, y, reduction="sum")
    loss.backward()

    p = torch.softmax(a.detach(), dim=1)
    delta = F.one_hot(y, c).float()
    gate = s / k if reduction == "mean" else s                       # s_i^(k) (and the 1/K of the average)
    # Eq. 26: ∂L/∂w_j^(k) = Σ_i s_i^(k) (p_ij − δ_{y_i j}) f_i^(k)
    grad_w = torch.einsum("bk,bc,bkd->ckd", gate, p - delta, f.detach())
    # Eq. 26: ∂L/∂f_i^(k) = s_i^(k) ((p_{i,y_i} − 1) w_{y_i}^(k) + Σ_{j≠y_i} p_ij w_j^(k))
    grad_f = torch.einsum("bk,bc,ckd->bkd", gate, p - delta, w.detach())
    torch.testing.assert_close(w.grad, grad_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f.grad, grad_f, rtol=1e-5, atol=1e-6)

    # the gate is linear: doubling one sample's confidences at fixed posteriors doubles its prototype pull
    i = 2
    one = torch.einsum("k,c,kd->ckd", gate[i], (p - delta)[i], f.detach()[i])
    two = torch.einsum("k,c,kd->ckd", 2 * gate[i], (p - delta)[i], f.detach()[i])
    torch.testing.assert_close(two, 2 * one)


def test_logits_equal_the_explicit_sum_over_sub_embeddings():
    b, k, d, c = 3, 4, 5, 7
    head = ConfidenceAwareHead(k * d, c, num_sub_embeddings=k, m=2.0)
    emb = torch.randn(b, k * d)
    conf = torch.rand(b, k) * 10 + 1
    y = torch.tensor([1, -1, 6])
    logits = head(emb, conf, y)
    f = F.normalize(emb.reshape(b, k, d), dim=2)
    w = F.normalize(head.weight.detach().reshape(c, k, d), dim=2)
    expected = torch.zeros(b, c)
    for i in range(b):
        for j in range(c):
            expected[i, j] = sum(conf[i, kk] * (f[i, kk] @ w[j, kk]) for kk in range(k)) / k
    expected[0, 1] -= 2.0
    expected[2, 6] -= 2.0                                              # row 1 (label −1) gets no margin
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-5, atol=1e-5)
    assert logits.dtype == torch.float32


def test_one_sub_embedding_at_equal_confidence_is_cosface():
    # K = 1, s = 64 for every sample: a = 64·cos θ, target 64·cos θ − m; CosFace is 64·(cos θ − m/64)
    emb, y = torch.randn(6, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    url = ConfidenceAwareHead(16, 5, num_sub_embeddings=1, m=22.4)
    cos = CosFace(16, 5, s=64.0, m=0.35)
    cos.weight.data.copy_(url.weight.data)
    torch.testing.assert_close(url(emb, torch.full((6, 1), 64.0), y), cos(emb, y), rtol=1e-5, atol=1e-4)


def test_bf16_autocast_keeps_fp32_logits():
    head = ConfidenceAwareHead(32, 4, num_sub_embeddings=4, m=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(3, 32).bfloat16(), torch.rand(3, 4).bfloat16() + 1, torch.tensor([0, 1, 2]))
    assert out.dtype == torch.float32


def test_l_reg_is_the_mean_squared_confidence():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert L_reg(s).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_urlnet_confidences_start_at_init_and_are_positive():
    net = URLNet(get_model("r18", widths=[8, 8, 16, 16], num_features=32), num_sub_embeddings=4, confidence_init=30.0)
    emb, s = net.forward_with_confidence(torch.randn(2, 3, 112, 112))
    assert emb.shape == (2, 32) and s.shape == (2, 4)
    torch.testing.assert_close(s, torch.full((2, 4), 30.0))
    net.confidence.weight.data.normal_(0, 1)
    assert (net.forward_with_confidence(torch.randn(2, 3, 112, 112))[1] > 0).all()
    sub = split_sub_embeddings(emb, 4)
    torch.testing.assert_close(sub.norm(dim=2), torch.ones(2, 4))
    with pytest.raises(ValueError, match="divisible"):
        URLNet(get_model("r18", widths=[8, 8, 16, 16], num_features=30), num_sub_embeddings=4)


def test_variation_masks_and_classifier_shapes():
    vd = VariationDecorrelation(16, 8, ("low_resolution", "occlusion", "pose", "gender", "age", "smiling"))
    assert vd.masks.shape == (6, 16) and vd.masks.dtype == torch.bool
    assert vd.masks.sum(1).tolist() == [8] * 6
    assert len({tuple(m.tolist()) for m in vd.masks}) == 6
    assert [tuple(c.weight.shape) for c in vd.classifiers] == [(1, 128)] * 6
    f = _unit(4, 16, 8)
    x = vd.masked(f, 0).reshape(4, 16, 8)
    assert (x[:, ~vd.masks[0]] == 0).all() and torch.equal(x[:, vd.masks[0]], f[:, vd.masks[0]])
    same = VariationDecorrelation(16, 8, ("a", "b"), mask_seed=3)
    assert torch.equal(same.masks, VariationDecorrelation(16, 8, ("a", "b"), mask_seed=3).masks)
    with pytest.raises(KeyError, match="pose"):
        VariationDecorrelation(4, 2, ("pose",))(_unit(2, 4, 2), {})


def test_l_adv_moves_only_the_embedding_and_l_cls_trains_the_classifier():
    vd = VariationDecorrelation(8, 4, ("a", "b", "c"))
    f = _unit(6, 8, 4).requires_grad_()
    labels = {n: torch.tensor([0, 1, 0, 1, -1, 1.0]) for n in ("a", "b", "c")}
    out = vd(f, labels)
    out["L_adv"].backward(retain_graph=True)
    assert all(p.grad is None for p in vd.classifiers.parameters())
    assert f.grad is not None and f.grad.abs().sum() > 0
    f.grad = None
    out["L_cls"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vd.classifiers.parameters())
    assert f.grad.abs().sum() > 0


def test_l_adv_drives_the_other_classifiers_to_one_half():
    torch.manual_seed(0)
    vd = VariationDecorrelation(8, 4, ("a", "b", "c"), mask_seed=1)
    for clf in vd.classifiers:                      # confident, fixed classifiers: C_t' sees a lot in V_t at first
        clf.weight.data.normal_(0, 3.0)
    enc = torch.nn.Linear(10, 32)
    x = torch.randn(64, 10)

    def confusion():
        f = split_sub_embeddings(enc(x), 8)
        ps = [torch.sigmoid(vd.classifiers[t2](vd.masked(f, t))) for t in range(3) for t2 in range(3) if t2 != t]
        return torch.cat(ps).sub(0.5).abs().mean().item()

    before = confusion()
    opt = torch.optim.Adam(enc.parameters(), lr=0.02)
    for _ in range(300):
        out = vd(split_sub_embeddings(enc(x), 8), {n: torch.full((64,), -1.0) for n in ("a", "b", "c")})
        opt.zero_grad()
        out["L_adv"].backward()
        opt.step()
    after = confusion()
    assert before > 0.2 and after < 0.05, (before, after)


def test_confidence_aware_loss_learns_and_confidence_tracks_quality():
    """32 clean samples per class and 256 very noisy ones (about half classifiable): training separates the clean
    ones, and the learned s ends clearly larger on them than on the noisy ones — the paper's claim that s measures
    how identifiable a sample is (the confidence branch sees only a quality flag, so L_idt alone decides)."""
    torch.manual_seed(0)
    k, d, c = 4, 4, 4
    centres = F.normalize(torch.randn(c, k * d), dim=1) * 3
    y_clean, y_noisy = torch.arange(c).repeat(32), torch.arange(c).repeat(256)
    x = torch.cat([centres[y_clean] + 0.3 * torch.randn(len(y_clean), k * d),
                   centres[y_noisy] + 8.0 * torch.randn(len(y_noisy), k * d)])
    y = torch.cat([y_clean, y_noisy])
    q = torch.cat([torch.ones(len(y_clean)), torch.zeros(len(y_noisy))])[:, None]
    emb_net, conf_net = torch.nn.Linear(k * d, k * d), torch.nn.Linear(1, k)
    torch.nn.init.zeros_(conf_net.weight)
    torch.nn.init.constant_(conf_net.bias, math.log(2.0))
    head = ConfidenceAwareHead(k * d, c, num_sub_embeddings=k, m=1.0)
    opt = torch.optim.Adam([*emb_net.parameters(), *conf_net.parameters(), *head.parameters()], lr=0.01)
    for _ in range(300):
        s = conf_net(q).exp()
        loss = F.cross_entropy(head(emb_net(x), s, y), y) + 1e-3 * L_reg(s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = conf_net(q).exp()
        hit = head(emb_net(x), s, torch.full_like(y, -1)).argmax(1) == y
    n = len(y_clean)
    assert hit[:n].float().mean() > 0.95
    log_s = s.log().mean(1)
    assert log_s[:n].mean() > log_s[n:].mean() + 0.25, (log_s[:n].mean(), log_s[n:].mean())


def test_variations_without_a_labeller_fail_before_training():
    from datamodules.variations import VariationAugment
    from lightning_modules.feature_extractor import FeatureExtractorModule

    net = URLNet(get_model("r18", widths=[8, 8, 16, 16], num_features=32), num_sub_embeddings=4)
    module = FeatureExtractorModule(net, ConfidenceAwareHead, torch.optim.SGD, num_classes=3,
                                    variations=("low_resolution", "gender"),
                                    variation_augment=VariationAugment(low_resolution={"p": 0.5}))
    with pytest.raises(ValueError, match=r"\['gender'\] have no labels.*\['low_resolution'\]"):
        module._check_variation_sources()
    module.decorrelation = VariationDecorrelation(4, 8, ("low_resolution",))
    module._check_variation_sources()
