"""AdaFace head: logits and EMA statistics against the formulas in numpy, the official kernel layout, Partial FC."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lrface.losses.margin import AdaFace, CurricularFace
from lrface.losses.partial_fc import PartialFC

D, C = 4, 4


def _np_logits(emb, weight, labels, mean, std, s, m, h, eps=1e-3):
    """The official head's formulas in float64 over the whole matrix (arccos / θ clip / cos on every entry)."""
    emb, weight = np.asarray(emb, np.float64), np.asarray(weight, np.float64)
    norms = np.clip(np.linalg.norm(emb, axis=1), 0.001, 100)
    cos = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (weight / np.linalg.norm(weight, axis=1,
                                                                                        keepdims=True)).T
    cos = np.clip(cos, -1 + eps, 1 - eps)
    scaler = np.clip((norms - mean) / (std + eps) * h, -1, 1)
    onehot = np.zeros_like(cos)
    for i, y in enumerate(labels):
        if y >= 0:
            onehot[i, y] = 1.0
    theta = np.clip(np.arccos(cos) + onehot * (-m * scaler[:, None]), eps, math.pi - eps)
    return (np.cos(theta) - onehot * (m + m * scaler[:, None])) * s, scaler


def _ema(old, new, alpha):
    return alpha * new + (1 - alpha) * old


def _case():
    """3 rows, 4 classes. Row 2 is its own class centre with a large norm: scaler clipped at +1 and θ_y − m < eps."""
    weight = torch.tensor([[1.0, 0.2, 0.0, 0.1], [0.0, 1.0, 0.3, 0.0], [0.2, 0.0, 1.0, 0.4], [0.1, 0.3, 0.2, 1.0]])
    directions = torch.tensor([[0.9, 0.5, 0.1, 0.3], [0.2, 0.3, 0.9, 0.1], [0.0, 0.0, 0.0, 0.0]])
    directions[2] = weight[3]
    norms = torch.tensor([5.0, 20.0, 60.0])
    emb = F.normalize(directions, dim=1) * norms[:, None]
    return emb, weight, torch.tensor([0, 2, 3])


def _head(weight, **kw) -> AdaFace:
    head = AdaFace(D, weight.shape[0], **kw)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def test_logits_and_statistics_match_the_formulas():
    emb, weight, labels = _case()
    s, m, h, alpha = 64.0, 0.4, 3.0, 0.5
    head = _head(weight, s=s, m=m, h=h, t_alpha=alpha)
    logits = head(emb, labels)

    n = emb.double().norm(dim=1).numpy()
    mean = _ema(20.0, n.mean(), alpha)  # the statistics move before the scaler is computed (official order)
    std = _ema(100.0, n.std(ddof=1), alpha)
    ref, scaler = _np_logits(emb, weight, labels.tolist(), mean, std, s, m, h)
    assert -1 < scaler[0] < -0.5 and -0.5 < scaler[1] < 0 and scaler[2] == 1.0  # inside and outside the clip
    assert logits.dtype == torch.float32
    np.testing.assert_allclose(logits.detach().numpy(), ref, rtol=1e-5, atol=2e-4)
    # row 2: θ_y = arccos(0.999) ≈ 0.045 < m·1, clipped at eps, then cos(eps) − 2m
    assert logits[2, 3].item() == pytest.approx(s * (math.cos(1e-3) - 2 * m), abs=1e-3)
    assert head.batch_mean.item() == pytest.approx(mean, rel=1e-6)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-6)
    assert head.t.item() == 0.0


def test_ema_after_two_steps_single_row_and_eval_mode():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(C, D, generator=g)
    batches = [torch.randn(5, D, generator=g) * 7.0, torch.randn(3, D, generator=g) * 30.0]
    head = _head(weight, t_alpha=0.1)
    mean, std = 20.0, 100.0
    for emb in batches:
        head(emb, torch.arange(len(emb)) % C)
        n = np.clip(emb.double().norm(dim=1).numpy(), 0.001, 100)
        mean, std = _ema(mean, n.mean(), 0.1), _ema(std, n.std(ddof=1), 0.1)
    assert head.batch_mean.item() == pytest.approx(mean, rel=1e-6)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-6)

    # one row: std undefined → mean moves, std stays, nothing becomes NaN
    one = torch.randn(1, D, generator=g) * 12.0
    out = head(one, torch.tensor([1]))
    assert torch.isfinite(out).all()
    assert head.batch_mean.item() == pytest.approx(_ema(mean, one.double().norm().item(), 0.1), rel=1e-6)
    assert head.batch_std.item() == pytest.approx(std, rel=1e-6)

    # eval: statistics frozen, unless asked (the official head updates on every call)
    frozen = (head.batch_mean.clone(), head.batch_std.clone())
    head.eval()
    head(batches[0], torch.zeros(5, dtype=torch.long))
    assert torch.equal(head.batch_mean, frozen[0]) and torch.equal(head.batch_std, frozen[1])
    head.update_stats_in_eval = True
    head(batches[0], torch.zeros(5, dtype=torch.long))
    assert not torch.equal(head.batch_mean, frozen[0])


def test_norms_are_detached_from_the_gradient():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(C, D, generator=g)
    emb = torch.randn(6, D, generator=g) * torch.tensor([5.0, 10.0, 15.0, 20.0, 25.0, 30.0])[:, None]
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    m, h = 0.4, 0.333
    head = _head(weight, m=m, h=h, t_alpha=1.0)
    e = emb.clone().requires_grad_()
    F.cross_entropy(head(e, labels), labels).backward()

    def manual(detach: bool) -> torch.Tensor:
        x = emb.clone().requires_grad_()
        norms = x.norm(dim=1)
        if detach:
            norms = norms.detach()
        mean, std = norms.detach().mean(), norms.detach().std()  # t_alpha = 1: the batch statistics themselves
        scaler = ((norms - mean) / (std + 1e-3) * h).clamp(-1, 1)
        assert (scaler.abs() < 1).all()  # unclipped: the norm would carry gradient if it were not detached
        cos = (F.normalize(x, dim=1) @ F.normalize(weight, dim=1).T).clamp(-1 + 1e-3, 1 - 1e-3)
        onehot = F.one_hot(labels, C).float()
        theta = (cos.acos() - onehot * m * scaler[:, None]).clamp(1e-3, math.pi - 1e-3)
        logits = 64.0 * (theta.cos() - onehot * (m + m * scaler[:, None]))
        F.cross_entropy(logits, labels).backward()
        return x.grad

    torch.testing.assert_close(e.grad, manual(detach=True), rtol=1e-5, atol=1e-6)
    assert (e.grad - manual(detach=False)).abs().max() > 1e-3  # the test can tell the difference


def test_official_kernel_state_dict_loads_and_reproduces():
    emb, weight, labels = _case()
    kernel = weight.t() * torch.tensor([2.0, 0.5, 3.0, 1.0])  # D×C, columns of any norm (normalised in forward)
    official = {"kernel": kernel, "t": torch.zeros(1), "batch_mean": torch.tensor([18.0]),
                "batch_std": torch.tensor([6.0])}
    head = AdaFace(D, C, t_alpha=0.01)
    head.load_state_dict(official, strict=True)
    torch.testing.assert_close(head.weight.data, kernel.t())
    logits = head(emb, labels)
    n = emb.double().norm(dim=1).numpy()
    mean, std = _ema(18.0, n.mean(), 0.01), _ema(6.0, n.std(ddof=1), 0.01)
    ref, _ = _np_logits(emb, weight, labels.tolist(), mean, std, 64.0, 0.4, 0.333)
    np.testing.assert_allclose(logits.detach().numpy(), ref, rtol=1e-5, atol=2e-4)
    assert set(head.state_dict()) == {"weight", "t", "batch_mean", "batch_std"}
    # CurricularFace still takes its official kernel through the shared helper
    curricular = CurricularFace(D, C)
    curricular.load_state_dict({"kernel": kernel, "t": torch.tensor([0.2])})
    torch.testing.assert_close(curricular.weight.data, kernel.t())


def test_bf16_autocast_gives_fp32_logits():
    emb, weight, labels = _case()
    ref = _head(weight)(emb.bfloat16().float(), labels)
    head = _head(weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(emb.bfloat16(), labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_rows_labelled_minus_one_get_no_margin_and_no_statistics():
    emb, weight, labels = _case()
    labels = torch.tensor([0, -1, 3])
    head = _head(weight, t_alpha=0.5)
    logits = head(emb, labels)
    cos = (F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).T).clamp(-1 + 1e-3, 1 - 1e-3)
    torch.testing.assert_close(logits[1], 64.0 * cos[1])
    assert not torch.allclose(logits[0], 64.0 * cos[0])
    kept = emb[[0, 2]].double().norm(dim=1).numpy()
    assert head.batch_mean.item() == pytest.approx(_ema(20.0, kept.mean(), 0.5), rel=1e-6)
    assert head.batch_std.item() == pytest.approx(_ema(100.0, kept.std(ddof=1), 0.5), rel=1e-6)


def test_partial_fc_equals_head_plus_cross_entropy():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(7, D, generator=g)
    emb = torch.randn(8, D, generator=g) * torch.linspace(3, 40, 8)[:, None]
    labels = torch.tensor([0, 6, 3, -1, 2, 5, 1, 4])

    head = _head(weight, t_alpha=0.2)
    e = emb.clone().requires_grad_()
    ref = F.cross_entropy(head(e, labels), labels, ignore_index=-1)
    ref.backward()

    pfc = PartialFC(_head(weight, t_alpha=0.2), D, 7, sample_rate=1.0)
    x = emb.clone().requires_grad_()
    loss = pfc(x, labels)
    loss.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, e.grad)
    torch.testing.assert_close(pfc.weight.grad, head.weight.grad)
    torch.testing.assert_close(pfc.margin_softmax.batch_mean, head.batch_mean)
    torch.testing.assert_close(pfc.margin_softmax.batch_std, head.batch_std)
    assert {"margin_softmax.batch_mean", "margin_softmax.batch_std"} <= set(pfc.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pfc(emb.bfloat16(), labels).dtype == torch.float32


def test_learns_a_separable_toy_problem():
    torch.manual_seed(0)
    classes, dim = 4, 16
    centres = torch.randn(classes, dim) * 3
    y = torch.arange(classes).repeat_interleave(16)
    x = centres[y] + torch.randn(len(y), dim)
    net = torch.nn.Linear(dim, 8)
    head = AdaFace(8, classes, s=16.0, m=0.4, h=0.333, t_alpha=0.1)
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(head(net(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    head.eval()
    with torch.no_grad():
        assert (head.cosine(net(x)).argmax(1) == y).float().mean() == 1.0


# -------------------------------------------------------------------------------------------- two gloo ranks
W, B = 2, 4


def _global_batch():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(5, D, generator=g)
    emb = torch.randn(W * B, D, generator=g) * torch.linspace(2, 50, W * B)[:, None]
    labels = torch.tensor([0, 4, 2, 1, 3, -1, 4, 0])
    return emb, weight, labels


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg_init", rank=rank, world_size=W)
    try:
        emb, weight, labels = _global_batch()
        rows = slice(rank * B, (rank + 1) * B)
        out = {}
        for sync in (True, False):
            head = _head(weight, t_alpha=0.5, sync_stats=sync)
            head(emb[rows], labels[rows])
            out[sync] = (head.batch_mean.clone(), head.batch_std.clone())
        pfc = PartialFC(_head(weight, t_alpha=0.5), D, 5)
        e = emb[rows].clone().requires_grad_()
        loss = pfc(e, labels[rows])
        loss.backward()
        out["pfc"] = {"loss": loss.detach(), "grad": e.grad, "mean": pfc.margin_softmax.batch_mean.clone(),
                      "std": pfc.margin_softmax.batch_std.clone()}
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_share_global_statistics_and_partial_fc_matches(tmp_path: Path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=W, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(W)]
    emb, weight, labels = _global_batch()
    keep = labels != -1
    n = emb[keep].double().norm(dim=1).numpy()
    for r in res:  # synced: statistics of the global batch's labelled rows, identical on both ranks
        assert r[True][0].item() == pytest.approx(_ema(20.0, n.mean(), 0.5), rel=1e-6)
        assert r[True][1].item() == pytest.approx(_ema(100.0, n.std(ddof=1), 0.5), rel=1e-6)
    for rank, r in enumerate(res):  # local: each rank's own rows
        sel = slice(rank * B, (rank + 1) * B)
        local = emb[sel][keep[sel]].double().norm(dim=1).numpy()
        assert r[False][0].item() == pytest.approx(_ema(20.0, local.mean(), 0.5), rel=1e-6)

    head = _head(weight, t_alpha=0.5)
    e = emb.clone().requires_grad_()
    ref = F.cross_entropy(head(e, labels), labels, ignore_index=-1)
    ref.backward()
    for rank, r in enumerate(res):
        torch.testing.assert_close(r["pfc"]["loss"], ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(r["pfc"]["grad"], W * e.grad[rank * B:(rank + 1) * B], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(r["pfc"]["mean"], head.batch_mean)
        torch.testing.assert_close(r["pfc"]["std"], head.batch_std)
