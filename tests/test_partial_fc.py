"""Partial FC: equal to full-FC margin softmax (loss and gradients), single process and sharded over 2 gloo ranks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lrface.losses.margin import ArcFace, CombinedMarginHead, CosFace, CurricularFace
from lrface.losses.partial_fc import PartialFC, exclude_from_ddp, shard_range
from lrface.losses.url import ConfidenceAwareHead

D, C, B, W = 16, 11, 6, 2
# Global batch of W·B rows: classes on both shards of an 11-class split (rank 0: 0–5, rank 1: 6–10) and two ignored.
LABELS = torch.tensor([0, -1, 5, 6, 10, 3, 7, 2, -1, 9, 6, 1])

HEADS = {
    "arcface": lambda: ArcFace(D, C),
    "arcface_analytic": lambda: ArcFace(D, C, arcface_impl="analytic"),
    "cosface": lambda: CosFace(D, C),
    "filtered": lambda: CombinedMarginHead(D, C, m2=0.5, interclass_filtering_threshold=0.1),
    "curricular": lambda: CurricularFace(D, C),
}


def _data(seed: int = 0, classes: int = C) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(W * B, D, generator=g)
    weight = torch.randn(classes, D, generator=g)
    return emb, weight


def _head(kind: str, weight: torch.Tensor) -> nn.Module:
    head = HEADS[kind]() if weight.shape[0] == C else ArcFace(D, weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def _full_fc(kind: str, emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor):
    """Reference: the full-FC head + F.cross_entropy on the whole batch."""
    head = _head(kind, weight)
    e = emb.clone().requires_grad_()
    loss = F.cross_entropy(head(e, labels), labels, ignore_index=-1)
    loss.backward()
    return loss.detach(), e.grad, head.weight.grad, head


def _url_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """URL (K = 4 sub-embeddings of D = 16): embeddings, confidences in [5, 25], prototypes."""
    emb, weight = _data(seed=4)
    conf = 5 + 20 * torch.rand(W * B, 4, generator=torch.Generator().manual_seed(5))
    return emb, conf, weight


def _url_head(weight: torch.Tensor) -> ConfidenceAwareHead:
    head = ConfidenceAwareHead(D, weight.shape[0], num_sub_embeddings=4, m=3.0)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def _url_full_fc(emb, conf, weight, labels):
    head = _url_head(weight)
    e, c = emb.clone().requires_grad_(), conf.clone().requires_grad_()
    loss = F.cross_entropy(head(e, c, labels), labels, ignore_index=-1)
    loss.backward()
    return loss.detach(), e.grad, c.grad, head.weight.grad


def test_single_process_url_head_equals_full_fc() -> None:
    emb, conf, weight = _url_data()
    ref_loss, ref_e, ref_c, ref_w = _url_full_fc(emb, conf, weight, LABELS)
    pfc = PartialFC(_url_head(weight), D, C)
    e, c = emb.clone().requires_grad_(), conf.clone().requires_grad_()
    loss = pfc(e, LABELS, confidences=c)
    loss.backward()
    assert loss.item() > 1.0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for got, ref in ((e.grad, ref_e), (c.grad, ref_c), (pfc.weight.grad, ref_w)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="ConfidenceAwareHead"):
        pfc(e, LABELS)
    with pytest.raises(ValueError, match="ConfidenceAwareHead"):
        PartialFC(ArcFace(D, C), D, C)(e, LABELS, confidences=c)


def _nonzero_rows(grad: torch.Tensor) -> torch.Tensor:
    return torch.where(grad.abs().sum(dim=1) > 0)[0]


# ------------------------------------------------------------------------------------------------ single process
@pytest.mark.parametrize("kind", list(HEADS))
def test_single_process_equals_full_fc(kind: str) -> None:
    emb, weight = _data()
    ref_loss, ref_emb_grad, ref_w_grad, ref_head = _full_fc(kind, emb, weight, LABELS)
    pfc = PartialFC(_head(kind, weight), D, C)
    assert pfc.weight.shape == (C, D) and torch.equal(pfc.weight.detach(), weight)
    e = emb.clone().requires_grad_()
    loss = pfc(e, LABELS)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() > 1.0  # s = 64 and random centres: far from converged, a real check
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e.grad, ref_emb_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pfc.weight.grad, ref_w_grad, rtol=1e-4, atol=1e-6)
    assert torch.all(e.grad[LABELS == -1] == 0)
    if kind == "curricular":
        assert ref_head.t.item() != 0.0
        torch.testing.assert_close(pfc.margin_softmax.t, ref_head.t)


def test_all_rows_ignored_gives_zero_loss_and_gradients() -> None:
    emb, weight = _data()
    pfc = PartialFC(_head("arcface", weight), D, C)
    e = emb.clone().requires_grad_()
    loss = pfc(e, torch.full((W * B,), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(e.grad == 0) and torch.all(pfc.weight.grad == 0)


def test_sampling_keeps_positives_and_equals_full_fc_on_the_sampled_centres() -> None:
    torch.manual_seed(0)
    emb, weight = _data(classes=200)
    labels = torch.tensor([3, 17, 17, 150, 199, 3, 64, 88, 120, 17, 5, 150])
    pfc = PartialFC(ArcFace(D, 1), D, 200, sample_rate=0.1)
    with torch.no_grad():
        pfc.weight.copy_(weight)
    assert pfc.num_sample == 20
    e = emb.clone().requires_grad_()
    loss = pfc(e, labels)
    loss.backward()
    sampled = _nonzero_rows(pfc.weight.grad)
    assert len(sampled) == 20
    assert set(labels.tolist()) <= set(sampled.tolist())
    # Full FC over the sampled centres only, labels remapped to their positions.
    remapped = torch.searchsorted(sampled, labels)
    ref_loss, ref_emb_grad, ref_w_grad, _ = _full_fc("arcface", emb, weight[sampled], remapped)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e.grad, ref_emb_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pfc.weight.grad[sampled], ref_w_grad, rtol=1e-4, atol=1e-6)
    # Negatives are redrawn every step.
    pfc.weight.grad = None
    pfc(emb, labels).backward()
    assert set(_nonzero_rows(pfc.weight.grad).tolist()) != set(sampled.tolist())


def test_sampling_keeps_only_positives_when_they_exceed_the_budget() -> None:
    emb, _ = _data(classes=50)
    labels = torch.arange(12) * 4  # 12 distinct positives > int(0.1 · 50) = 5
    pfc = PartialFC(ArcFace(D, 50), D, 50, sample_rate=0.1)
    assert pfc.num_sample == 5
    pfc(emb, labels).backward()
    assert _nonzero_rows(pfc.weight.grad).tolist() == labels.tolist()


def test_fp32_under_bf16_autocast() -> None:
    emb, weight = _data()
    pfc = PartialFC(_head("arcface", weight), D, C)
    emb16 = emb.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pfc(emb16, LABELS)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, pfc(emb16.float(), LABELS), rtol=1e-6, atol=1e-6)


def test_shard_split_and_state_dict_layout() -> None:
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert [shard_range(1_000_000, r, 8)[1] for r in range(8)] == [125_000] * 8
    _, weight = _data()
    pfc = PartialFC(ArcFace(D, C), D, C, rank=1, world_size=2)
    assert (pfc.class_start, pfc.num_local) == (6, 5)
    sd = pfc.state_dict()
    assert list(sd) == ["weight"] and sd["weight"].shape == (5, D)  # arcface_torch softmax_fc_gpu_1.pt layout
    pfc.load_state_dict({"weight": weight})  # a full [C, D] matrix: the shard keeps its own rows
    assert torch.equal(pfc.weight.detach(), weight[6:])
    pfc.load_state_dict({"weight": weight[6:] * 2})  # an official per-rank shard, strict
    assert torch.equal(pfc.weight.detach(), weight[6:] * 2)
    with pytest.raises(RuntimeError, match="not initialised"):
        pfc(torch.randn(3, D), torch.tensor([0, 1, 2]))
    full = PartialFC(ArcFace(D, 1), D, C)
    full.load_state_dict({"weight": weight})
    full.shard_(rank=0, world_size=2)
    assert torch.equal(full.weight.detach(), weight[:6]) and full.num_sample == 6

    curr = PartialFC(CurricularFace(D, 1), D, C)
    curr.margin_softmax.t.fill_(0.25)
    sd = curr.state_dict()
    assert sorted(sd) == ["margin_softmax.t", "weight"]
    other = PartialFC(CurricularFace(D, 1), D, C)
    other.load_state_dict(sd)
    assert other.margin_softmax.t.item() == 0.25
    other.load_state_dict({"weight": weight})  # official checkpoint without t loads strict

    # The head is no submodule, yet its buffers follow .to() and its mode follows .train()/.eval().
    other.to(torch.float64)
    assert other.weight.dtype == other.margin_softmax.t.dtype == torch.float64
    other.to(torch.float32).eval()
    assert not other.margin_softmax.training
    other(torch.randn(4, D), torch.tensor([0, 1, 2, 3]))
    assert other.margin_softmax.t.item() == 0.25  # t moves only in training mode
    other.train()(torch.randn(4, D), torch.tensor([0, 1, 2, 3]))
    assert other.margin_softmax.t.item() != 0.25


def test_bad_labels_raise() -> None:
    pfc = PartialFC(ArcFace(D, 1), D, C)
    with pytest.raises(ValueError, match=r"in \[0, 11\)"):
        pfc(torch.randn(2, D), torch.tensor([3, 11]))
    with pytest.raises(ValueError, match="-1"):
        pfc(torch.randn(2, D), torch.tensor([-2, 0]))


def test_exclude_from_ddp_names_the_sharded_weights() -> None:
    model = nn.Module()
    model.backbone = nn.Linear(4, D)
    model.head = PartialFC(ArcFace(D, 1), D, C)
    assert exclude_from_ddp(model) == ["head.weight"]
    assert model._ddp_params_and_buffers_to_ignore == ["head.weight"]
    assert getattr(model.head.weight, "_ddp_ignored", False)


# ---------------------------------------------------------------------------------------------- 2 processes, gloo
class _Net(nn.Module):
    def __init__(self, head: PartialFC) -> None:
        super().__init__()
        self.backbone = nn.Linear(8, D)
        self.head = head

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), y)


def _backbone_input() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(W * B, 8, generator=g)
    return x, {"weight": torch.randn(D, 8, generator=g) * 0.3, "bias": torch.randn(D, generator=g) * 0.1}


def _worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg_init", rank=rank, world_size=W)
    try:
        out: dict[str, object] = {}
        rows = slice(rank * B, (rank + 1) * B)
        emb, weight = _data()
        for kind in ("arcface", "curricular"):
            pfc = PartialFC(_head(kind, weight), D, C)
            e = emb[rows].clone().requires_grad_()
            loss = pfc(e, LABELS[rows])
            loss.backward()
            out[kind] = {"loss": loss.detach(), "emb_grad": e.grad, "w_grad": pfc.weight.grad,
                         "start": pfc.class_start, "n": pfc.num_local, "full": pfc.full_weight()}
            if kind == "curricular":
                out[kind]["t"] = pfc.margin_softmax.t.clone()

        # Unequal batches (a short last batch on rank 1, with one ignored row): 6 + 3 rows in all.
        short = slice(0, B) if rank == 0 else slice(B, B + 3)
        pfc = PartialFC(_head("arcface", weight), D, C)
        e = emb[short].clone().requires_grad_()
        loss = pfc(e, LABELS[short])
        loss.backward()
        out["short"] = {"loss": loss.detach(), "emb_grad": e.grad, "w_grad": pfc.weight.grad}
        if rank == 1:
            with pytest.raises(ValueError, match=r"in \[0, 11\)"):
                pfc(emb[:2], torch.tensor([3, 11]))
        else:
            with pytest.raises(ValueError, match=r"in \[0, 11\)"):
                pfc(emb[:2], torch.tensor([3, 4]))  # the bad label is on the other rank: both raise, none hangs

        emb40, weight40 = _data(seed=1, classes=40)
        labels40 = torch.tensor([1, 33, 5, 5, 21, 39, -1, 12, 30, 1, 8, 25])
        torch.manual_seed(100 + rank)
        pfc = PartialFC(_head("arcface", weight40), D, 40, sample_rate=0.5)
        e = emb40[rows].clone().requires_grad_()
        loss = pfc(e, labels40[rows])
        loss.backward()
        out["sampled"] = {"loss": loss.detach(), "emb_grad": e.grad, "w_grad": pfc.weight.grad,
                          "start": pfc.class_start, "num_sample": pfc.num_sample}

        u_emb, u_conf, u_weight = _url_data()
        pfc = PartialFC(_url_head(u_weight), D, C)
        e, c = u_emb[rows].clone().requires_grad_(), u_conf[rows].clone().requires_grad_()
        loss = pfc(e, LABELS[rows], confidences=c)
        loss.backward()
        out["url"] = {"loss": loss.detach(), "emb_grad": e.grad, "conf_grad": c.grad, "w_grad": pfc.weight.grad,
                      "start": pfc.class_start, "n": pfc.num_local}

        ckpt = PartialFC(_head("arcface", weight), D, C, checkpoint_layout="full").state_dict()
        restored = PartialFC(ArcFace(D, 1), D, C)
        restored.load_state_dict(ckpt)
        out["ckpt"] = {"saved": ckpt["weight"], "restored": restored.weight.detach().clone()}

        x, bb = _backbone_input()
        net = _Net(PartialFC(_head("arcface", weight), D, C))
        net.backbone.load_state_dict(bb)
        exclude_from_ddp(net)
        # Shards have different shapes (6 vs 5 rows): DDP would fail its shape check if it saw them.
        ddp = nn.parallel.DistributedDataParallel(net)
        ddp(x[rows], LABELS[rows]).backward()
        out["ddp"] = {"backbone_grad": net.backbone.weight.grad.clone(), "w_grad": net.head.weight.grad.clone()}
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
        # DDP's reducer holds gloo work; destroying the group under it aborted one rank at exit now and then
        # ("terminate called without an active exception", 3 runs in 6 on a 2-core AMD EPYC).
        del ddp
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_process_gloo_equals_full_fc(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=W, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(W)]
    emb, weight = _data()

    ref_loss, ref_e, ref_c, ref_w = _url_full_fc(*_url_data(), LABELS)
    for rank, r in enumerate(res):  # URL: confidences gathered with the embeddings, prototypes sharded
        got = r["url"]
        torch.testing.assert_close(got["loss"], ref_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["w_grad"], ref_w[got["start"]:got["start"] + got["n"]], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["emb_grad"], W * ref_e[rank * B:(rank + 1) * B], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["conf_grad"], W * ref_c[rank * B:(rank + 1) * B], rtol=1e-4, atol=1e-6)

    for kind in ("arcface", "curricular"):
        ref_loss, ref_emb_grad, ref_w_grad, ref_head = _full_fc(kind, emb, weight, LABELS)
        assert [(r[kind]["start"], r[kind]["n"]) for r in res] == [(0, 6), (6, 5)]
        for rank, r in enumerate(res):
            got = r[kind]
            torch.testing.assert_close(got["loss"], ref_loss, rtol=1e-5, atol=1e-5)
            rows = slice(got["start"], got["start"] + got["n"])
            torch.testing.assert_close(got["w_grad"], ref_w_grad[rows], rtol=1e-4, atol=1e-6)
            # Embedding gradients come back ×W so that DDP's averaging of the backbone gives the exact gradient.
            torch.testing.assert_close(got["emb_grad"], W * ref_emb_grad[rank * B:(rank + 1) * B], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(got["full"], weight)
            if kind == "curricular":
                torch.testing.assert_close(got["t"], ref_head.t)

    ref_loss, ref_emb_grad, ref_w_grad, _ = _full_fc("arcface", emb[:B + 3], weight, LABELS[:B + 3])
    for rank, r in enumerate(res):
        torch.testing.assert_close(r["short"]["loss"], ref_loss, rtol=1e-5, atol=1e-5)
        rows = slice(0, B) if rank == 0 else slice(B, B + 3)
        torch.testing.assert_close(r["short"]["emb_grad"], W * ref_emb_grad[rows], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["short"]["w_grad"] for r in res]), ref_w_grad, rtol=1e-4, atol=1e-6)

    # Sampling: each rank kept its positives and exactly int(0.5·20) = 10 centres; the joint softmax equals full FC
    # over the union of both ranks' sampled centres.
    emb40, weight40 = _data(seed=1, classes=40)
    labels40 = torch.tensor([1, 33, 5, 5, 21, 39, -1, 12, 30, 1, 8, 25])
    sampled = []
    for r in res:
        got = r["sampled"]
        local = _nonzero_rows(got["w_grad"]) + got["start"]
        assert got["num_sample"] == 10 and len(local) == 10
        on_shard = {c for c in labels40.tolist() if got["start"] <= c < got["start"] + 20}
        assert on_shard <= set(local.tolist())
        sampled.append(local)
    sampled = torch.cat(sampled)
    remapped = torch.where(labels40 >= 0, torch.searchsorted(sampled, labels40.clamp_min(0)), labels40)
    ref_loss, ref_emb_grad, ref_w_grad, _ = _full_fc("arcface", emb40, weight40[sampled], remapped)
    for rank, r in enumerate(res):
        got = r["sampled"]
        torch.testing.assert_close(got["loss"], ref_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["emb_grad"], W * ref_emb_grad[rank * B:(rank + 1) * B], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["w_grad"][sampled[rank * 10:(rank + 1) * 10] - got["start"]],
                                   ref_w_grad[rank * 10:(rank + 1) * 10], rtol=1e-4, atol=1e-6)

    for r in res:
        torch.testing.assert_close(r["ckpt"]["saved"], weight)
    torch.testing.assert_close(res[0]["ckpt"]["restored"], weight[:6])
    torch.testing.assert_close(res[1]["ckpt"]["restored"], weight[6:])

    # End to end through DDP: the backbone gradient equals the single-process full-FC gradient of the whole batch.
    x, bb = _backbone_input()
    backbone = nn.Linear(8, D)
    backbone.load_state_dict(bb)
    head = _head("arcface", weight)
    F.cross_entropy(head(backbone(x), LABELS), LABELS, ignore_index=-1).backward()
    for r in res:
        torch.testing.assert_close(r["ddp"]["backbone_grad"], backbone.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.cat([r["ddp"]["w_grad"] for r in res]), head.weight.grad, rtol=1e-4, atol=1e-6)
