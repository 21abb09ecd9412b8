"""Angles between embeddings, their statistics and the brute-force α_thr search (seed paper Table 1, Algorithm 1)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrface.metrics.angles import angle_stats, angles_deg, best_angle_threshold, separation_accuracy


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_angles_deg_known_values_and_scale_invariance() -> None:
    e1 = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [3.0, 3.0], [0.5, 0.0]])
    e2 = np.array([[0.0, 5.0], [1.0, 1.0], [-1.0, 0.0], [1.0, 1.0], [1.0, -math.sqrt(3)]])
    np.testing.assert_allclose(angles_deg(e1, e2), [90.0, 45.0, 180.0, 0.0, 60.0], atol=1e-12)
    got = angles_deg(torch.tensor(e1, dtype=torch.float32), torch.tensor(e2, dtype=torch.float32))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), [90.0, 45.0, 180.0, 0.0, 60.0], atol=1e-4)
    assert angles_deg(np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 2.0])) == pytest.approx(90.0)


def test_small_angles_keep_their_precision() -> None:
    # 1e-8 rad: arccos(cos) would round to 0°.
    got = angles_deg(np.array([[1.0, 0.0]]), np.array([[1.0, 1e-8]]))[0]
    assert got == pytest.approx(math.degrees(1e-8), rel=1e-6)


def test_angle_stats_mean_and_sd() -> None:
    e1 = np.array([_unit(0)] * 3)
    e2 = np.array([_unit(30), _unit(60), _unit(90)])
    stats = angle_stats(e1, e2)
    assert stats.n == 3
    assert stats.mean == pytest.approx(60.0)
    assert stats.std == pytest.approx(math.sqrt(600.0))  # population SD of (30, 60, 90)
    assert angle_stats(e1, e2, ddof=1).std == pytest.approx(30.0)
    assert str(stats) == "60.0°±24.5"
    assert angle_stats(torch.tensor(e1), torch.tensor(e2)).mean == pytest.approx(60.0)


def test_best_angle_threshold_maximises_pooled_accuracy() -> None:
    same, diff = [40.0, 50.0, 60.0], [55.0, 80.0, 90.0]
    # Candidates 35, 45, 52.5, 57.5, 70, 85, 95 classify 3, 4, 5, 4, 5, 4, 3 of 6 pairs: the first best is 52.5.
    alpha = best_angle_threshold(same, diff)
    assert alpha == pytest.approx(52.5)
    assert separation_accuracy(same, diff, alpha) == pytest.approx(5 / 6)
    assert separation_accuracy(same, diff, 70.0) == pytest.approx(5 / 6)
    assert separation_accuracy(same, diff, 57.5) == pytest.approx(4 / 6)


def test_separable_sets_and_boundary_convention() -> None:
    alpha = best_angle_threshold(np.array([10.0, 20.0]), torch.tensor([60.0, 70.0]))
    assert alpha == pytest.approx(40.0)
    assert separation_accuracy([10.0, 20.0], [60.0, 70.0], alpha) == 1.0
    # θ == α_thr counts as "different" (same needs θ < α_thr).
    assert separation_accuracy([20.0], [60.0], 20.0) == 0.5
    assert separation_accuracy([20.0], [60.0], 60.0) == 1.0
    # Pooled, not balanced: 9 different pairs outweigh 1 same pair sitting among them.
    assert best_angle_threshold([85.0], [80.0 + i for i in range(9)]) < 80.0


def test_threshold_from_embeddings_end_to_end() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 64))
    same = angles_deg(base, base + 0.5 * rng.normal(size=base.shape))  # ~35°
    diff = angles_deg(base, rng.normal(size=base.shape))  # ~90°
    alpha = best_angle_threshold(same, diff)
    assert same.max() < alpha < diff.min()
    assert separation_accuracy(same, diff, alpha) == 1.0
