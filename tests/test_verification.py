"""Verification metrics: hand-computed tiny cases and a brute-force re-implementation of insightface's protocol."""

import math

import numpy as np
import pytest
import torch

from lrface.metrics.verification import kfold_splits, pair_distances, roc_auc, roc_curve, tar_at_far, verify_pairs


def _pairs_with_distances(dists, seed=0):
    """2-D embedding pairs whose normalised squared distances are exactly ``dists`` (random norms and angles)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 2 * np.pi, len(dists))
    delta = np.arccos(1 - np.asarray(dists) / 2)
    r1, r2 = rng.uniform(0.5, 3, (2, len(dists)))
    e1 = np.stack([np.cos(a), np.sin(a)], 1) * r1[:, None]
    e2 = np.stack([np.cos(a + delta), np.sin(a + delta)], 1) * r2[:, None]
    return e1, e2


def test_kfold_splits_match_sklearn_convention():
    folds = kfold_splits(23, 10)
    assert [len(te) for _, te in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.array_equal(np.concatenate([te for _, te in folds]), np.arange(23))
    for tr, te in folds:
        assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(23)) and not set(tr) & set(te)
    assert np.array_equal(folds[1][1], [3, 4, 5]) and np.array_equal(folds[1][0][:4], [0, 1, 2, 6])
    (tr, te), = kfold_splits(5, 1)
    assert np.array_equal(tr, te)
    with pytest.raises(ValueError):
        kfold_splits(3, 10)


def test_verify_pairs_hand_computed():
    # fold A: same 0.505, same 1.005, diff 1.4955; fold B: same 0.205, diff 0.7955, diff 2.505
    d = [0.505, 1.005, 1.4955, 0.205, 0.7955, 2.505]
    same = [True, True, False, True, False, False]
    e1, e2 = _pairs_with_distances(d)
    np.testing.assert_allclose(pair_distances(e1, e2), d, atol=1e-12)
    r = verify_pairs(e1, e2, same, n_folds=2)
    # fold 0: best threshold on B is 0.21 (first max); on A it accepts nothing → 1/3.
    # fold 1: best threshold on A is 1.01; on B: 0.205 ✓, 0.7955 ✗, 2.505 ✓ → 2/3.
    np.testing.assert_allclose(r["thresholds"], [0.21, 1.01])
    np.testing.assert_allclose(r["accuracies"], [1 / 3, 2 / 3])
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["accuracy_std"] == pytest.approx(1 / 6)
    assert r["threshold"] == pytest.approx(0.61)
    # VAL@FAR=1e-3: train FAR jumps 0 → 0.5 between 0.795 and 0.796 (fold 0) and 1.495/1.496 (fold 1); the
    # interpolated thresholds 0.795002 / 1.495002 give VAL 1/2 (FAR 0) and VAL 1 (FAR 1/2).
    assert r["val"] == pytest.approx(0.75) and r["val_std"] == pytest.approx(0.25) and r["far"] == pytest.approx(0.25)


def _brute_force(e1, e2, same, n_folds):
    """Independent re-statement of insightface evaluate(): explicit loops, np.array_split folds."""
    e1 = np.asarray(e1, np.float64)
    e2 = np.asarray(e2, np.float64)
    e1 = e1 / np.sqrt((e1**2).sum(1))[:, None]
    e2 = e2 / np.sqrt((e2**2).sum(1))[:, None]
    dist = ((e1 - e2) ** 2).sum(1)
    same = np.asarray(same, bool)
    n = len(dist)
    chunks = np.array_split(np.arange(n), n_folds)
    thresholds = np.arange(0, 4, 0.01)

    def acc(t, idx):
        ok = 0
        for i in idx:
            ok += (dist[i] < t) == same[i]
        return ok / len(idx)

    accs, bests, tprs, fprs, vals, fars = [], [], [], [], [], []
    for k, test in enumerate(chunks):
        train = np.concatenate([c for j, c in enumerate(chunks) if j != k])
        best_acc, best_t = -1.0, None
        for t in thresholds:
            a = acc(t, train)
            if a > best_acc:
                best_acc, best_t = a, t
        bests.append(best_t)
        accs.append(acc(best_t, test))
        tp_row, fp_row = [], []
        for t in thresholds:
            tp = sum(1 for i in test if dist[i] < t and same[i])
            fp = sum(1 for i in test if dist[i] < t and not same[i])
            tp_row.append(tp / max(1, sum(same[test])))
            fp_row.append(fp / max(1, sum(~same[test])))
        tprs.append(tp_row)
        fprs.append(fp_row)
        # VAL@FAR 1e-3 on the fine grid: walk up until the train FAR exceeds the target, interpolate.
        grid = np.arange(0, 4, 0.001)
        neg = [dist[i] for i in train if not same[i]]
        far_of = lambda t: sum(1 for x in neg if x < t) / len(neg)
        thr = 0.0
        prev_t, prev_f = grid[0], far_of(grid[0])
        for t in grid[1:]:
            f = far_of(t)
            if f > 1e-3:
                thr = prev_t + (1e-3 - prev_f) / (f - prev_f) * (t - prev_t)
                break
            prev_t, prev_f = t, f
        else:
            thr = prev_t if prev_f >= 1e-3 else 0.0
        vals.append(sum(1 for i in test if same[i] and dist[i] < thr) / sum(same[test]))
        fars.append(sum(1 for i in test if not same[i] and dist[i] < thr) / sum(~same[test]))
    return dict(
        accuracy=np.mean(accs), accuracy_std=np.std(accs), threshold=np.mean(bests), val=np.mean(vals),
        val_std=np.std(vals), far=np.mean(fars), tpr=np.mean(tprs, 0), fpr=np.mean(fprs, 0),
    )  # fmt: skip


@pytest.mark.parametrize("n_pairs", [300, 203])
def test_verify_pairs_matches_brute_force(n_pairs):
    rng = np.random.default_rng(n_pairs)
    same = rng.random(n_pairs) < 0.5
    e1 = rng.normal(size=(n_pairs, 16))
    e2 = np.where(same[:, None], e1 + rng.normal(scale=0.9, size=(n_pairs, 16)), rng.normal(size=(n_pairs, 16)))
    got = verify_pairs(torch.from_numpy(e1).float(), torch.from_numpy(e2).float(), torch.from_numpy(same))
    ref = _brute_force(torch.from_numpy(e1).float().numpy(), torch.from_numpy(e2).float().numpy(), same, 10)
    for k in ("accuracy", "accuracy_std", "threshold", "val", "val_std", "far"):
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k
    np.testing.assert_allclose(got["tpr"], ref["tpr"], atol=1e-12)
    np.testing.assert_allclose(got["fpr"], ref["fpr"], atol=1e-12)
    assert 0.75 < got["accuracy"] < 1.0  # separable-ish data, not trivially perfect


def test_roc_curve_hand_cases():
    fpr, tpr, thr = roc_curve([0.9, 0.8, 0.8, 0.3, 0.1], [1, 1, 0, 0, 1], drop_intermediate=False)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.3, 0.1])
    # Collinear points inside a vertical run are dropped (sklearn default).
    fpr, tpr, thr = roc_curve(torch.tensor([0.6, 0.9, 0.7, 0.8]), torch.tensor([False, True, True, True]))
    np.testing.assert_allclose(fpr, [0, 0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.7, 0.6])
    with pytest.raises(ValueError):
        roc_curve([0.1, 0.2], [1, 1])


def test_tar_at_far_and_auc_hand_cases():
    scores, labels = [0.9, 0.8, 0.8, 0.3, 0.1], [1, 1, 0, 0, 1]
    assert roc_auc(scores, labels) == pytest.approx(3.5 / 6)
    # eval_ijbc.py semantics: the closest ROC point, earliest on ties: (0, 0) for FAR 0.1, (1, 2/3) for FAR 0.9.
    assert tar_at_far(scores, labels, fars=(0.1, 0.5, 0.9)) == pytest.approx({0.1: 0.0, 0.5: 2 / 3, 0.9: 2 / 3})
    assert tar_at_far(scores, labels, fars=(0.1, 0.5, 0.9), mode="max") == pytest.approx(
        {0.1: 1 / 3, 0.5: 2 / 3, 0.9: 2 / 3}
    )


def test_roc_auc_and_tar_match_brute_force():
    rng = np.random.default_rng(5)
    labels = rng.random(400) < 0.3
    scores = np.round(rng.normal(size=400) + 1.2 * labels, 1)  # rounding creates many ties
    pos, neg = scores[labels], scores[~labels]
    mw = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(mw, abs=1e-12)

    fpr, tpr, thr = roc_curve(scores, labels, drop_intermediate=False)
    for f, t, s in zip(fpr[1:], tpr[1:], thr[1:]):
        assert f == pytest.approx(np.mean(neg >= s)) and t == pytest.approx(np.mean(pos >= s))
    assert len(thr) == len(np.unique(scores)) + 1

    got = tar_at_far(scores, labels, fars=(1e-2, 1e-1), mode="max")
    for far in (1e-2, 1e-1):
        best = max([np.mean(pos >= s) for s in np.unique(scores) if np.mean(neg >= s) <= far] + [0.0])
        assert got[far] == pytest.approx(best)
    # "closest" picks a point on the same curve whose FPR is as near as any other to the target.
    got = tar_at_far(scores, labels, fars=(0.05,))
    fpr_d, tpr_d, _ = roc_curve(scores, labels)
    assert got[0.05] in set(tpr_d[np.isclose(np.abs(fpr_d - 0.05), np.abs(fpr_d - 0.05).min())])
    assert math.isfinite(got[0.05])
