"""IJB-C-TinyFace-style covariate protocol: LR-face selection, pairs, TAR@FAR rule, file round trip, and the shrunk
CelebA faces it runs on (tiny release-format folders written in tmp_path)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datamodules.covariate_faces import CovariateFaces, evaluate_covariate_faces, simulated_scales
from datamodules.errors import DataFormatError
from lrface.align import arcface_template_np
from lrface.covariate_protocol import (
    CovariateProtocol,
    build_covariate_protocol,
    evaluate_covariate,
    eye_mouth_distance,
)
from lrface.inference import embed_flip_sum
from tests.fixtures_real_formats import (
    LANDMARK_COLOURS,
    make_celeba,
    paint_landmarks,
    smooth_image,
    truncate_file,
    write_jpeg,
)


def _face(d: float, x0: float = 50.0, y0: float = 40.0) -> np.ndarray:
    """5×2 landmarks whose eye-midpoint → mouth-midpoint distance is exactly d (mouth straight below the eyes)."""
    return np.array([[x0 - 10, y0], [x0 + 10, y0], [x0, y0 + d / 2], [x0 - 8, y0 + d], [x0 + 8, y0 + d]])


def test_eye_mouth_distance_hand_case():
    lm = np.array([[[0, 0], [4, 0], [9, 9], [0, 6], [2, 8]],  # eyes mid (2, 0), mouth mid (1, 7) → √50
                   [[10, 10], [20, 10], [0, 0], [12, 40], [18, 40]]], dtype=np.float32)  # (15,10)→(15,40): 30
    d = eye_mouth_distance(lm)
    assert d == pytest.approx([math.sqrt(50), 30.0])
    assert eye_mouth_distance(torch.from_numpy(lm)) == pytest.approx(d)
    with pytest.raises(ValueError, match="N×5×2"):
        eye_mouth_distance(lm[:, :4])


def test_selection_bounds_are_strict():
    dists = [5.0, 10.0, 10.01, 20.0, 29.99, 30.0, 45.0]
    lm = np.stack([_face(d) for d in dists])
    ids = np.zeros(len(dists), dtype=np.int64)
    p = build_covariate_protocol(lm, ids)
    assert p.lr_faces.tolist() == [2, 3, 4]
    assert build_covariate_protocol(lm, ids, low=5.0, high=45.0).lr_faces.tolist() == [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def population():
    """60 faces of 7 subjects (sizes 1..15), distances spread over 5..50 px."""
    rng = np.random.default_rng(3)
    ids = np.repeat(np.arange(7), [15, 12, 9, 1, 3, 10, 10])
    rng.shuffle(ids)
    dists = rng.uniform(5, 50, size=len(ids))
    return np.stack([_face(d) for d in dists]), ids * 7 + 100  # arbitrary (non-dense) subject ids


def test_positive_pairs(population):
    lm, ids = population
    p = build_covariate_protocol(lm, ids, positives_per_face=5, negatives_per_face=0, seed=1)
    d = eye_mouth_distance(lm)
    assert np.array_equal(p.lr_faces, np.flatnonzero((d > 10) & (d < 30)))
    pos = p.positives
    assert len(pos) > 0 and np.isin(pos[:, 0], p.lr_faces).all()
    assert (ids[pos[:, 0]] == ids[pos[:, 1]]).all() and (pos[:, 0] != pos[:, 1]).all()
    keys = {(min(a, b), max(a, b)) for a, b in pos.tolist()}
    assert len(keys) == len(pos)  # no duplicate unordered pairs
    per_face = np.bincount(pos[:, 0], minlength=len(ids))
    assert per_face.max() <= 5
    # an LR face gets min(5, its partners not already paired with it by an earlier LR face)
    for i in p.lr_faces.tolist():
        others = set(np.flatnonzero(ids == ids[i]).tolist()) - {i}
        earlier = {a for a, b in pos.tolist() if b == i and a < i}
        assert per_face[i] == min(5, len(others - earlier))
    assert len(p.negatives) == 0
    # 20 per face (the paper's cap) and a subject with fewer: every other face of it is taken
    full = build_covariate_protocol(lm, ids, negatives_per_face=0)
    assert np.bincount(full.positives[:, 0], minlength=len(ids)).max() <= 20
    covered = {(min(a, b), max(a, b)) for a, b in full.positives.tolist()}
    for i in full.lr_faces.tolist():
        assert all((min(i, j), max(i, j)) in covered for j in np.flatnonzero(ids == ids[i]) if j != i)


def test_negative_pairs_and_determinism(population):
    lm, ids = population
    p = build_covariate_protocol(lm, ids, negatives_per_face=8, seed=5)
    neg = p.negatives
    assert (ids[neg[:, 0]] != ids[neg[:, 1]]).all() and np.isin(neg[:, 0], p.lr_faces).all()
    keys = np.minimum(neg[:, 0], neg[:, 1]) * 1000 + np.maximum(neg[:, 0], neg[:, 1])
    assert len(np.unique(keys)) == len(neg)
    assert np.bincount(neg[:, 0], minlength=len(ids)).max() == 8
    # fewer other-subject faces than asked → all of them (before the unordered de-duplication)
    big = build_covariate_protocol(lm, ids, negatives_per_face=10_000, seed=5)
    i = int(big.lr_faces[0])
    assert set(big.negatives[big.negatives[:, 0] == i, 1].tolist()) == set(np.flatnonzero(ids != ids[i]).tolist())
    q = build_covariate_protocol(lm, ids, negatives_per_face=8, seed=5)
    assert np.array_equal(p.positives, q.positives) and np.array_equal(p.negatives, q.negatives)
    r = build_covariate_protocol(lm, ids, negatives_per_face=8, seed=6)
    assert not np.array_equal(p.negatives, r.negatives)


def _embeddings_for_scores(pos_scores, neg_scores):
    """Faces 0 (anchor), then one face per pair at cosine `score` to the anchor: pairs (0, k)."""
    scores = list(pos_scores) + list(neg_scores)
    angles = np.arccos(np.asarray(scores, dtype=np.float64))
    emb = np.zeros((1 + len(scores), 2))
    emb[0] = [1.0, 0.0]
    emb[1:] = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 3.0  # unnormalised on purpose
    k = np.arange(1, 1 + len(scores))
    pos = np.stack([np.zeros(len(pos_scores), int), k[:len(pos_scores)]], 1)
    neg = np.stack([np.zeros(len(neg_scores), int), k[len(pos_scores):]], 1)
    return emb, CovariateProtocol(np.array([0]), pos, neg, len(emb))


def test_tar_at_far_hand_case():
    neg = [0.9, 0.7, 0.5, 0.3, 0.1, 0.0, -0.1, -0.2, -0.3, -0.4]  # Q = 10
    pos = [0.95, 0.8, 0.6, 0.4]
    emb, proto = _embeddings_for_scores(pos, neg)
    out = evaluate_covariate(emb, proto, fars=(0.1, 0.2, 0.3, 0.05, 1.0))
    # FAR 0.1: one false accept allowed → τ = 0.7 (2nd largest negative); positives > 0.7: 0.95, 0.8
    assert out["tar@far=0.1"] == pytest.approx(0.5)
    assert out["tar@far=0.2"] == pytest.approx(0.75)  # τ = 0.5
    assert out["tar@far=0.3"] == pytest.approx(1.0)  # τ = 0.3
    assert math.isnan(out["tar@far=0.05"])  # below 1/Q
    assert out["tar@far=1"] == pytest.approx(1.0)
    # AUC by hand: each positive beats the negatives below it
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert out["auc"] == pytest.approx(wins / 40)
    assert (out["n_lr_faces"], out["n_positives"], out["n_negatives"]) == (1, 4, 10)


def test_default_fars_below_one_over_q_are_nan():
    emb, proto = _embeddings_for_scores([0.5, 0.2], list(np.linspace(-0.9, 0.9, 200)))
    out = evaluate_covariate(torch.from_numpy(emb), proto)
    for far in (1e-7, 1e-6, 1e-5, 1e-4, 1e-3):
        assert math.isnan(out[f"tar@far={far:g}"])
    # Q = 200: FAR 0.01 → 2 false accepts → τ = the 3rd largest negative ≈ 0.873; 0.1 → 20 → τ ≈ 0.719
    assert out["tar@far=0.01"] == 0.0 and out["tar@far=0.1"] == 0.0
    emb, proto = _embeddings_for_scores([0.89], list(np.linspace(-0.9, 0.9, 200)))
    out = evaluate_covariate(emb, proto, fars=(0.005, 0.01))
    assert out["tar@far=0.005"] == 0.0 and out["tar@far=0.01"] == 1.0


def test_save_load_round_trip_and_bad_files(tmp_path, population):
    lm, ids = population
    p = build_covariate_protocol(lm, ids, negatives_per_face=5)
    path = p.save(tmp_path / "sub" / "protocol.npz")
    assert path.exists() and not (tmp_path / "sub" / "protocol.npz.tmp").exists()
    q = CovariateProtocol.load(path)
    assert q.n_faces == len(ids)
    for key in ("lr_faces", "positives", "negatives"):
        assert np.array_equal(getattr(p, key), getattr(q, key)) and getattr(q, key).dtype == np.int64
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="junk.npz: not a covariate protocol file"):
        CovariateProtocol.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "partial.npz", lr_faces=np.arange(3))
    with pytest.raises(ValueError, match="missing array"):
        CovariateProtocol.load(tmp_path / "partial.npz")
    np.savez(tmp_path / "range.npz", version=1, n_faces=3, lr_faces=np.arange(3), positives=np.array([[0, 5]]),
             negatives=np.zeros((0, 2), int))
    with pytest.raises(ValueError, match="range.npz: positives holds face indices outside"):
        CovariateProtocol.load(tmp_path / "range.npz")


# -- CovariateFaces on a tiny CelebA copy ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("cov") / "celeba"
    return root, make_celeba(root, layout="flat", n_images=12, n_identities=4)


def _colour_at(image: torch.Tensor, x: float, y: float) -> np.ndarray:
    return image[:, round(y), round(x)].numpy() * 255


def test_covariate_faces_native_and_known_subsets(celeba):
    root, truth = celeba
    ds = CovariateFaces(root, "all")
    assert ds.source == "aligned" and len(ds) == 12
    assert np.allclose(ds.landmarks, truth["landmarks"]) and np.array_equal(ds.identities, truth["identity"] - 1)
    d = eye_mouth_distance(truth["landmarks"])
    assert 38 < d.min() and d.max() < 48  # template × [0.95, 1.15]: nothing is LR natively
    assert len(build_covariate_protocol(ds.landmarks, ds.identities).lr_faces) == 0
    # a fixed factor of 0.5 puts every face at 19..24 px (all LR), 0.2 at 7.7..9.6 px (none)
    half = CovariateFaces(root, "all", simulate_scales=(0.5, 0.5))
    assert np.allclose(eye_mouth_distance(half.landmarks), (d * 0.5))
    assert build_covariate_protocol(half.landmarks, half.identities).lr_faces.tolist() == list(range(12))
    fifth = CovariateFaces(root, "all", simulate_scales=(0.2, 0.2))
    assert len(build_covariate_protocol(fifth.landmarks, fifth.identities).lr_faces) == 0
    # log-uniform draw: recompute the documented formula independently and predict the subset
    test = CovariateFaces(root, "test", simulate_scales=(0.15, 1.0), seed=11)
    f = np.exp(np.random.default_rng(11).uniform(np.log(0.15), np.log(1.0), 12))
    rows = np.flatnonzero(truth["partition"] == 2)
    assert np.allclose(test.scales, f[rows])
    expect = (truth["landmarks"][rows] + 0.5) * f[rows, None, None] - 0.5
    assert np.allclose(test.landmarks, expect, atol=1e-4)
    dd = eye_mouth_distance(expect)
    p = build_covariate_protocol(test.landmarks, test.identities)
    assert p.lr_faces.tolist() == np.flatnonzero((dd > 10) & (dd < 30)).tolist()
    assert np.allclose(simulated_scales(12, (0.15, 1.0), 11), f)
    with pytest.raises(ValueError, match="0 < lo <= hi <= 1"):
        CovariateFaces(root, "all", simulate_scales=(0.5, 2.0))


def test_covariate_faces_items_are_shrunk_then_aligned(celeba):
    root, truth = celeba
    ds = CovariateFaces(root, "all", simulate_scales=(0.5, 0.5))
    tpl = arcface_template_np(112)
    for i in (0, 7):
        item = ds[i]
        assert item["image"].shape == (3, 112, 112) and item["image"].dtype == torch.float32
        assert item["size"].tolist() == [109, 89]  # round(218·0.5), round(178·0.5)
        assert int(item["identity"]) == truth["identity"][i] - 1 and item["index"] == i
        assert item["scale"] == 0.5
        assert np.abs(item["landmarks"].numpy() - tpl).max() < 4  # similarity fit residual of a jittered face
        # the painted dots (radius 3 px at full size) land on the template, still recognisable after the shrink
        for k in (0, 1, 2):
            colour = _colour_at(item["image"], *item["landmarks"][k].tolist())
            assert np.argmax(colour) == np.argmax(LANDMARK_COLOURS[k]) and colour.max() > 120
    # the shrunk face carries less detail than the native one aligned the same way
    native = CovariateFaces(root, "all")[0]["image"]
    small = CovariateFaces(root, "all", simulate_scales=(0.2, 0.2))[0]["image"]

    def sharpness(x):
        return float((x[:, :, 1:] - x[:, :, :-1]).abs().mean())
    assert sharpness(small) < 0.8 * sharpness(native)


def test_in_the_wild_source(tmp_path):
    root = tmp_path / "celeba"
    truth = make_celeba(root, layout="original", n_images=4, n_identities=2)
    rng = np.random.default_rng(0)
    wild = truth["landmarks"] * 1.5 + np.array([40.0, 25.0])  # a bigger face somewhere in a 400×330 photo
    for name, lm in zip(truth["names"], wild):
        write_jpeg(root / "Img" / "img_celeba" / name, paint_landmarks(smooth_image(rng, 400, 330), lm, 4), 98)
    with pytest.raises(DataFormatError, match="list_landmarks_celeba.txt"):
        CovariateFaces(root, "all", source="wild")
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    lines = ["4", header]
    lines += [f"{n}  " + " ".join(f"{v:.1f}" for v in lm.reshape(-1)) for n, lm in zip(truth["names"], wild)]
    (root / "Anno" / "list_landmarks_celeba.txt").write_text("\n".join(lines) + "\n")
    ds = CovariateFaces(root, "all")
    assert ds.source == "wild" and np.allclose(ds.landmarks, wild, atol=0.06)
    assert CovariateFaces(root, "all", source="aligned").source == "aligned"
    item = ds[1]
    assert item["size"].tolist() == [400, 330]
    colour = _colour_at(item["image"], *item["landmarks"][1].tolist())
    assert np.argmax(colour) == 1 and colour.max() > 120  # right eye painted green in the wild photo
    # a bad row names the file and its line
    lines[4] = lines[4].replace(lines[4].split()[3], "x7")
    (root / "Anno" / "list_landmarks_celeba.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"list_landmarks_celeba.txt:5: non-numeric value 'x7'"):
        CovariateFaces(root, "all")


class _Probe(torch.nn.Module):
    """A fixed random projection of 8×8-pooled pixels; records how many images it saw."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(3 * 64, 16, generator=gen))
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1) @ self.w


def test_evaluate_covariate_faces_matches_the_metric_on_manual_embeddings(celeba):
    root, _ = celeba
    ds = CovariateFaces(root, "all", simulate_scales=(0.3, 0.9), seed=2)
    full = build_covariate_protocol(ds.landmarks, ds.identities, negatives_per_face=3, seed=0)
    assert len(full.lr_faces) >= 3 and len(full.positives) >= 2 and len(full.negatives) >= 4
    keep = full.lr_faces[:2]
    proto = CovariateProtocol(keep, full.positives[np.isin(full.positives[:, 0], keep)],
                              full.negatives[np.isin(full.negatives[:, 0], keep)], len(ds))
    assert len(proto.used_faces()) < len(ds)
    model = _Probe()
    out = evaluate_covariate_faces(model, ds, proto, batch_size=5, fars=(0.1, 0.5))
    assert model.seen == 2 * len(proto.used_faces())  # flip-sum: two views of every used face, nothing else
    emb = np.zeros((len(ds), 16), np.float32)
    for i in range(len(ds)):
        emb[i] = embed_flip_sum(model, ds[i]["image"][None])[0].numpy()
    ref = evaluate_covariate(emb, proto, fars=(0.1, 0.5))
    assert out.pop("n_skipped_faces") == 0
    assert out.keys() == ref.keys()
    for k, v in ref.items():
        assert (math.isnan(v) and math.isnan(out[k])) or out[k] == pytest.approx(v, abs=1e-6), k
    with pytest.raises(ValueError, match="indexes 3 faces"):
        evaluate_covariate_faces(model, ds, CovariateProtocol([0], [[0, 1]], [[0, 2]], 3))


def test_skipped_faces_leave_the_protocol(tmp_path):
    root = tmp_path / "celeba"
    truth = make_celeba(root, n_images=8, n_identities=4)
    truncate_file(truth["img_dir"] / truth["names"][2])
    proto = CovariateProtocol([0, 1], [[0, 1]], [[0, 2], [1, 3], [2, 1]], 8)
    with pytest.raises(DataFormatError, match="000003.jpg"):
        evaluate_covariate_faces(_Probe(), CovariateFaces(root, "all"), proto)
    out = evaluate_covariate_faces(_Probe(), CovariateFaces(root, "all", on_corrupt="skip"), proto, fars=(0.5,))
    assert out["n_skipped_faces"] == 1
    assert (out["n_lr_faces"], out["n_positives"], out["n_negatives"]) == (2, 1, 1)
