"""URL's confidence-weighted pair score (hand-computed) and the 10-fold protocol on precomputed scores."""
import numpy as np
import pytest
import torch

from lrface.metrics.confidence_score import confidence_summary, confidence_weighted_scores, sub_embedding_cosines
from lrface.metrics.verification import pair_distances, verify_pairs, verify_scores

# Two pairs, D = 4, K = 2 (sub-embeddings are the halves).
# pair 0: sub-cosines (1, 0); s1 s2 = (1·2, 3·1) = (2, 3) → w = (0.4, 0.6) → 0.4
# pair 1: sub-cosines ([3,4]·[4,3] / 25 = 0.96, [1,1] vs [-2,-2] = -1); s1 s2 = (4, 1) → w = (0.8, 0.2)
#         → 0.8·0.96 − 0.2 = 0.568
EMB1 = np.array([[1.0, 0.0, 0.0, 1.0], [3.0, 4.0, 1.0, 1.0]])
EMB2 = np.array([[1.0, 0.0, 1.0, 0.0], [4.0, 3.0, -2.0, -2.0]])
CONF1 = np.array([[1.0, 3.0], [4.0, 1.0]])
CONF2 = np.array([[2.0, 1.0], [1.0, 1.0]])


def test_hand_computed_two_pairs():
    np.testing.assert_allclose(sub_embedding_cosines(EMB1, EMB2, 2), [[1.0, 0.0], [0.96, -1.0]], atol=1e-12)
    got = confidence_weighted_scores(EMB1, CONF1, EMB2, CONF2)
    assert got.dtype == np.float64 and got.shape == (2,)
    np.testing.assert_allclose(got, [0.4, 0.568], atol=1e-12)
    # torch in (fp32, fp16 confidences), numpy out; the order of the two images does not matter
    t = confidence_weighted_scores(torch.tensor(EMB2).float(), torch.tensor(CONF2).half(), torch.tensor(EMB1).float(),
                                   torch.tensor(CONF1))
    assert isinstance(t, np.ndarray)
    np.testing.assert_allclose(t, [0.4, 0.568], atol=1e-6)
    # only the ratios of s matter: one image's confidences ×1000 changes nothing
    np.testing.assert_allclose(confidence_weighted_scores(EMB1, CONF1 * 1000, EMB2, CONF2), [0.4, 0.568], atol=1e-12)


def test_equal_confidences_give_the_mean_of_the_sub_cosines():
    rng = np.random.default_rng(0)
    e1, e2 = rng.normal(size=(50, 64)), rng.normal(size=(50, 64))
    ones = np.full((50, 16), 7.5)
    cos = np.stack([[np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(r1, r2)]
                    for r1, r2 in zip(e1.reshape(50, 16, 4), e2.reshape(50, 16, 4))])
    np.testing.assert_allclose(confidence_weighted_scores(e1, ones, e2, ones), cos.mean(1), atol=1e-12)
    # with K = 1 the score is the plain cosine
    np.testing.assert_allclose(confidence_weighted_scores(e1, ones[:, :1], e2, ones[:, :1]),
                               1 - pair_distances(e1, e2) / 2, atol=1e-12)
    # a dominant confidence on one sub-embedding picks its cosine
    s = np.ones((50, 16))
    s[:, 3] = 1e6
    np.testing.assert_allclose(confidence_weighted_scores(e1, s, e2, s), cos[:, 3], atol=1e-9)


def test_bad_shapes_and_confidences_are_named():
    with pytest.raises(ValueError, match="same shape N×K"):
        confidence_weighted_scores(EMB1, CONF1, EMB2, CONF2[:, :1])
    with pytest.raises(ValueError, match="one N×K confidence row per N×D embedding"):
        confidence_weighted_scores(EMB1, CONF1[:1], EMB2, CONF2[:1])
    with pytest.raises(ValueError, match="cannot be split into K=3"):
        confidence_weighted_scores(EMB1, np.ones((2, 3)), EMB2, np.ones((2, 3)))
    with pytest.raises(ValueError, match="same shape N×D"):
        confidence_weighted_scores(EMB1, CONF1, EMB2[:, :2], CONF2)
    with pytest.raises(ValueError, match=r"conf2\[1, 0\] = 0.0"):
        confidence_weighted_scores(EMB1, CONF1, EMB2, np.array([[1.0, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        confidence_weighted_scores(EMB1[0], CONF1, EMB2, CONF2)


def test_confidence_summary():
    s = confidence_summary(np.array([[1.0, 4.0]]), torch.tensor([[2.0, 8.0]]))
    assert s["mean_s"] == pytest.approx(3.75) and s["n"] == 2
    assert s["mean_log_s"] == pytest.approx(np.log(64) / 4)
    assert s["mean_uncertainty"] == pytest.approx((1 + 0.25 + 0.5 + 0.125) / 4)
    assert s["per_sub_embedding"] == pytest.approx([1.5, 6.0])
    with pytest.raises(ValueError, match="disagree on K"):
        confidence_summary(np.ones((1, 2)), np.ones((1, 3)))


@pytest.mark.parametrize("n_pairs", [300, 203])
def test_verify_scores_agrees_with_verify_pairs_on_cosines(n_pairs):
    rng = np.random.default_rng(n_pairs)
    same = rng.random(n_pairs) < 0.5
    e1 = rng.normal(size=(n_pairs, 16))
    e2 = np.where(same[:, None], e1 + rng.normal(scale=0.9, size=(n_pairs, 16)), rng.normal(size=(n_pairs, 16)))
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    want = verify_pairs(e1, e2, same)
    got = verify_scores(torch.from_numpy(cos), torch.from_numpy(same))
    for k in ("accuracy", "accuracy_std", "threshold", "val", "val_std", "far"):
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    np.testing.assert_allclose(got["thresholds"], want["thresholds"])
    np.testing.assert_allclose(got["tpr"], want["tpr"])
    assert got["score_threshold"] == pytest.approx(1 - want["threshold"] / 2)
    assert 0.75 < got["accuracy"] < 1.0
    # a better score (the oracle) is scored better by the same protocol
    assert verify_scores(np.where(same, 0.5, -0.5), same)["accuracy"] == 1.0


def test_verify_scores_rejects_scores_outside_the_cosine_range():
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        verify_scores([0.2, 1.5], [True, False], n_folds=1)
    with pytest.raises(ValueError, match="score 1 is nan"):
        verify_scores([0.2, np.nan], [True, False], n_folds=1)
