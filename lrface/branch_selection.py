"""BTNet's test-time branch selection for native-resolution faces (seed 004 §4.3.2, Fig. 8; methods.md §1.7).

A native surveillance face is W×H pixels, rarely exactly a branch's r×r. The authors' ``eval_survface_1n_multi_reso.py``
first reduces (W, H) to one integer *resolution indicator*:

* ``"max"``: max(W, H);  ``"min"``: min(W, H);  ``"avg"``: (W + H) // 2 (integer division, as the code),

then sends the image to a branch by an inclusive indicator range per branch, and resizes it to that branch's r×r:

* ``"floor"`` (the code calls it ``bottom``): the largest branch ≤ indicator (below the smallest branch: the smallest);
* ``"ceil"``: the smallest branch ≥ indicator (above the largest branch: the largest);
* ``"near"``: the nearest branch; a tie (the indicator exactly half-way) goes to the smaller branch.

For the branches (7, 14, 28, 112) these rules give exactly the authors' table (:func:`ranges_markdown`):

=========  ============  =========  =========  ========
strategy   112           28         14         7
=========  ============  =========  =========  ========
floor      [112, ∞)      [28, 111]  [14, 27]   [0, 13]
near       [71, ∞)       [22, 70]   [11, 21]   [0, 10]
ceil       [29, ∞)       [15, 28]   [8, 14]    [0, 7]
=========  ============  =========  =========  ========

The code closes the largest branch's range at 1000; here it ends at :data:`OPEN_END` (the largest int64), so no real
image, however large, falls outside every range. The ranges are derived for any ascending branch list, so a BTNet
with other branches (e.g. (14, 28, 56, 112)) routes by the same rules.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

__all__ = ["DEFAULT_BRANCHES", "INDICATORS", "OPEN_END", "STRATEGIES", "branch_ranges", "canonical_strategy",
           "ranges_markdown", "resolution_indicator", "select_branches"]

INDICATORS = ("max", "min", "avg")
STRATEGIES = ("floor", "near", "ceil")
#: the authors' name for ``floor``
STRATEGY_ALIASES = {"bottom": "floor"}
#: BTNet's branches 7, 14, 28 and the trunk TNet at 112
DEFAULT_BRANCHES = (7, 14, 28, 112)
#: upper end of the largest branch's range (the code's 1000): no image size can exceed it
OPEN_END = int(np.iinfo(np.int64).max)


def canonical_strategy(strategy: str) -> str:
    """``"floor"`` | ``"near"`` | ``"ceil"`` (``"bottom"`` → ``"floor"``).

    Raises:
        ValueError: an unknown strategy.
    """
    name = STRATEGY_ALIASES.get(strategy, strategy)
    if name not in STRATEGIES:
        raise ValueError(f"unknown branch-selection strategy {strategy!r}; expected one of {STRATEGIES} "
                         f"(or 'bottom' = 'floor')")
    return name


def _check_branches(branches: Sequence[int]) -> tuple[int, ...]:
    try:
        values = [int(b) for b in branches]
    except (TypeError, ValueError):
        raise ValueError(f"branches must be integer sides; got {branches!r}") from None
    if any(v != b for v, b in zip(values, branches)):
        raise ValueError(f"branches must be integer sides; got {list(branches)}")
    if not values:
        raise ValueError("branches must not be empty")
    if values[0] <= 0:
        raise ValueError(f"branch sides must be positive; got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"branches must be distinct; got duplicates in {values}")
    if values != sorted(values):
        raise ValueError(f"branches must be in ascending order; got {values}")
    return tuple(values)


def resolution_indicator(heights, widths, indicator: str = "max") -> np.ndarray:
    """The resolution indicator of native images.

    Args:
        heights: N native heights (int, > 0).
        widths: N native widths (int, > 0).
        indicator: ``"max"`` (max(W, H)), ``"min"`` (min(W, H)) or ``"avg"`` ((W + H) // 2, integer as the code).

    Returns:
        N int64 indicators.

    Raises:
        ValueError: unknown indicator, mismatched lengths, non-integer or non-positive sizes.
    """
    if indicator not in INDICATORS:
        raise ValueError(f"unknown resolution indicator {indicator!r}; expected one of {INDICATORS}")
    h, w = _as_sides(heights, "heights"), _as_sides(widths, "widths")
    if h.shape != w.shape:
        raise ValueError(f"heights and widths differ in shape: {h.shape} vs {w.shape}")
    if indicator == "max":
        return np.maximum(h, w)
    if indicator == "min":
        return np.minimum(h, w)
    return (h + w) // 2


def _as_sides(x, what: str) -> np.ndarray:
    arr = np.asarray(x.cpu() if hasattr(x, "cpu") else x)
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(arr == np.round(arr))))
    if arr.size and not integral:
        raise ValueError(f"{what} must be integer pixel counts; got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() <= 0:
        raise ValueError(f"{what} must be positive; got {int(arr.min())}")
    return arr


def branch_ranges(branches: Sequence[int] = DEFAULT_BRANCHES, strategy: str = "ceil") -> dict[int, tuple[int, int]]:
    """The inclusive indicator range each branch accepts (module docstring).

    Args:
        branches: ascending distinct branch sides, e.g. (7, 14, 28, 112).
        strategy: ``"floor"`` (alias ``"bottom"``), ``"near"`` or ``"ceil"``.

    Returns:
        {branch: (lo, hi)}, contiguous and disjoint, covering 0 … :data:`OPEN_END`.
    """
    b = _check_branches(branches)
    strategy = canonical_strategy(strategy)
    if strategy == "floor":  # b_i takes [b_i, b_{i+1} - 1]
        upper = [nxt - 1 for nxt in b[1:]]
    elif strategy == "ceil":  # b_i takes [b_{i-1} + 1, b_i]
        upper = list(b[:-1])
    else:  # x goes to b_i iff x - b_i <= b_{i+1} - x, i.e. x <= (b_i + b_{i+1}) // 2 (a tie stays with b_i)
        upper = [(lo + hi) // 2 for lo, hi in pairwise(b)]
    upper.append(OPEN_END)
    lower = [0] + [u + 1 for u in upper[:-1]]
    return {side: (lo, hi) for side, lo, hi in zip(b, lower, upper)}


def select_branches(sizes, branches: Sequence[int] = DEFAULT_BRANCHES, indicator: str = "max",
                    strategy: str = "ceil") -> np.ndarray:
    """The branch each native image is routed to.

    Args:
        sizes: N×2 native [H, W] (the datasets' ``size`` convention; numpy array, list or tensor).
        branches: ascending branch sides.
        indicator: ``"max"`` | ``"min"`` | ``"avg"``.
        strategy: ``"floor"`` (``"bottom"``) | ``"near"`` | ``"ceil"``; default ``max`` + ``ceil``, the authors'
            default and the paper's best.

    Returns:
        N int64 branch sides.
    """
    arr = np.asarray(sizes.cpu() if hasattr(sizes, "cpu") else sizes)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"sizes must be N×2 [H, W]; got shape {arr.shape}")
    ind = resolution_indicator(arr[:, 0], arr[:, 1], indicator)
    ranges = branch_ranges(branches, strategy)
    sides = np.array(list(ranges), dtype=np.int64)
    lows = np.array([lo for lo, _ in ranges.values()], dtype=np.int64)
    return sides[np.searchsorted(lows, ind, side="right") - 1]


def ranges_markdown(branches: Sequence[int] = DEFAULT_BRANCHES) -> str:
    """The ranges of every strategy as a Markdown table (rows = strategies, columns = branches, largest first as in
    the authors' README), newline-terminated."""
    b = _check_branches(branches)
    cols = sorted(b, reverse=True)
    lines = ["| strategy | " + " | ".join(str(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for strategy in STRATEGIES:
        ranges = branch_ranges(b, strategy)
        label = "floor (code: `bottom`)" if strategy == "floor" else strategy
        cells = [f"[{ranges[c][0]}, ∞)" if ranges[c][1] == OPEN_END else f"[{ranges[c][0]}, {ranges[c][1]}]"
                 for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
