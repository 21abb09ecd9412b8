"""The BTNet pipeline report: seed 004's Table 2, its §4.2 gains and the SurvFace branch-selection table.

Every step of the BTNet pipeline (φ_hr, φ_mr, φ_7 / φ_14 / φ_28 = φ_mm, φ_bt) ends with
``callbacks.multi_resolution_evaluation.MultiResolutionEvaluation``, whose ``evaluation.json`` holds
``average@r1&r2`` (the accuracy averaged over the ``.bin`` benchmarks with the first image at r1, the second at r2)
and ``qmul_survface@indicator+strategy`` (``@resize`` for a plain model). :func:`write_btnet_report` is the
pipeline hook (experiment key ``pipeline_report``) that reads them and writes ``btnet_report.md`` / ``.json``:

(a) Table 2's analogue: one row per step, one column per pair setting, the average accuracy in %;
(b) the gains of BTNet §4.2 (:mod:`lrface.metrics.multi_resolution`): cross-resolution cells against φ_mr,
    same-resolution cells r&r against φ_r;
(c) QMUL-SurvFace 1:N (TPIR20@FPIR, AUC) and 1:1 (TAR@FAR, AUC) per selection rule, as the authors' README table
    (methods.md §1.8), with the share of images each branch received.

It reads JSON only (no Lightning, no datasets).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lrface.io import atomic_write_text
from lrface.metrics.multi_resolution import gain_table, pair_key, parse_pair_key
from lrface.recognition_table import collect_evaluations

__all__ = ["DEFAULT_PAIRS", "btnet_tables", "write_btnet_report"]

DEFAULT_PAIRS = ((112, 7), (112, 14), (112, 28), (7, 7), (14, 14), (28, 28), (112, 112))
EVALUATION_FILE = "evaluation.json"
AVERAGE, SURVFACE = "average", "qmul_survface"
DASH = "–"
SURVFACE_IDENTIFICATION = (("1:N AUC", "identification/auc"),
                           ("TPIR20@0.3", "identification/tpir20@fpir=0.3"),
                           ("TPIR20@0.2", "identification/tpir20@fpir=0.2"),
                           ("TPIR20@0.1", "identification/tpir20@fpir=0.1"),
                           ("TPIR20@0.01", "identification/tpir20@fpir=0.01"))
SURVFACE_VERIFICATION = (("1:1 AUC", "verification/auc"),
                         ("TAR@0.3", "verification/tar@far=0.3"),
                         ("TAR@0.1", "verification/tar@far=0.1"),
                         ("TAR@0.01", "verification/tar@far=0.01"),
                         ("TAR@0.001", "verification/tar@far=0.001"))


def _read(runs: Mapping[str, str | os.PathLike]) -> tuple[dict[str, dict], dict[str, str]]:
    """({step: evaluation}, {step: why it is missing}); a malformed file raises, naming it."""
    evaluations = collect_evaluations(runs, missing="skip")
    missing = {str(step): f"no {EVALUATION_FILE} in {path}" for step, path in runs.items()
               if str(step) not in evaluations}
    return evaluations, missing


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(float(x)):
        return None
    return float(x)


def btnet_tables(evaluations: Mapping[str, Mapping[str, Mapping[str, float]]], hr: str = "phi_hr",
                 mr: str = "phi_mr", mm: Mapping[int | str, str] | None = None,
                 pairs: Sequence[Sequence[int]] = DEFAULT_PAIRS) -> dict[str, Any]:
    """The report's numbers from ``{step: evaluation.json content}``.

    Args:
        evaluations: {step: {set: {metric: value}}}.
        hr, mr: step names of φ_hr and φ_mr.
        mm: {r: step name of φ_r}; None → ``phi_<r>`` for every same-resolution setting r&r that has such a step.
        pairs: (r1, r2) settings, in column order.

    Returns:
        ``{"pairs": [key], "accuracy": {step: {key: fraction or None}}, "gains": {step: {key: gain or None}},
        "gain_baselines": {key: step or None}, "survface": {step: {rule: {metric: value}}}}`` (None = missing or
        undefined).
    """
    keys = [pair_key(*p) for p in pairs]
    baselines_mm = ({int(r): str(name) for r, name in mm.items()} if mm is not None
                    else {r1: f"phi_{r1}" for r1, r2 in (parse_pair_key(k) for k in keys)
                          if r1 == r2 and f"phi_{r1}" in evaluations})
    accuracy = {step: {k: _number((e.get(f"{AVERAGE}@{k}") or {}).get("accuracy")) for k in keys}
                for step, e in evaluations.items()}
    raw = {step: {k: (math.nan if v is None else v) for k, v in row.items()} for step, row in accuracy.items()}
    gains = {step: {k: _number(v) for k, v in row.items()}
             for step, row in gain_table(raw, hr, mr, baselines_mm).items()}
    gain_baselines = {}
    for k in keys:
        r1, r2 = parse_pair_key(k)
        gain_baselines[k] = mr if r1 != r2 else baselines_mm.get(r1)
    prefix = f"{SURVFACE}@"
    survface = {step: {name[len(prefix):]: {k: _number(v) for k, v in m.items()}
                       for name, m in e.items() if name.startswith(prefix)}
                for step, e in evaluations.items()}
    cost = {step: {int(name[len("cost@"):-2]): {k: _number(v) for k, v in m.items()}
                   for name, m in e.items() if name.startswith("cost@") and name.endswith("px")}
            for step, e in evaluations.items()}
    return {"pairs": keys, "accuracy": accuracy, "gains": gains, "gain_baselines": gain_baselines,
            "survface": {step: rules for step, rules in survface.items() if rules},
            "cost": {step: rows for step, rows in cost.items() if rows}}


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100.0 * x:.2f}"


def _gain(x: float | None) -> str:
    return DASH if x is None else f"{x:+.2f}"


def _markdown(tables: Mapping[str, Any], hr: str, mr: str, missing: Mapping[str, str], title: str) -> str:
    keys = tables["pairs"]
    head = "| model | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys) + "\n"
    md = f"# {title}\n\n"
    if missing:
        md += "Left out (no evaluation): " + "; ".join(f"`{s}`: {why}" for s, why in missing.items()) + ".\n\n"
    md += ("## Verification accuracy by resolution pair (Table 2)\n\nAverage over the `.bin` benchmarks of "
           "insightface's 10-fold accuracy, in %; `r1&r2`: the first image of every pair at r1×r1, the second at "
           "r2×r2 (shrunk from 112 px).\n\n" + head)
    for step, row in tables["accuracy"].items():
        md += f"| {step} | " + " | ".join(_pct(row[k]) for k in keys) + " |\n"
    md += ("\n## Gains (BTNet §4.2)\n\n(M(φ) − M(φ_hr)) / |M(baseline) − M(φ_hr)| on the average accuracy, "
           f"φ_hr = `{hr}`; baseline: cross-resolution → φ_mr = `{mr}`, r&r → φ_r. `–`: undefined (the baseline "
           "equals φ_hr) or missing.\n\n" + head)
    md += "| *baseline* | " + " | ".join(f"`{tables['gain_baselines'][k]}`" if tables["gain_baselines"][k]
                                        else DASH for k in keys) + " |\n"
    for step, row in tables["gains"].items():
        md += f"| {step} | " + " | ".join(_gain(row[k]) for k in keys) + " |\n"
    if tables["survface"]:
        md += ("\n## QMUL-SurvFace by branch selection\n\nNative-size images; a BTNet routes each by "
               "`indicator+strategy` (methods.md §1.7), a plain model resizes all (`resize`). 1:N: open-set TPIR at "
               "rank 20 (prototype gallery) and AUC; 1:1: TAR@FAR and ROC AUC. In %.\n\n")
        cols = SURVFACE_IDENTIFICATION + SURVFACE_VERIFICATION
        md += ("| model | rule | " + " | ".join(h for h, _ in cols) + " | branches |\n|---|---|"
               + "---:|" * len(cols) + "---|\n")
        for step, rules in tables["survface"].items():
            for rule, m in rules.items():
                shares = sorted(((int(k.split("/")[1]), v) for k, v in m.items() if k.startswith("branch_share/")),
                                reverse=True)
                branches = " · ".join(f"{r}: {100 * v:.0f}%" for r, v in shares if v is not None) or DASH
                md += (f"| {step} | {rule} | " + " | ".join(_pct(m.get(key)) for _, key in cols)
                       + f" | {branches} |\n")
    for step, rows in tables.get("cost", {}).items():
        md += (f"\n## Compute and storage of `{step}` (Fig. 4–5)\n\nGFLOPs per image (torch's flop counter, 2 per "
               "multiply-add): φ_hr / φ_mr up-sample every input to 112 px; φ_bt runs the branch of the input's "
               "size. Parameters stored per resolution (M): a full network vs the branch.\n\n"
               "| input | φ_hr / φ_mr GFLOPs | φ_bt GFLOPs | ratio | full network (M) | φ_bt stored (M) | ratio |\n"
               "|---:|---:|---:|---:|---:|---:|---:|\n")
        for r, m in sorted(rows.items()):
            cells = [m.get(k) for k in ("phi_hr_gflops", "phi_bt_gflops", "flops_ratio", "full_finetune_m",
                                        "phi_bt_m", "stored_ratio")]
            md += f"| {r}×{r} | " + " | ".join(DASH if v is None else f"{v:.3f}" for v in cells) + " |\n"
    return md


def write_btnet_report(runs: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike, hr: str = "phi_hr",
                       mr: str = "phi_mr", mm: Mapping[int | str, str] | None = None,
                       pairs: Sequence[Sequence[int]] = DEFAULT_PAIRS,
                       title: str = "BTNet: multi-resolution face recognition") -> str:
    """Pipeline hook: the BTNet report of ``runs`` into ``out_dir/btnet_report.md`` and ``.json`` (atomically),
    printed.

    Args:
        runs: {step name: run directory (or its evaluation.json)}; a step without ``evaluation.json`` is left out
            with a note.
        out_dir: where to write (the pipeline's run directory).
        hr, mr: step names of φ_hr and φ_mr.
        mm: {r: step name of φ_r}, e.g. ``{7: "phi_7", 14: "phi_14", 28: "phi_28"}``; None → ``phi_<r>`` where
            such a step exists.
        pairs: the (r1, r2) settings, in column order.
        title: Markdown title.

    Returns:
        The Markdown written.
    """
    evaluations, missing = _read(runs)
    tables = btnet_tables(evaluations, hr, mr, mm, pairs)
    md = _markdown(tables, hr, mr, missing, title)
    out = Path(out_dir)
    atomic_write_text(out / "btnet_report.md", md)
    atomic_write_text(out / "btnet_report.json", json.dumps(
        {"runs": {str(k): str(v) for k, v in runs.items()}, "missing": missing, "hr": hr, "mr": mr, **tables},
        indent=2, allow_nan=False) + "\n")
    print("\n" + md, flush=True)
    return md
