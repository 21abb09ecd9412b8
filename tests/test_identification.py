"""Open-set TPIR@FPIR, CMC and mAP on constructed galleries whose cosine scores are known exactly.

Gallery images are basis vectors e_j; a probe built from scores (s_0, …, s_{G-1}) is
(s_0, …, s_{G-1}, sqrt(1 − Σ s²)), so its cosine with e_j is exactly s_j.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrface.metrics.identification import cmc, gallery_units, mean_average_precision, open_set_identification


def _probes(scores: list[list[float]], dim: int) -> np.ndarray:
    out = np.zeros((len(scores), dim))
    for i, s in enumerate(scores):
        out[i, : len(s)] = s
        out[i, -1] = math.sqrt(1.0 - sum(x * x for x in s))
    return out


def _basis(n: int, dim: int) -> np.ndarray:
    return np.eye(dim)[:n]


# Three gallery identities (one image each) and the score of every probe against [id0, id1, id2].
MATED = [([0.8, 0.1, 0.2], 0), ([0.5, 0.4, 0.1], 1), ([0.6, 0.5, 0.3], 2), ([0.2, 0.1, 0.0], 0)]
UNMATED = [([0.7, 0.0, 0.0], -1), ([0.1, 0.35, 0.0], 7), ([0.0, 0.0, 0.25], -1), ([0.05, 0.0, 0.0], -1)]


def _case():
    probes = _probes([s for s, _ in MATED + UNMATED], 4)
    ids = [i for _, i in MATED + UNMATED]
    return probes, ids, _basis(3, 4), [0, 1, 2]


def test_open_set_hand_computed_rank2() -> None:
    # Mate ranks 0, 1, 2, 0 → with r = 2 probe 3 is never identified; genuine scores (0.8, 0.4, -, 0.2).
    # Unmated maxima (0.7, 0.35, 0.25, 0.05). Ascending grid → (FPIR, TPIR):
    # 0.05 (1, .75) 0.2 (.75, .75) 0.25 (.75, .5) 0.35 (.5, .5) 0.4 (.25, .5) 0.7 (.25, .25) 0.8 (0, .25) 0.8⁺ (0, 0)
    res = open_set_identification(*_case(), fpirs=(0.25, 0.5, 0.75, 0.0, 0.7), rank=2)
    assert res["n_mated"] == 4 and res["n_unmated"] == 4
    assert res["tpir"] == pytest.approx({0.25: 0.5, 0.5: 0.5, 0.75: 0.75, 0.0: 0.25, 0.7: 0.75})
    assert res["threshold"][0.25] == pytest.approx(0.4) and res["threshold"][0.75] == pytest.approx(0.2)
    assert res["fpir_achieved"][0.7] == pytest.approx(0.75)
    # Trapezoids: .25·.25 + .25·.5 + .25·.5 + .25·.75 = 0.5
    assert res["auc"] == pytest.approx(0.5)
    assert res["rank1"] == pytest.approx(0.5)
    np.testing.assert_allclose(res["curve"]["fpir"], [1, .75, .75, .5, .25, .25, 0, 0])
    np.testing.assert_allclose(res["curve"]["tpir"], [.75, .75, .5, .5, .5, .25, .25, 0])


def test_rank_fpir_rule_strictness_and_grids() -> None:
    case = _case()
    # r = 20 admits probe 3 (score 0.3): at t = 0.3, FPIR = 0.5 and TPIR = 0.75.
    assert open_set_identification(*case, fpirs=(0.5,), rank=20)["tpir"][0.5] == pytest.approx(0.75)
    # "at_most": best TPIR with FPIR ≤ 0.7 is at t = 0.35 → 0.5 (closest picks FPIR 0.75 → 0.75).
    assert open_set_identification(*case, fpirs=(0.7,), rank=2, fpir_rule="at_most")["tpir"][0.7] == 0.5
    # At t = 0.25 exactly: ≥ accepts the unmated 0.25 (FPIR .75), > does not (FPIR .5).
    ge = open_set_identification(*case, fpirs=(0.75,), rank=2, thresholds=[0.25])
    gt = open_set_identification(*case, fpirs=(0.75,), rank=2, thresholds=[0.25], strict=True)
    assert ge["fpir_achieved"][0.75] == pytest.approx(0.75) and gt["fpir_achieved"][0.75] == pytest.approx(0.5)
    assert ge["tpir"][0.75] == gt["tpir"][0.75] == pytest.approx(0.5)
    # BTNet grid: linspace(min(lowest 2nd-best mated score 0.1, lowest unmated max 0.05), 0.7, n).
    btnet = open_set_identification(*case, rank=2, thresholds=14, strict=True)
    np.testing.assert_allclose(btnet["curve"]["threshold"], np.linspace(0.05, 0.7, 14))
    # > 0.05: unmated 0.7, 0.35, 0.25 → FPIR 0.75; the last grid point 0.7 → FPIR 0.
    assert btnet["curve"]["fpir"][0] == pytest.approx(0.75) and btnet["curve"]["fpir"][-1] == 0.0


def test_prototypes_and_images_differ_where_they_should() -> None:
    # id 0 has two images (e0, e1), id 1 one (e2). Probe A (id 1) scores (0.6, 0.6, 0.5): as images its mate is
    # third; the id-0 prototype (e0 + e1)/√2 scores 1.2/√2 ≈ 0.849, so as prototypes its mate is second.
    # Probe B (id 0) scores (0.9, 0, 0.3): image mate score 0.9, prototype score 0.9/√2 ≈ 0.636.
    gallery, gids = _basis(3, 4), [0, 0, 1]
    probes = _probes([[0.6, 0.6, 0.5], [0.9, 0.0, 0.3], [0.0, 0.0, 0.0]], 4)
    pids = [1, 0, -1]  # the last one is an unmated probe with max score 0
    assert cmc(probes[:2], pids[:2], gallery, gids, ranks=(1, 2), gallery="images") == {1: 0.5, 2: 0.5}
    assert cmc(probes[:2], pids[:2], gallery, gids, ranks=(1, 2), gallery="prototypes") == {1: 0.5, 2: 1.0}
    img = open_set_identification(probes, pids, gallery, gids, fpirs=(0.0,), rank=2, gallery="images",
                                  thresholds=[0.7])
    proto = open_set_identification(probes, pids, gallery, gids, fpirs=(0.0,), rank=2, gallery="prototypes",
                                    thresholds=[0.7])
    assert img["tpir"][0.0] == pytest.approx(0.5)  # B at 0.9 ≥ 0.7; A outside the top 2
    assert proto["tpir"][0.0] == pytest.approx(0.0)  # B at 0.636 < 0.7; A at 0.5 < 0.7


def test_prototypes_average_raw_embeddings_and_keep_distractors_apart() -> None:
    emb = np.array([[3.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 5.0], [1.0, 0, 0, 0]])
    units, ids = gallery_units(emb, [4, 4, 9, -100, -100], "prototypes")
    assert ids.tolist() == [4, 9, -100, -100]
    np.testing.assert_allclose(units[0].numpy(), np.array([3, 1, 0, 0]) / math.sqrt(10), rtol=1e-6)
    np.testing.assert_allclose(units[2:].numpy(), [[0, 0, 0, 1], [1, 0, 0, 0]])
    units, ids = gallery_units(torch.tensor(emb), [4, 4, 9, -100, -100], "images")
    assert ids.tolist() == [4, 4, 9, -100, -100] and units.shape == (5, 4)


def test_cmc_with_distractors_and_map() -> None:
    # Gallery: id 0 ×2 (e0, e1), id 1 (e2), distractors (e3, e4).
    gallery, gids = _basis(5, 6), [0, 0, 1, -100, -100]
    probes = _probes([
        [0.5, 0.1, 0.0, 0.3, 0.2],   # id 0: relevant at positions 1 and 4 → AP (1/1 + 2/4)/2 = 0.75
        [0.1, 0.0, 0.2, 0.4, 0.3],   # id 1: relevant at position 3 → AP 1/3
        [0.0, 0.0, 0.6, 0.1, 0.0],   # id 1: rank 1 → AP 1
    ], 6)
    pids = [0, 1, 1]
    assert cmc(probes, pids, gallery, gids, ranks=(1, 2, 3, 20)) == pytest.approx({1: 2 / 3, 2: 2 / 3, 3: 1, 20: 1})
    assert mean_average_precision(probes, pids, gallery, gids) == pytest.approx((0.75 + 1 / 3 + 1) / 3)
    with pytest.raises(ValueError, match="no mate"):
        cmc(probes, [0, 1, 5], gallery, gids)
    assert cmc(probes, [0, 1, 5], gallery, gids, ranks=(1,), ignore_unmated=True) == {1: 0.5}


def test_open_set_needs_both_kinds_of_probe() -> None:
    probes, ids, gallery, gids = _case()
    with pytest.raises(ValueError, match="mated and unmated"):
        open_set_identification(probes[:4], ids[:4], gallery, gids)
    with pytest.raises(ValueError, match="3 ids for 4"):
        open_set_identification(probes[:4], ids[:3], gallery, gids)
