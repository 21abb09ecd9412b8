"""BTNet's test-time branch selection: the authors' range table (methods.md §1.7) cell by cell, edges, indicators."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lrface.branch_selection import OPEN_END, branch_ranges, ranges_markdown, resolution_indicator, select_branches

# methods.md §1.7, transcribed from eval_survface_1n_multi_reso.py; 1000 = the code's open upper end
AUTHORS_TABLE = {
    "bottom": {112: (112, 1000), 28: (28, 111), 14: (14, 27), 7: (0, 13)},
    "near": {112: (71, 1000), 28: (22, 70), 14: (11, 21), 7: (0, 10)},
    "ceil": {112: (29, 1000), 28: (15, 28), 14: (8, 14), 7: (0, 7)},
}


@pytest.mark.parametrize("strategy", ["bottom", "near", "ceil"])
def test_default_branches_reproduce_the_authors_table_cell_by_cell(strategy: str) -> None:
    ranges = branch_ranges((7, 14, 28, 112), strategy)
    assert list(ranges) == [7, 14, 28, 112]
    for branch, (lo, hi) in AUTHORS_TABLE[strategy].items():
        assert ranges[branch][0] == lo, (strategy, branch)
        assert ranges[branch][1] == (OPEN_END if hi == 1000 else hi), (strategy, branch)
    if strategy == "bottom":
        assert branch_ranges((7, 14, 28, 112), "floor") == ranges


@pytest.mark.parametrize("strategy", ["floor", "near", "ceil"])
def test_selection_agrees_with_the_table_for_every_indicator_up_to_1000(strategy: str) -> None:
    table = AUTHORS_TABLE["bottom" if strategy == "floor" else strategy]
    sides = np.arange(1, 1001)
    chosen = select_branches(np.stack([sides, sides], 1), strategy=strategy)
    expected = np.array([next(b for b, (lo, hi) in table.items() if lo <= s <= hi) for s in sides])
    np.testing.assert_array_equal(chosen, expected)
    assert chosen.dtype == np.int64


@pytest.mark.parametrize("side, floor, near, ceil", [
    (1, 7, 7, 7), (7, 7, 7, 7), (8, 7, 7, 14), (10, 7, 7, 14), (11, 7, 14, 14), (13, 7, 14, 14), (14, 14, 14, 14),
    (15, 14, 14, 28), (21, 14, 14, 28), (22, 14, 28, 28), (27, 14, 28, 28), (28, 28, 28, 28), (29, 28, 28, 112),
    (70, 28, 28, 112), (71, 28, 112, 112), (111, 28, 112, 112), (112, 112, 112, 112), (5000, 112, 112, 112)])
def test_edge_values(side: int, floor: int, near: int, ceil: int) -> None:
    sizes = np.array([[side, side]])
    assert [int(select_branches(sizes, strategy=s)[0]) for s in ("floor", "near", "ceil")] == [floor, near, ceil]


def test_near_ties_go_to_the_smaller_branch_for_any_branch_list() -> None:
    # 10 is half-way between 8 and 12, 20 between 12 and 28: both ties stay below
    assert branch_ranges((8, 12, 28), "near") == {8: (0, 10), 12: (11, 20), 28: (21, OPEN_END)}
    assert branch_ranges((8, 12, 28), "floor") == {8: (0, 11), 12: (12, 27), 28: (28, OPEN_END)}
    assert branch_ranges((8, 12, 28), "ceil") == {8: (0, 8), 12: (9, 12), 28: (13, OPEN_END)}
    assert branch_ranges((5,), "near") == {5: (0, OPEN_END)}


def test_indicators_on_non_square_sizes() -> None:
    h, w = np.array([20, 31, 9, 40]), np.array([13, 30, 24, 40])
    assert resolution_indicator(h, w, "max").tolist() == [20, 31, 24, 40]
    assert resolution_indicator(h, w, "min").tolist() == [13, 30, 9, 40]
    assert resolution_indicator(h, w, "avg").tolist() == [16, 30, 16, 40]  # (33 // 2, 61 // 2, 33 // 2, 80 // 2)
    assert resolution_indicator(h, w, "avg").dtype == np.int64

    # sizes are [H, W]; a 20×13 face: max 20 → ceil 28, min 13 → ceil 14, avg 16 → ceil 28 / floor 14 / near 14
    sizes = torch.tensor([[20, 13], [9, 24]])
    assert select_branches(sizes, indicator="max", strategy="ceil").tolist() == [28, 28]
    assert select_branches(sizes, indicator="min", strategy="ceil").tolist() == [14, 14]
    assert select_branches(sizes, indicator="min", strategy="floor").tolist() == [7, 7]
    assert select_branches(sizes, indicator="avg", strategy="floor").tolist() == [14, 14]
    assert select_branches(sizes, indicator="avg", strategy="near").tolist() == [14, 14]
    assert select_branches(sizes, indicator="max", strategy="near").tolist() == [14, 28]  # 20 → 14, 24 → 28
    assert select_branches(sizes, (14, 28, 56, 112), "max", "floor").tolist() == [14, 14]


def test_markdown_table() -> None:
    md = ranges_markdown()
    lines = md.strip().splitlines()
    assert lines[0] == "| strategy | 112 | 28 | 14 | 7 |"
    assert lines[2] == "| floor (code: `bottom`) | [112, ∞) | [28, 111] | [14, 27] | [0, 13] |"
    assert lines[3] == "| near | [71, ∞) | [22, 70] | [11, 21] | [0, 10] |"
    assert lines[4] == "| ceil | [29, ∞) | [15, 28] | [8, 14] | [0, 7] |"


def test_errors() -> None:
    sizes = np.array([[20, 20]])
    with pytest.raises(ValueError, match="indicator 'mean'"):
        select_branches(sizes, indicator="mean")
    with pytest.raises(ValueError, match="strategy 'round'"):
        branch_ranges((7, 14), "round")
    with pytest.raises(ValueError, match="ascending"):
        branch_ranges((14, 7, 28), "ceil")
    with pytest.raises(ValueError, match="distinct"):
        select_branches(sizes, (7, 14, 14, 112))
    with pytest.raises(ValueError, match="positive"):
        branch_ranges((0, 7))
    with pytest.raises(ValueError, match="empty"):
        branch_ranges(())
    with pytest.raises(ValueError, match="N×2"):
        select_branches(np.array([20, 20]))
    with pytest.raises(ValueError, match="N×2"):
        select_branches(np.zeros((3, 3), dtype=int))
    with pytest.raises(ValueError, match="positive"):
        select_branches(np.array([[20, 0]]))
    with pytest.raises(ValueError, match="integer"):
        select_branches(np.array([[20.5, 10.0]]))
    with pytest.raises(ValueError, match="differ in shape"):
        resolution_indicator([1, 2], [3], "max")
