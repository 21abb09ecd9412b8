"""t-SNE (van der Maaten & Hinton 2008) and the linear-probe ROC AUC used for seed 003's "Expr. rec. AUC"."""

import math

import numpy as np
import pytest
import torch

from lrface.metrics.linear_probe import linear_probe_auc
from lrface.metrics.tsne import (
    _gradient,
    conditional_probabilities,
    initial_embedding,
    joint_probabilities,
    kl_divergence,
    pca,
    tsne,
)
from lrface.metrics.verification import roc_auc


def _clusters(n=150, k=3, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 10.0, (k, dim))
    labels = np.arange(n) % k
    return centers[labels] + rng.normal(0.0, 1.0, (n, dim)), labels


def _knn_purity(y, labels, k=5):
    d = np.sum((y[:, None] - y[None]) ** 2, axis=-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return float(np.mean(labels[nn] == labels[:, None]))


def test_tsne_separates_three_clusters_and_lowers_kl():
    x, labels = _clusters()
    # The input itself is not trivially "2-d": the clusters only separate in 20 dimensions.
    y, kl = tsne(x, return_kl=True)
    assert y.shape == (150, 2) and y.dtype == np.float64
    assert _knn_purity(y, labels) >= 0.95
    P = joint_probabilities(x)
    assert np.allclose(P, P.T) and P.sum() == pytest.approx(1.0) and np.all(np.diag(P) == 0)
    assert kl == pytest.approx(kl_divergence(P, y), rel=1e-9)
    kl_init = kl_divergence(P, initial_embedding(150, 2, seed=0))
    assert kl < kl_init / 4, (kl, kl_init)
    # The map is centred (the optimiser removes the mean) and has spread out from the 1e-4 start.
    assert np.allclose(y.mean(axis=0), 0.0, atol=1e-8) and np.ptp(y, axis=0).min() > 5.0


def test_tsne_of_random_noise_has_low_cluster_purity():
    # Same three labels but no structure: the purity check above must be able to fail.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 20))
    labels = np.arange(150) % 3
    y = tsne(x, n_iter=300)
    assert _knn_purity(y, labels) < 0.6


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e4])
def test_perplexity_search_hits_target_entropy(scale):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(80, 6)) * scale
    d = np.sum((a[:, None] - a[None]) ** 2, axis=-1)
    for perplexity in (5.0, 30.0):
        p, beta = conditional_probabilities(d, perplexity)
        assert np.all(np.diag(p) == 0) and np.allclose(p.sum(axis=1), 1.0)
        q = np.where(p > 0, p, 1.0)
        entropy_bits = -np.sum(p * np.log2(q), axis=1)
        assert np.max(np.abs(entropy_bits - math.log2(perplexity))) < 1e-4
        # Row i really is the Gaussian with precision beta_i.
        row = np.exp(-beta[3] * (np.delete(d[3], 3) - np.delete(d[3], 3).min()))
        assert np.allclose(np.delete(p[3], 3), row / row.sum())
    # A random (non-metric) symmetric matrix works too.
    m = rng.uniform(0.0, 5.0, (50, 50))
    p, _ = conditional_probabilities(m + m.T, 10.0)
    q = np.where(p > 0, p, 1.0)
    assert np.max(np.abs(-np.sum(p * np.log2(q), axis=1) - math.log2(10.0))) < 1e-4


def test_gradient_matches_finite_differences_of_kl():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(12, 12))
    p = p + p.T
    np.fill_diagonal(p, 0.0)
    p /= p.sum()
    y = rng.normal(0.0, 2.0, (12, 2))
    grad = _gradient(torch.from_numpy(p), torch.from_numpy(y), 1.0).numpy()
    numeric = np.zeros_like(y)
    h = 1e-6
    for i in range(12):
        for k in range(2):
            yp, ym = y.copy(), y.copy()
            yp[i, k] += h
            ym[i, k] -= h
            numeric[i, k] = (kl_divergence(p, yp) - kl_divergence(p, ym)) / (2 * h)
    assert np.allclose(grad, numeric, rtol=1e-5, atol=1e-8)
    # Exaggeration scales only the attractive part: 4·Σ α p_ij W_ij (y_i − y_j) − (repulsion).
    g2 = _gradient(torch.from_numpy(p), torch.from_numpy(y), 2.0).numpy()
    w = 1.0 / (1.0 + np.sum((y[:, None] - y[None]) ** 2, axis=-1))
    np.fill_diagonal(w, 0.0)
    attract = 4 * np.sum((p * w)[:, :, None] * (y[:, None] - y[None]), axis=1)
    assert np.allclose(g2 - grad, attract)


def test_gradient_blocks_match_dense_for_many_points():
    # N larger than one row block (256), not a multiple of it.
    rng = np.random.default_rng(4)
    n = 600
    p = rng.uniform(size=(n, n))
    p = p + p.T
    np.fill_diagonal(p, 0.0)
    p /= p.sum()
    y = rng.normal(0.0, 5.0, (n, 2))
    w = 1.0 / (1.0 + np.sum((y[:, None] - y[None]) ** 2, axis=-1))
    np.fill_diagonal(w, 0.0)
    dense = 4 * np.sum(((3.0 * p - w / w.sum()) * w)[:, :, None] * (y[:, None] - y[None]), axis=1)
    grad = _gradient(torch.from_numpy(p), torch.from_numpy(y), 3.0).numpy()
    assert np.allclose(grad, dense, rtol=1e-9, atol=1e-14 * np.abs(dense).max())


def test_tsne_is_deterministic_for_a_seed():
    x, _ = _clusters(n=60, seed=5)
    a = tsne(x, perplexity=10.0, n_iter=200, seed=7)
    b = tsne(torch.from_numpy(x), perplexity=10.0, n_iter=200, seed=7)
    c = tsne(x, perplexity=10.0, n_iter=200, seed=8)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_tsne_pca_and_learning_rate_options():
    x, labels = _clusters(n=90, dim=80, seed=6)
    proj = pca(x, 50)
    assert proj.shape == (90, 50)
    var = proj.var(axis=0)
    assert np.all(np.diff(var) <= 1e-9)
    # The top components keep almost all of the between-cluster structure: distances are preserved closely.
    d_full = np.sum((x[:, None] - x[None]) ** 2, -1)
    d_pca = np.sum((proj[:, None] - proj[None]) ** 2, -1)
    assert np.max(np.abs(d_full - d_pca) / np.maximum(d_full, 1)) < 0.5
    y = tsne(x, perplexity=20.0, n_iter=400, learning_rate=100.0)
    assert _knn_purity(y, labels) >= 0.95
    with pytest.raises(ValueError, match="learning_rate"):
        tsne(x, learning_rate="fast")


def test_tsne_rejects_bad_input():
    x = np.random.default_rng(0).normal(size=(20, 5))
    with pytest.raises(ValueError, match=r"perplexity must be in \(0, N − 1\).*19"):
        tsne(x, perplexity=19.0)
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="finite.*row 4, column 2"):
        tsne(bad, perplexity=5.0)
    with pytest.raises(ValueError, match="at least 4 points"):
        tsne(x[:3], perplexity=1.0)
    with pytest.raises(ValueError, match="N×D"):
        tsne(x[0])


# ----------------------------------------------------------------------------------------------------------- probe


def _separable(n, seed):
    rng = np.random.default_rng(seed)
    centers = np.eye(4, 6) * 6.0
    y = rng.integers(0, 4, n)
    return centers[y] + rng.normal(0.0, 1.0, (n, 6)) + 3.0, y


def test_probe_on_separable_classes():
    xtr, ytr = _separable(400, 0)
    xte, yte = _separable(300, 1)
    out = linear_probe_auc(xtr, ytr, torch.from_numpy(xte), torch.from_numpy(yte))
    assert out["auc"] > 0.99 and out["accuracy"] > 0.95
    assert sorted(out["auc_per_class"]) == [0, 1, 2, 3] and out["skipped_classes"] == {}
    assert out["auc"] == pytest.approx(np.mean(list(out["auc_per_class"].values())))
    assert (out["n_train"], out["n_test"], out["n_classes"]) == (400, 300, 4)


def test_probe_on_independent_labels_is_chance():
    rng = np.random.default_rng(2)
    xtr, xte = rng.normal(size=(600, 5)), rng.normal(size=(1500, 5))
    ytr, yte = rng.integers(0, 3, 600), rng.integers(0, 3, 1500)
    out = linear_probe_auc(xtr, ytr, xte, yte)
    assert abs(out["auc"] - 0.5) < 0.08
    assert all(abs(a - 0.5) < 0.1 for a in out["auc_per_class"].values())
    assert out["accuracy"] < 0.45


def test_probe_feature_carrying_only_class_zero():
    rng = np.random.default_rng(3)

    def make(n):
        y = np.arange(n) % 4
        x = rng.normal(size=(n, 4))
        x[:, 0] += 5.0 * (y == 0)
        return x, y

    (xtr, ytr), (xte, yte) = make(800), make(800)
    out = linear_probe_auc(xtr, ytr, xte, yte)
    per = out["auc_per_class"]
    assert per[0] > 0.97
    # Classes 1–3 are indistinguishable from each other, so their one-vs-rest AUC is 1 against the class-0 negatives
    # (a third of them) and 1/2 against the rest: 1/3 · 1 + 2/3 · 1/2 = 2/3, well below class 0's.
    for c in (1, 2, 3):
        assert abs(per[c] - 2 / 3) < 0.06, per
    # Among classes 1–3 alone the probe is at chance.
    tr, te = ytr > 0, yte > 0
    probe_123 = linear_probe_auc(xtr[tr], ytr[tr], xte[te], yte[te])
    assert abs(probe_123["auc"] - 0.5) < 0.08


def test_probe_binary_auc_is_the_two_class_auc():
    rng = np.random.default_rng(4)
    ytr, yte = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    xtr = rng.normal(size=(300, 3)) + ytr[:, None] * np.array([1.0, 0.0, 0.0])
    xte = rng.normal(size=(300, 3)) + yte[:, None] * np.array([1.0, 0.0, 0.0])
    out = linear_probe_auc(xtr, ytr, xte, yte)
    assert out["auc_per_class"][0] == pytest.approx(out["auc_per_class"][1], abs=1e-12)
    assert out["auc"] == pytest.approx(out["auc_per_class"][1], abs=1e-12)
    # One informative unit-variance dimension with a unit mean gap: the Bayes AUC is Φ(1/√2) ≈ 0.76.
    assert 0.68 < out["auc"] < 0.84
    assert out["auc"] == pytest.approx(roc_auc(xte[:, 0], yte == 1), abs=0.03)


def test_probe_drops_unknown_labels():
    xtr, ytr = _separable(200, 5)
    xte, yte = _separable(100, 6)
    ref = linear_probe_auc(xtr, ytr, xte, yte)
    rng = np.random.default_rng(7)
    junk_tr, junk_te = rng.normal(0, 50, (40, 6)), rng.normal(0, 50, (30, 6))
    out = linear_probe_auc(
        np.concatenate([junk_tr, xtr]),
        np.concatenate([np.full(40, -1), ytr]),
        np.concatenate([xte, junk_te]),
        np.concatenate([yte, np.full(30, -1)]),
    )
    assert (out["n_train"], out["n_test"]) == (200, 100)
    # Same kept data, same seed: identical fit (the junk would change the standardisation if it were used).
    assert out["auc_per_class"] == ref["auc_per_class"] and out["accuracy"] == ref["accuracy"]


def test_probe_skips_and_reports_missing_classes():
    xtr, ytr = _separable(400, 8)
    xte, yte = _separable(300, 9)
    keep = yte != 3
    xte, yte = xte[keep], yte[keep].copy()
    # Relabel some test items to a class the probe never saw: it cannot predict them.
    yte[:10] = 9
    out = linear_probe_auc(xtr, ytr, xte, yte)
    assert sorted(out["auc_per_class"]) == [0, 1, 2]
    assert out["skipped_classes"] == {3: "absent from test", 9: "absent from train"}
    assert out["n_classes"] == 4 and out["n_test"] == keep.sum()
    assert out["accuracy"] <= 1 - 10 / keep.sum() + 1e-12
    with pytest.raises(ValueError, match="at least 2 labelled classes"):
        linear_probe_auc(xtr, np.where(ytr == 0, 0, -1), xte, yte)
    with pytest.raises(ValueError, match="same feature size"):
        linear_probe_auc(xtr, ytr, xte[:, :3], yte)
