"""The seed paper's evaluation tables as pure functions: pair-angle statistics and separation (Table 1), race
re-identification (Table 2) and attribute re-identification (Table 3), plus the paper's published numbers and a
check of its claims on measured numbers.

Seed paper (identity-preserving upscaling, ``seeds/000_*.txt``):

- §4.1 / Table 1: five sets of 3,000 image pairs, each scored by the angle θ(F(i₁), F(i₂)) under two extractors,
  F_baseline (L_arc only) and F_ours (Eq. 10). "For CelebA-Diff, PULSE-Pairs and Lookalike-Baseline, image pairs are
  considered of different persons and for the rest, they are considered the same." Table 1 bottom: a brute-force α_thr
  found with "Opt 1: using only CelebA-Same and CelebA-Diff and Opt 2: using all three datasets" (CelebA-Same,
  CelebA-Diff, Lookalike-Baseline), then "tested on all three datasets".
- §4.2 / Table 2: race re-identification: the share of generated images that an external race classifier assigns the
  race of the source image (1,000 FairFace test images), for four generation strategies.
- §4.3 / Table 3: attribute re-identification: per attribute, the share of generated images whose attribute an
  external detector reads as the source's, averaged over five CelebA attributes.

Everything here takes plain arrays (numpy or anything ``np.asarray`` accepts) and returns JSON-ready dicts of Python
floats / ints / None; fractions are in [0, 1].
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from lrface.labels import RACE_NAMES
from lrface.metrics.angles import best_angle_threshold, separation_accuracy

__all__ = [
    "ATTRIBUTE_STRATEGIES", "DIFF_SETS", "EXTRACTORS", "PAPER", "PAPER_ATTRIBUTES", "SAME_SETS", "SETS", "STRATEGIES",
    "alpha_thresholds", "attribute_reid", "findings", "race_reid", "table1", "table2", "table3",
]

#: Table 1's pair sets, in the paper's row order.
SETS = ("CelebA-Same", "CelebA-Diff", "PULSE-Pairs", "Lookalike-Baseline", "Lookalike-Ours")
#: Sets whose pairs show the same person (§4.1); the others show different persons.
SAME_SETS = ("CelebA-Same", "Lookalike-Ours")
DIFF_SETS = tuple(s for s in SETS if s not in SAME_SETS)
#: Table 1's columns.
EXTRACTORS = ("F_baseline", "F_ours")
#: The five CelebA attributes of §4.3 / Table 3.
PAPER_ATTRIBUTES = ("Arched_Eyebrows", "Male", "Narrow_Eyes", "Smiling", "Wearing_Lipstick")
#: Table 2's generation strategies (F / loss), in the paper's row order.
STRATEGIES = ("L_SR", "F_baseline + L_sim(I_LR)", "F_ours + L_sim(I_LR)", "F_ours + L_race(r)")
#: Table 3's generation strategies.
ATTRIBUTE_STRATEGIES = ("L_SR", "F_baseline + L_sim(I_LR)", "F_ours + L_sim(I_LR)", "F_ours + L_att(a)")

#: The seed paper's published numbers, as printed (angles in degrees, accuracies as fractions).
#: Table 1 bottom gives no α_thr; Fig. 5's caption names "a successful separator at θ_thr = 70°" for F_ours.
#: The text of §4.1 quotes F_baseline's Opt-1 CelebA-Same+Diff accuracy as 96.5% where Table 1 prints 96.6%.
PAPER: dict[str, Any] = {
    "n_pairs_per_set": 3000,
    "n_race_images": 1000,
    "fig5_theta_thr": 70.0,
    "table1": {
        "angles": {
            "CelebA-Same": {"F_baseline": {"mean": 51.5, "std": 13.4}, "F_ours": {"mean": 51.4, "std": 12.2}},
            "CelebA-Diff": {"F_baseline": {"mean": 89.8, "std": 4.4}, "F_ours": {"mean": 88.9, "std": 5.3}},
            "PULSE-Pairs": {"F_baseline": {"mean": 81.3, "std": 5.9}, "F_ours": {"mean": 92.0, "std": 5.4}},
            "Lookalike-Baseline": {"F_baseline": {"mean": 76.3, "std": 6.0}, "F_ours": {"mean": 90.0, "std": 5.4}},
            "Lookalike-Ours": {"F_baseline": {"mean": 45.7, "std": 6.1}, "F_ours": {"mean": 34.8, "std": 3.8}},
        },
        "separation": {
            "F_baseline": {
                "opt1": {"CelebA-Same+Diff": 0.966, "Lookalike-Baseline": 0.324},
                "opt2": {"CelebA-Same+Diff": 0.945, "Lookalike-Baseline": 0.880},
            },
            "F_ours": {
                "opt1": {"CelebA-Same+Diff": 0.968, "Lookalike-Baseline": 0.989},
                "opt2": {"CelebA-Same+Diff": 0.966, "Lookalike-Baseline": 0.994},
            },
        },
    },
    "table2": dict(zip(STRATEGIES, (0.205, 0.401, 0.535, 0.921))),
    "table3": dict(zip(ATTRIBUTE_STRATEGIES, (0.705, 0.709, 0.796, 0.960))),
}

_OPT_KEYS = ("alpha_thr", "CelebA-Same+Diff", "Lookalike-Baseline", "CelebA-Same", "CelebA-Diff")


def _angles(x, where: str) -> np.ndarray | None:
    """1-D float64 angles, or None for a missing / empty set; non-finite angles are an error."""
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: {int(np.sum(~np.isfinite(a)))} non-finite angle(s); expected finite degrees")
    return a


def _stats(a: np.ndarray | None, ddof: int) -> dict | None:
    if a is None:
        return None
    std = float(a.std(ddof=ddof)) if a.size > ddof else None
    return {"mean": float(a.mean()), "std": std, "n": int(a.size)}


def _frac(mask: np.ndarray) -> float:
    return float(np.mean(mask))


def _separation(same, diff, lookalike, thr: float | None) -> dict:
    """Accuracies at ``thr``: same-person pairs need θ < α_thr, different-person pairs θ ≥ α_thr."""
    if thr is None:
        return dict.fromkeys(_OPT_KEYS)
    return {
        "alpha_thr": float(thr),
        "CelebA-Same+Diff": separation_accuracy(same, diff, thr),
        "Lookalike-Baseline": None if lookalike is None else _frac(lookalike >= thr),
        "CelebA-Same": _frac(same < thr),
        "CelebA-Diff": _frac(diff >= thr),
    }


def table1(angles: Mapping[str, Mapping[str, Any]], ddof: int = 0) -> dict:
    """Table 1 of the seed paper: mean ± SD pair angles per set (top) and separation accuracy at α_thr (bottom).

    Opt 1: α_thr = ``best_angle_threshold(same=CelebA-Same, diff=CelebA-Diff)``; Opt 2: α_thr =
    ``best_angle_threshold(same=CelebA-Same, diff=CelebA-Diff ∪ Lookalike-Baseline)`` (§4.1; the brute-force
    ``calc-best-angle-threshold``, pooled accuracy). Each option is then scored on CelebA-Same+Diff pooled
    (``separation_accuracy``), on Lookalike-Baseline alone (fraction of its angles ≥ α_thr, i.e. correctly called
    "different") and on CelebA-Same and CelebA-Diff separately.

    Args:
        angles: ``{extractor: {set name: P angles in degrees (1-D array-like)}}``; extractors are normally
            :data:`EXTRACTORS` and sets :data:`SETS`, extra names are kept after them. A missing or empty set
            gives None; an option whose sets are missing gives None values.
        ddof: 0 for the population SD, 1 for the sample SD (the paper does not say which).

    Returns:
        ``{"angles": {set: {extractor: {"mean", "std", "n"} | None}},
        "separation": {extractor: {"opt1": {"alpha_thr", "CelebA-Same+Diff", "Lookalike-Baseline", "CelebA-Same",
        "CelebA-Diff"}, "opt2": {...}}}}``, angles in degrees, accuracies in [0, 1].

    Raises:
        ValueError: a set holds a NaN or infinite angle.
    """
    extractors = list(EXTRACTORS) + [e for e in angles if e not in EXTRACTORS]
    sets = list(SETS) + sorted({s for e in angles.values() for s in (e or {}) if s not in SETS})
    arrays = {
        e: {s: _angles((angles.get(e) or {}).get(s), f"angles[{e!r}][{s!r}]") for s in sets} for e in extractors
    }
    out: dict[str, Any] = {"angles": {s: {e: _stats(arrays[e][s], ddof) for e in extractors} for s in sets}}
    separation = {}
    for e in extractors:
        same, diff, look = arrays[e]["CelebA-Same"], arrays[e]["CelebA-Diff"], arrays[e]["Lookalike-Baseline"]
        if same is None or diff is None:
            separation[e] = {"opt1": _separation(None, None, None, None), "opt2": _separation(None, None, None, None)}
            continue
        thr1 = best_angle_threshold(same, diff)
        thr2 = None if look is None else best_angle_threshold(same, np.concatenate([diff, look]))
        separation[e] = {"opt1": _separation(same, diff, look, thr1), "opt2": _separation(same, diff, look, thr2)}
    out["separation"] = separation
    return out


def alpha_thresholds(t1: Mapping | None, option: str = "opt1") -> dict[str, float]:
    """The α_thr per extractor found by :func:`table1` for ``option`` ("opt1" / "opt2"), skipping missing ones."""
    found = {}
    for e, opts in ((t1 or {}).get("separation") or {}).items():
        thr = ((opts or {}).get(option) or {}).get("alpha_thr")
        if thr is not None:
            found[e] = float(thr)
    return found


def _labels(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def race_reid(predicted, true) -> dict:
    """Race re-identification accuracy (seed paper §4.2, Table 2), overall and per true race.

    Args:
        predicted: N race indices of the generated images as read by the external race classifier, or N×7 scores
            (argmax taken), in :data:`lrface.labels.RACE_NAMES` order.
        true: N race indices of the source images.

    Returns:
        ``{"accuracy": float | None, "n": N, "per_race": {race: accuracy | None}, "per_race_n": {race: count},
        "predicted_fraction": {race: share of the generated images classified as that race}}``. Per-race accuracy
        shows whether L_race helps the groups StyleGAN under-produces; the predicted shares show that bias.

    Raises:
        ValueError: shapes differ or an index is outside 0..6.
    """
    k = len(RACE_NAMES)
    pred, gt = _labels(predicted), _labels(true).reshape(-1)
    if pred.ndim == 2:
        if pred.shape[1] != k:
            raise ValueError(f"predicted scores must be N×{k}; got {pred.shape}")
        pred = pred.argmax(axis=1)
    pred = pred.reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"predicted and true must have the same length; got {pred.shape} and {gt.shape}")
    for name, arr in (("predicted", pred), ("true", gt)):
        if arr.size and (not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0 or arr.max() >= k):
            raise ValueError(f"{name} race indices must be integers in 0..{k - 1}")
    pred, gt = pred.astype(np.int64), gt.astype(np.int64)
    correct = pred == gt
    per_race, per_race_n, predicted_fraction = {}, {}, {}
    for i, name in enumerate(RACE_NAMES):
        mask = gt == i
        per_race_n[name] = int(mask.sum())
        per_race[name] = _frac(correct[mask]) if mask.any() else None
        predicted_fraction[name] = _frac(pred == i) if pred.size else None
    return {
        "accuracy": _frac(correct) if correct.size else None,
        "n": int(correct.size),
        "per_race": per_race,
        "per_race_n": per_race_n,
        "predicted_fraction": predicted_fraction,
    }


def _binary(x, where: str) -> np.ndarray:
    a = _labels(x)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{where} must be N×K 0/1; got shape {a.shape}")
    if a.size and not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{where} must hold only 0/1 values (threshold scores before calling)")
    return a.astype(bool)


def attribute_reid(predicted, true, names: Sequence[str]) -> dict:
    """Attribute re-identification accuracy (seed paper §4.3, Table 3).

    Args:
        predicted: N×K 0/1 attributes of the generated images as read by the external attribute detector.
        true: N×K 0/1 attributes of the source images (or the requested attribute values).
        names: the K attribute names (normally :data:`PAPER_ATTRIBUTES`).

    Returns:
        ``{"accuracy": mean over the K attributes of the per-attribute accuracy | None, "per_attribute": {name:
        accuracy | None}, "n": N}``.

    Raises:
        ValueError: shapes differ from N×K or the values are not 0/1.
    """
    names = list(names)
    pred, gt = _binary(predicted, "predicted"), _binary(true, "true")
    if pred.shape != gt.shape or pred.shape[1] != len(names):
        raise ValueError(f"predicted {pred.shape} and true {gt.shape} must both be N×{len(names)} (a column per name)")
    n = int(pred.shape[0])
    per = {name: (_frac(pred[:, j] == gt[:, j]) if n else None) for j, name in enumerate(names)}
    return {"accuracy": float(np.mean(list(per.values()))) if n and names else None, "per_attribute": per, "n": n}


def _ordered(results: Mapping[str, Any] | None, order: Sequence[str]) -> dict:
    results = results or {}
    return {s: results.get(s) for s in order} | {s: v for s, v in results.items() if s not in order}


def table2(results: Mapping[str, Mapping | None] | None) -> dict:
    """Table 2: ``{strategy: race_reid(...) | None}`` in :data:`STRATEGIES` order (missing ones None, extras after)."""
    return _ordered(results, STRATEGIES)


def table3(results: Mapping[str, Mapping | None] | None) -> dict:
    """Table 3: ``{strategy: attribute_reid(...) | None}`` in :data:`ATTRIBUTE_STRATEGIES` order."""
    return _ordered(results, ATTRIBUTE_STRATEGIES)


# ---------------------------------------------------------------------------------------------------------------
# The paper's claims, checked on measured numbers.

#: (a) Lookalike-Baseline separation under Opt 1.
LOOKALIKE_MIN_ACCURACY = 0.75
LOOKALIKE_MIN_GAIN = 0.10
#: (b) CelebA-Same kept and (e) different-person sets collapsed, in degrees.
SAME_MEAN_TOLERANCE = 5.0
DIFF_SPREAD_TOLERANCE = 5.0
#: (f) the Opt-2 cost on CelebA-Same+Diff that still counts as "no trade-off".
OPT2_MAX_DROP = 0.01


def lookup(d, *keys):
    """``d[k1][k2]...``, or None where a level is missing or None."""
    for k in keys:
        if not isinstance(d, Mapping) or d.get(k) is None:
            return None
        d = d[k]
    return d


def _acc(entry) -> tuple[float | None, int | None]:
    if isinstance(entry, Mapping):
        acc, n = entry.get("accuracy"), entry.get("n")
        return (None if acc is None else float(acc)), (None if n is None else int(n))
    if isinstance(entry, (int, float)) and not isinstance(entry, bool) and math.isfinite(entry):
        return float(entry), None
    return None, None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _finding(id_: str, source: str, claim: str, holds: bool | None, evidence: str) -> dict:
    return {"id": id_, "source": source, "claim": claim, "holds": holds, "evidence": evidence}


def _step_findings(table: Mapping | None, order: Sequence[str], kind: str, source: str) -> list[dict]:
    out = []
    for lo, hi in zip(order[:-1], order[1:]):
        a, na = _acc(lookup(table, lo))
        b, nb = _acc(lookup(table, hi))
        claim = f"{kind} re-identification rises from {lo} to {hi}"
        if a is None or b is None:
            out.append(_finding(f"{kind.lower()}_{lo}<{hi}", source, claim, None, "not measured"))
            continue
        evidence = f"{_pct(a)} → {_pct(b)} ({100 * (b - a):+.1f} points"
        if na and nb:
            se = math.sqrt(a * (1 - a) / na + b * (1 - b) / nb)
            evidence += f", ±{100 * se:.1f} binomial SE; n = {na} / {nb}"
        out.append(_finding(f"{kind.lower()}_{lo}<{hi}", source, claim, bool(b > a), evidence + ")"))
    return out


def findings(t1: Mapping | None, t2: Mapping | None, t3: Mapping | None) -> list[dict]:
    """The seed paper's claims (§4.1–4.3) checked on measured tables; ``holds`` is None when an input is missing.

    Rules (fixed here so that a reproduction can fail them):

    - ``lookalike_separation`` (Table 1 bottom, Opt 1): F_ours separates Lookalike-Baseline from CelebA-Same where
      F_baseline cannot: F_ours' Opt-1 Lookalike-Baseline accuracy ≥ 0.75 and ≥ F_baseline's + 0.10
      (paper: 98.9% vs 32.4%).
    - ``single_threshold`` (Table 1 bottom, Opt 2): F_ours separates all three sets with one α_thr: its Opt-2
      CelebA-Same+Diff accuracy is at most 1 point below its Opt-1 accuracy and its Opt-2 Lookalike-Baseline
      accuracy ≥ 0.75 (paper: 96.8% → 96.6%, 99.4%).
    - ``same_kept`` (Table 1 top): F_ours keeps CelebA-Same like F_baseline: |mean difference| ≤ 5° (51.4° vs 51.5°).
    - ``diff_collapse`` (Table 1 top): F_ours gives CelebA-Diff, PULSE-Pairs and Lookalike-Baseline similar
      distributions: the spread (max − min) of their three means ≤ 5° (paper: 88.9°, 92.0°, 90.0°; F_baseline's
      spread is 13.5°).
    - race steps (Table 2) and attribute steps (Table 3): each consecutive strategy is strictly more accurate:
      L_SR < F_baseline + L_sim < F_ours + L_sim < F_ours + L_race (resp. L_att), one claim per step; the evidence
      gives the difference with a rough binomial standard error (n = images) so that a noisy step is visible.

    Args:
        t1: :func:`table1` output (or None).
        t2: ``{strategy: race_reid(...)}`` (or accuracies as floats), keys of :data:`STRATEGIES`.
        t3: ``{strategy: attribute_reid(...)}``, keys of :data:`ATTRIBUTE_STRATEGIES`.

    Returns:
        A list of ``{"id", "source", "claim", "holds": bool | None, "evidence": str}``.
    """
    out = []
    sep = lookup(t1, "separation")
    base1 = lookup(sep, "F_baseline", "opt1", "Lookalike-Baseline")
    ours1 = lookup(sep, "F_ours", "opt1", "Lookalike-Baseline")
    claim = "F_ours separates Lookalike-Baseline from CelebA-Same where F_baseline cannot (Opt 1)"
    if base1 is None or ours1 is None:
        out.append(_finding("lookalike_separation", "§4.1, Table 1", claim, None, "not measured"))
    else:
        holds = ours1 >= LOOKALIKE_MIN_ACCURACY and ours1 >= base1 + LOOKALIKE_MIN_GAIN
        evidence = (f"Opt-1 Lookalike-Baseline accuracy F_ours {_pct(ours1)} vs F_baseline {_pct(base1)} "
                    f"(rule: F_ours ≥ {_pct(LOOKALIKE_MIN_ACCURACY)} and ≥ F_baseline + {100 * LOOKALIKE_MIN_GAIN:.0f}"
                    " points; paper 98.9% vs 32.4%)")
        out.append(_finding("lookalike_separation", "§4.1, Table 1", claim, bool(holds), evidence))

    o1, o2 = lookup(sep, "F_ours", "opt1", "CelebA-Same+Diff"), lookup(sep, "F_ours", "opt2", "CelebA-Same+Diff")
    l2 = lookup(sep, "F_ours", "opt2", "Lookalike-Baseline")
    claim = "F_ours separates CelebA-Same from CelebA-Diff and Lookalike-Baseline with one α_thr (Opt 2, no trade-off)"
    if o1 is None or o2 is None or l2 is None:
        out.append(_finding("single_threshold", "§4.1, Table 1", claim, None, "not measured"))
    else:
        holds = o2 >= o1 - OPT2_MAX_DROP and l2 >= LOOKALIKE_MIN_ACCURACY
        b1 = lookup(sep, "F_baseline", "opt1", "CelebA-Same+Diff")
        b2 = lookup(sep, "F_baseline", "opt2", "CelebA-Same+Diff")
        bl2 = lookup(sep, "F_baseline", "opt2", "Lookalike-Baseline")
        evidence = (f"F_ours CelebA-Same+Diff {_pct(o1)} (Opt 1) → {_pct(o2)} (Opt 2), Lookalike-Baseline {_pct(l2)}; "
                    f"F_baseline {_pct(b1)} → {_pct(b2)}, Lookalike-Baseline {_pct(bl2)} (rule: drop ≤ "
                    f"{100 * OPT2_MAX_DROP:.0f} point and Lookalike-Baseline ≥ {_pct(LOOKALIKE_MIN_ACCURACY)})")
        out.append(_finding("single_threshold", "§4.1, Table 1", claim, bool(holds), evidence))

    angles = lookup(t1, "angles")
    mb, mo = lookup(angles, "CelebA-Same", "F_baseline", "mean"), lookup(angles, "CelebA-Same", "F_ours", "mean")
    claim = "F_ours keeps the CelebA-Same distribution of F_baseline"
    if mb is None or mo is None:
        out.append(_finding("same_kept", "§4.1, Table 1", claim, None, "not measured"))
    else:
        holds = abs(mo - mb) <= SAME_MEAN_TOLERANCE
        evidence = (f"CelebA-Same mean F_ours {mo:.1f}° vs F_baseline {mb:.1f}° (|Δ| = {abs(mo - mb):.2f}°, rule ≤ "
                    f"{SAME_MEAN_TOLERANCE:.0f}°; paper 51.4° vs 51.5°)")
        out.append(_finding("same_kept", "§4.1, Table 1", claim, bool(holds), evidence))

    diff_sets = ("CelebA-Diff", "PULSE-Pairs", "Lookalike-Baseline")
    claim = "F_ours gives CelebA-Diff, PULSE-Pairs and Lookalike-Baseline similar distributions"
    means = {e: [lookup(angles, s, e, "mean") for s in diff_sets] for e in EXTRACTORS}
    if any(m is None for m in means["F_ours"]):
        out.append(_finding("diff_collapse", "§4.1, Table 1", claim, None, "not measured"))
    else:
        spread = max(means["F_ours"]) - min(means["F_ours"])
        evidence = "F_ours means " + ", ".join(f"{s} {m:.1f}°" for s, m in zip(diff_sets, means["F_ours"]))
        evidence += f" (spread {spread:.2f}°, rule ≤ {DIFF_SPREAD_TOLERANCE:.0f}°"
        if all(m is not None for m in means["F_baseline"]):
            evidence += f"; F_baseline spread {max(means['F_baseline']) - min(means['F_baseline']):.1f}°"
        out.append(_finding("diff_collapse", "§4.1, Table 1", claim, bool(spread <= DIFF_SPREAD_TOLERANCE),
                            evidence + "; paper 3.1° vs 13.5°)"))

    out += _step_findings(t2, STRATEGIES, "Race", "§4.2, Table 2")
    out += _step_findings(t3, ATTRIBUTE_STRATEGIES, "Attribute", "§4.3, Table 3")
    return out
