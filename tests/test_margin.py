"""Margin heads: values against hand computations, gradients, label -1, precision, DDP t, and real learning."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lrface.losses.margin import ArcFace, CombinedMarginHead, CosFace, CurricularFace


def _cos64(emb, weight):
    e = emb.double().numpy()
    w = weight.detach().double().numpy()
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return np.clip(e @ w.T, -1, 1)


def _data(b=6, d=5, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, d, generator=g)
    labels = torch.randint(0, c, (b,), generator=g)
    return emb, labels


def test_arcface_logits_by_hand_and_straight_through_grad():
    torch.manual_seed(0)
    head = ArcFace(5, 7, s=64.0, m=0.5)
    emb, labels = _data()
    labels[2] = -1
    logits = head(emb, labels)
    cos = _cos64(emb, head.weight)
    expected = 64.0 * cos
    for i, y in enumerate(labels.tolist()):
        if y >= 0:
            expected[i, y] = 64.0 * math.cos(math.acos(cos[i, y]) + 0.5)
    assert logits.dtype == torch.float32 and logits.shape == (6, 7)
    np.testing.assert_allclose(logits.detach().numpy(), expected, rtol=1e-5, atol=2e-4)
    assert not np.allclose(expected, 64 * cos)  # the margin actually changed something

    # Straight-through: d logits / d cos = s everywhere, the margin is invisible to backward.
    c = torch.tensor(cos, dtype=torch.float32, requires_grad=True)
    g = torch.randn(6, 7)
    head.margin(c, labels).backward(g)
    torch.testing.assert_close(c.grad, 64.0 * g)


def test_arcface_analytic_threshold_and_easy_margin():
    m, s = 0.5, 10.0
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    labels = torch.tensor([0, 1, 2, -1])
    cos = torch.tensor(
        [[0.6, 0.1, -0.2], [0.3, -0.95, 0.2], [0.0, 0.4, -0.3], [0.9, -0.5, 0.5]], dtype=torch.float32
    )
    head = ArcFace(3, 3, s=s, m=m, arcface_impl="analytic")
    out = head.margin(cos.clone().requires_grad_(), labels).detach().numpy()
    exp = s * cos.double().numpy()
    exp[0, 0] = s * math.cos(math.acos(0.6) + m)
    exp[1, 1] = s * (-0.95 - mm)  # -0.95 <= cos(pi - m): linear fallback keeps the logit monotonic
    assert -0.95 <= th
    exp[2, 2] = s * math.cos(math.acos(-0.3) + m)
    np.testing.assert_allclose(out, exp, rtol=1e-5, atol=1e-4)

    easy = ArcFace(3, 3, s=s, m=m, arcface_impl="analytic", easy_margin=True)
    out = easy.margin(cos.clone(), labels).numpy()
    exp[1, 1] = s * -0.95
    exp[2, 2] = s * -0.3  # easy margin: no margin where cos <= 0
    np.testing.assert_allclose(out, exp, rtol=1e-5, atol=1e-4)

    # Analytic gradient at the target: d cos(θ+m)/d cos θ = cos m + cos θ·sin m / sin θ.
    c = cos.clone().requires_grad_()
    head.margin(c, labels)[0, 0].backward()
    np.testing.assert_allclose(c.grad[0, 0].item(), s * (math.cos(m) + 0.6 * math.sin(m) / 0.8), rtol=1e-5)
    # No NaN gradient at |cos| = 1.
    c = torch.tensor([[1.0, 0.0]], requires_grad=True)
    ArcFace(2, 2, arcface_impl="analytic").margin(c, torch.tensor([0])).sum().backward()
    assert torch.isfinite(c.grad).all()


def test_cosface_logits_by_hand():
    torch.manual_seed(1)
    head = CosFace(5, 7, s=32.0, m=0.35)
    emb, labels = _data(seed=3)
    labels[0] = -1
    logits = head(emb, labels).detach().numpy()
    exp = 32.0 * _cos64(emb, head.weight)
    for i, y in enumerate(labels.tolist()):
        if y >= 0:
            exp[i, y] -= 32.0 * 0.35
    np.testing.assert_allclose(logits, exp, rtol=1e-5, atol=1e-4)


def test_combined_margin_branches_and_errors():
    torch.manual_seed(0)
    emb, labels = _data()
    arc = CombinedMarginHead(5, 7, m1=1.0, m2=0.5, m3=0.0)
    cosf = CombinedMarginHead(5, 7, m1=1.0, m2=0.0, m3=0.4)
    cosf.weight.data.copy_(arc.weight.data)
    assert arc.kind == "arcface" and cosf.kind == "cosface"
    ref_arc = ArcFace(5, 7)
    ref_arc.weight.data.copy_(arc.weight.data)
    torch.testing.assert_close(arc(emb, labels), ref_arc(emb, labels))
    for bad in [dict(m1=1.35, m2=0.0, m3=0.0), dict(m1=1.0, m2=0.3, m3=0.2), dict(m1=0.9, m2=0.0, m3=0.4)]:
        with pytest.raises(ValueError, match="unsupported margins"):
            CombinedMarginHead(5, 7, **bad)
    with pytest.raises(ValueError):
        ArcFace(5, 7, arcface_impl="sphere")


def test_interclass_filtering():
    head = CosFace(3, 4, s=1.0, m=0.1, interclass_filtering_threshold=0.4)
    cos = torch.tensor([[0.5, 0.45, 0.1, 0.9], [0.6, 0.2, 0.41, 0.39]], requires_grad=True)
    labels = torch.tensor([3, -1])
    out = head.margin(cos, labels)
    exp = torch.tensor([[0.0, 0.0, 0.1, 0.8], [0.0, 0.2, 0.0, 0.39]])
    torch.testing.assert_close(out, exp)
    out.sum().backward()
    torch.testing.assert_close(cos.grad, torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]]))


@pytest.mark.parametrize("make", [lambda: ArcFace(16, 9), lambda: CosFace(16, 9), lambda: CurricularFace(16, 9)])
def test_fp32_under_bf16_autocast(make):
    torch.manual_seed(0)
    head = make()
    emb = torch.randn(5, 16)
    labels = torch.randint(0, 9, (5,))

    def run(e):
        if isinstance(head, CurricularFace):
            head.t.zero_()
        return head(e, labels)

    ref = run(emb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_fp32_in = run(emb)
        out_bf16_in = run(emb.bfloat16())
    assert out_fp32_in.dtype == out_bf16_in.dtype == torch.float32
    # bf16 cosines would be off by ~1e-2·s; fp32 ones agree to float rounding.
    torch.testing.assert_close(out_fp32_in, ref, rtol=1e-6, atol=1e-5)
    # Only the bf16 rounding of the input embedding itself remains.
    torch.testing.assert_close(out_bf16_in, ref, rtol=0, atol=64 * 0.02)


def _curricular_by_hand(cos, labels, t, m=0.5, s=64.0, alpha=0.01):
    """Straightforward per-element re-statement of the official CurricularFace forward (float64)."""
    cos = cos.copy()
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    valid = [i for i, y in enumerate(labels) if y >= 0]
    targets = [cos[i, labels[i]] for i in valid]
    t_new = alpha * float(np.mean(targets)) + (1 - alpha) * t if valid else t
    out = cos.copy()
    for i in valid:
        c_y = cos[i, labels[i]]
        c_ym = c_y * math.cos(m) - math.sqrt(max(1 - c_y**2, 0.0)) * math.sin(m)
        for j in range(cos.shape[1]):
            if cos[i, j] > c_ym:
                out[i, j] = cos[i, j] * (t_new + cos[i, j])
        out[i, labels[i]] = c_ym if c_y > th else c_y - mm
    return s * out, t_new


def test_curricularface_t_update_and_hard_modulation_by_hand():
    torch.manual_seed(0)
    head = CurricularFace(6, 5, s=64.0, m=0.5).train()
    assert head.t.item() == 0.0
    t = 0.0
    for step in range(3):
        emb, labels = _data(b=8, d=6, c=5, seed=10 + step)
        if step == 1:
            labels[4] = -1
            emb[0] = -head.weight.detach()[labels[0]]  # target cos = -1 < cos(pi - m): fallback branch
        cos = _cos64(emb, head.weight)
        exp, t = _curricular_by_hand(cos, labels.tolist(), t)
        out = head(emb, labels)
        np.testing.assert_allclose(out.detach().numpy(), exp, rtol=1e-5, atol=5e-4)
        np.testing.assert_allclose(head.t.item(), t, rtol=1e-5, atol=1e-7)
        if step == 1:
            np.testing.assert_allclose(out[4].detach().numpy(), 64 * cos[4], rtol=1e-5, atol=1e-4)
    assert t != 0.0

    # Gradient: s·(t + 2c) on hard negatives, s on easy ones.
    c = torch.tensor(cos, dtype=torch.float32, requires_grad=True)
    lab = labels.tolist()
    head.margin(c, labels).sum().backward()
    t_now = head.t.item()
    checked_hard = checked_easy = 0
    for i, y in enumerate(lab):
        if y < 0:
            continue
        c_y = cos[i, y]
        c_ym = c_y * math.cos(0.5) - math.sqrt(1 - c_y**2) * math.sin(0.5)
        for j in range(5):
            if j == y:
                continue
            if cos[i, j] > c_ym:
                np.testing.assert_allclose(c.grad[i, j].item(), 64 * (t_now + 2 * cos[i, j]), rtol=1e-4)
                checked_hard += 1
            else:
                np.testing.assert_allclose(c.grad[i, j].item(), 64.0, rtol=1e-6)
                checked_easy += 1
    assert checked_hard > 0 and checked_easy > 0


def test_curricularface_eval_mode_and_official_kernel_loading():
    torch.manual_seed(0)
    head = CurricularFace(6, 5)
    emb, labels = _data(d=6, c=5)
    head.eval()
    head(emb, labels)
    assert head.t.item() == 0.0
    head.update_t_in_eval = True
    head(emb, labels)
    assert head.t.item() != 0.0

    # A batch without any local label: plain s·cos everywhere, t untouched.
    head.train()
    t_before = head.t.clone()
    none = torch.full((6,), -1)
    torch.testing.assert_close(head(emb, none), 64.0 * head.cosine(emb))
    assert torch.equal(head.t, t_before)
    arc = ArcFace(6, 5)
    torch.testing.assert_close(arc(emb, none), 64.0 * arc.cosine(emb))

    kernel = torch.randn(6, 5)
    other = CurricularFace(6, 5)
    other.load_state_dict({"kernel": kernel, "t": torch.tensor([0.3])}, strict=True)
    assert torch.equal(other.weight.data, kernel.t()) and other.t.item() == pytest.approx(0.3)


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    head = CurricularFace(4, 3, t_alpha=0.1).train()
    g = torch.Generator().manual_seed(100 + rank)
    emb = torch.randn(5 + rank, 4, generator=g)  # unequal batches: the mean is over the global batch
    labels = torch.randint(0, 3, (5 + rank,), generator=g)
    head(emb, labels)
    torch.save({"t": head.t.clone(), "target": head.cosine(emb)[torch.arange(len(labels)), labels]},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.distributed
def test_curricularface_t_is_averaged_across_ranks(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    expected = 0.1 * torch.cat([r0["target"], r1["target"]]).mean()
    torch.testing.assert_close(r0["t"], r1["t"])
    torch.testing.assert_close(r0["t"][0], expected)
    assert not torch.isclose(expected, 0.1 * r0["target"].mean())


@pytest.mark.parametrize(
    "make",
    [
        lambda: ArcFace(16, 6),
        lambda: ArcFace(16, 6, arcface_impl="analytic"),
        lambda: CosFace(16, 6),
        lambda: CurricularFace(16, 6),
    ],
    ids=["arcface", "arcface_analytic", "cosface", "curricularface"],
)
def test_toy_training_learns(make):
    """Gaussian clusters in 8-D → linear layer → head, cross-entropy; held-out nearest-centre accuracy > 0.9."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    means = torch.randn(6, 8, generator=g) * 2.5

    def sample(n):
        y = torch.randint(0, 6, (n,), generator=g)
        return means[y] + torch.randn(n, 8, generator=g), y

    net = torch.nn.Linear(8, 16)
    head = make()
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    for _ in range(300):
        x, y = sample(64)
        loss = F.cross_entropy(head(net(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = sample(2000)
    with torch.no_grad():
        acc = (head.cosine(net(x)).argmax(1) == y).float().mean().item()
    assert torch.isfinite(loss)
    print(f"toy accuracy {acc:.4f}")
    assert acc > 0.9, acc
    if isinstance(head, CurricularFace):
        assert head.t.item() > 0.1  # t tracked the rising positive cosines
