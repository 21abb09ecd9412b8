"""Multi-resolution matching gains of BTNet §4.2 (seed 004; methods.md §1.6).

M_{r1&r2}(φ) is a metric (e.g. the verification accuracy averaged over the benchmarks) of model φ when the first
image of every pair is r1×r1 and the second r2×r2. Against the model trained on high-resolution faces only, φ_hr:

* cross-resolution gain (r1 ≠ r2), normalised by what multi-resolution training φ_mr achieves::

      Gain_{r1&r2}(φ) = (M_{r1&r2}(φ) − M_{r1&r2}(φ_hr)) / |M_{r1&r2}(φ_mr) − M_{r1&r2}(φ_hr)|

* same-resolution gain, normalised by the model trained at r only (φ_r ∈ φ_mm = {φ_7, φ_14, φ_28})::

      Gain_{r&r}(φ) = (M_{r&r}(φ) − M_{r&r}(φ_hr)) / |M_{r&r}(φ_r) − M_{r&r}(φ_hr)|

The absolute value keeps the sign of the numerator when the baseline is worse than φ_hr (the paper: "they can be
negative in some test settings"). A gain of 1 means "as much better than φ_hr as the baseline"; φ_hr's own gain is 0.
When the baseline equals φ_hr (zero denominator) the gain is undefined and reported as ``nan``; a missing metric or
baseline gives ``nan`` too.

Pair settings are keyed ``"r1&r2"`` (:func:`pair_key`), the first image's resolution first: ``"112&7"``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["cross_resolution_gain", "gain", "gain_table", "pair_key", "parse_pair_key", "same_resolution_gain"]


def pair_key(r1: int, r2: int) -> str:
    """``"r1&r2"``, e.g. ``pair_key(112, 7) == "112&7"`` (first image at r1, second at r2)."""
    return f"{int(r1)}&{int(r2)}"


def parse_pair_key(key: str) -> tuple[int, int]:
    """``"112&7"`` → (112, 7).

    Raises:
        ValueError: not two positive integers joined by ``&``.
    """
    parts = str(key).split("&")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"pair key must be 'r1&r2' with integer resolutions (e.g. '112&7'); got {key!r}")
    r1, r2 = (int(p) for p in parts)
    if r1 <= 0 or r2 <= 0:
        raise ValueError(f"pair resolutions must be positive; got {key!r}")
    return r1, r2


def _value(x) -> float:
    return math.nan if x is None else float(x)


def gain(m: float | None, m_hr: float | None, m_baseline: float | None) -> float:
    """BTNet §4.2's normalised gain (M(φ) − M(φ_hr)) / |M(baseline) − M(φ_hr)|; ``nan`` when the denominator is zero
    (the baseline did not move from φ_hr, the gain is undefined) or any value is missing (None / nan)."""
    m, m_hr, m_baseline = _value(m), _value(m_hr), _value(m_baseline)
    denominator = abs(m_baseline - m_hr)
    if math.isnan(denominator) or math.isnan(m) or denominator == 0.0:
        return math.nan
    return (m - m_hr) / denominator


def cross_resolution_gain(m: float | None, m_hr: float | None, m_mr: float | None) -> float:
    """Gain_{r1&r2}(φ) of BTNet §4.2 (r1 ≠ r2): baseline φ_mr, the multi-resolution-trained model."""
    return gain(m, m_hr, m_mr)


def same_resolution_gain(m: float | None, m_hr: float | None, m_r: float | None) -> float:
    """Gain_{r&r}(φ) of BTNet §4.2: baseline φ_r ∈ φ_mm, the model trained at resolution r only."""
    return gain(m, m_hr, m_r)


def gain_table(metrics: Mapping[str, Mapping[str, float]], hr: str, mr: str,
               mm: Mapping[int | str, str] | None = None) -> dict[str, dict[str, float]]:
    """The BTNet §4.2 gains of every model in every pair setting.

    Args:
        metrics: {model: {pair key: M}} (e.g. the benchmark-averaged accuracy per pair setting).
        hr: the model name of φ_hr.
        mr: the model name of φ_mr (cross-resolution baseline).
        mm: {r: model name of φ_r} (same-resolution baselines); keys may be ints or digit strings.

    Returns:
        {model: {pair key: gain}} over the union of the pair keys (in order of first appearance); cross-resolution
        cells use φ_mr, same-resolution cells r&r use mm[r]. A missing φ_hr / baseline / value gives ``nan``.
    """
    baselines = {int(r): name for r, name in (mm or {}).items()}
    keys: list[str] = []
    for values in metrics.values():
        keys += [k for k in values if k not in keys]
    parsed = {k: parse_pair_key(k) for k in keys}
    hr_values = metrics.get(hr, {})
    out: dict[str, dict[str, float]] = {}
    for model, values in metrics.items():
        row = {}
        for key, (r1, r2) in parsed.items():
            base = mr if r1 != r2 else baselines.get(r1)
            m_base = metrics.get(base, {}).get(key) if base is not None else None
            row[key] = gain(values.get(key), hr_values.get(key), m_base)
        out[model] = row
    return out
