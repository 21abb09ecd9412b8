"""MAD's pipeline report (seed 003, supplementary §7 Tables 1–2, §4 Fig. 3): the ``pipeline_report`` hook of
``mad_synthetic`` / ``mad_celeba``. Every MAD step ends with :class:`callbacks.mad_evaluation.MADEvaluation`, whose
``mad_evaluation.json`` this reads (files only: no Lightning, no datasets). It writes ``mad_report.md`` / ``.json``
and ``mad_before_after.png`` into the pipeline's run directory:

* **Table 1** (autoencoder ablation): per row (A) adversarial AE, (B) + GAN, (C) full objective — the loss terms on,
  the Fréchet distance of random samples (from the row's ``ae`` step; our recognition network's space, or 8×8
  pixels, never Inception: named so), and for S and J the reconstruction RMSE train / test, the expression AUC from
  f_e and the verification accuracy from f_id;
* **Table 2** (disentanglement ablation): per row (A)–(F), for S and J, expression AUC from f_e and f_¬e and
  verification accuracy from f_id and f_¬id;
* **findings**, computed from those tables: does the complement carry less information than the factor
  (f_¬id < f_id, f_¬e < f_e) in every row, and does joint training beat separate (J > S) per row and column;
* **Fig. 3**: the same test faces — inputs, reconstructions after the autoencoder phase, after separate
  disentanglement (S: Q and P are frozen, so identical to the former) and after joint training (J) — stacked from the
  runs' strips.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lrface.io import atomic_write_text

__all__ = ["TABLE1_TERMS", "TABLE2_TERMS", "mad_findings", "mad_tables", "read_mad_evaluation", "write_mad_report"]

DASH = "–"
#: loss terms per Table 1 row (L_rec, L_enc, L_adv, L_gen)
TABLE1_TERMS = {"A": ("L_rec", "L_enc"), "B": ("L_rec", "L_enc", "L_adv"), "C": ("L_rec", "L_enc", "L_adv", "L_gen")}
TABLE1_NAMES = {"A": "(A) Adversarial autoencoder", "B": "(B) Adv. AE w/ GAN", "C": "(C) Full objective"}
#: factors and loss terms per Table 2 row
TABLE2_TERMS = {"A": ("PIES", "L_f"), "B": ("PIES", "L_f L_rec"), "C": ("PIES", "L_f L_rec L_cyc"),
                "D": ("I", "L_f L_rec L_cyc L_aug"), "E": ("E", "L_f L_rec L_cyc L_aug"),
                "F": ("PIES", "L_f L_rec L_cyc L_aug")}
TABLE2_NAMES = {"A": "(A) Discrimin. only", "B": "(B) No disentanglement", "C": "(C) No augmentation",
                "D": "(D) Identity only", "E": "(E) Expression only", "F": "(F) Full objective"}
MODES = ("S", "J")


def read_mad_evaluation(run_dir: str | os.PathLike) -> dict[str, dict[str, float]]:
    """A run's ``mad_evaluation.json`` results ({set: {metric: value}}); raises naming the file if absent / bad."""
    path = Path(run_dir) / "mad_evaluation.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no MAD evaluation (the step's experiment must use "
                                "callbacks/mad_evaluation.yaml)")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path}: expected {{'results': {{set: {{metric: value}}}}, 'figures': ...}}")
    return data["results"]


def _get(results: Mapping[str, Mapping[str, float]] | None, group: str, key: str) -> float:
    if results is None:
        return math.nan
    value = results.get(group, {}).get(key, math.nan)
    return float(value) if isinstance(value, (int, float)) else math.nan


def _fd(results: Mapping[str, Mapping[str, float]] | None) -> tuple[float, str]:
    sample = (results or {}).get("random_samples", {})
    for key in ("fd_recognition", "fd_pixels8"):
        if key in sample:
            return float(sample[key]), key
    return math.nan, ""


def mad_tables(runs: Mapping[str, str | os.PathLike], table1: Mapping[str, Mapping[str, str]],
               table2: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """{"table1": {row: {fd, fd_space, S: {...}, J: {...}}}, "table2": {row: {S: {...}, J: {...}}}} as fractions
    (accuracies and AUCs in [0, 1]; RMSE in 0..255). Rows / modes whose step is absent are left out."""
    cache: dict[str, dict] = {}

    def results_of(step: str | None):
        if step is None or step not in runs:
            return None
        if step not in cache:
            cache[step] = read_mad_evaluation(runs[step])
        return cache[step]

    def discriminative(res) -> dict[str, float]:
        return {"f_e": _get(res, "expression_probe", "expression_auc"),
                "f_not_e": _get(res, "expression_probe", "not_expression_auc"),
                "z_e": _get(res, "expression_probe", "z_auc"),
                "pixels_e": _get(res, "expression_probe", "pixels16_auc"),
                "f_id": _get(res, "verification@average", "identity"),
                "f_not_id": _get(res, "verification@average", "not_identity"),
                "z_id": _get(res, "verification@average", "z")}

    t1: dict[str, dict[str, Any]] = {}
    for row, steps in table1.items():
        fd, space = _fd(results_of(steps.get("ae")))
        entry: dict[str, Any] = {"fd": fd, "fd_space": space}
        for mode in MODES:
            res = results_of(steps.get(mode))
            if res is not None:
                entry[mode] = {"rmse_train": _get(res, "reconstruction", "rmse_train"),
                               "rmse_test": _get(res, "reconstruction", "rmse_test"), **discriminative(res)}
        t1[row] = entry
    t2: dict[str, dict[str, Any]] = {}
    for row, steps in table2.items():
        entry = {mode: discriminative(results_of(steps.get(mode))) for mode in MODES if results_of(steps.get(mode))}
        if entry:
            t2[row] = entry
    return {"table1": t1, "table2": t2}


def _finite(*values: float) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def mad_findings(tables: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The supplementary's claims checked on the tables: {claim, holds (bool | None), evidence}."""
    t2 = tables["table2"]
    out: list[dict[str, Any]] = []
    for factor, pos, neg, what in (("identity", "f_id", "f_not_id", "verification accuracy"),
                                   ("expression", "f_e", "f_not_e", "expression AUC")):
        cells = [(row, mode, v[pos], v[neg]) for row, modes in t2.items() for mode, v in modes.items()
                 if _finite(v[pos], v[neg])]
        held = [c for c in cells if c[3] < c[2]]
        out.append({"claim": f"f_¬{factor[:2] if factor == 'identity' else 'e'} carries less {factor} information "
                             f"than f_{'id' if factor == 'identity' else 'e'} ({what})",
                    "holds": (len(held) == len(cells)) if cells else None,
                    "evidence": f"{len(held)}/{len(cells)} (row, S/J) cells: "
                                + ", ".join(f"{r}{m} {100 * a:.1f} vs {100 * b:.1f}" for r, m, a, b in cells)})
    for pos, what in (("f_id", "verification accuracy from f_id"), ("f_e", "expression AUC from f_e")):
        cells = [(row, v["S"][pos], v["J"][pos]) for row, v in t2.items()
                 if "S" in v and "J" in v and _finite(v["S"][pos], v["J"][pos])]
        better = [c for c in cells if c[2] > c[1]]
        out.append({"claim": f"joint training (J) beats separate (S): {what}",
                    "holds": (len(better) > len(cells) / 2) if cells else None,
                    "evidence": f"J > S in {len(better)}/{len(cells)} rows: "
                                + ", ".join(f"{r} S {100 * s:.1f} → J {100 * j:.1f}" for r, s, j in cells)})
    t1 = tables["table1"]
    fds = [(row, v["fd"]) for row, v in t1.items() if _finite(v["fd"])]
    if len(fds) >= 2:
        first, last = fds[0], fds[-1]
        out.append({"claim": "random samples become more realistic from (A) to (C) (lower Fréchet distance)",
                    "holds": last[1] < first[1],
                    "evidence": ", ".join(f"{r} {v:.2f}" for r, v in fds)})
    return out


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, float) and math.isfinite(v) else DASH


def _auc(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else DASH


def _rmse(entry: Mapping[str, float] | None) -> str:
    if not entry or not _finite(entry["rmse_train"], entry["rmse_test"]):
        return DASH
    return f"{entry['rmse_train']:.2f}/{entry['rmse_test']:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def write_mad_report(runs: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike,
                     table1: Mapping[str, Mapping[str, str]] | None = None,
                     table2: Mapping[str, Mapping[str, str]] | None = None,
                     before_after: Sequence[str] = (), figures: str | None = None) -> str:
    """Pipeline hook: ``mad_report.md`` / ``.json`` (+ ``mad_before_after.png``) in ``out_dir``; returns the Markdown.

    Args:
        runs: {step: run directory} (the pipeline's).
        out_dir: the pipeline's run directory.
        table1: {row A/B/C: {"ae": step, "S": step, "J": step}}.
        table2: {row A–F: {"S": step, "J": step}}.
        before_after: steps whose reconstruction strips are stacked under the first one's inputs (Fig. 3).
        figures: the step whose t-SNE / interpolation / sample figures the report shows (e.g. row F's J).
    """
    from lrface.mad_figures import stack_strips

    out = Path(out_dir)
    tables = mad_tables(runs, table1 or {}, table2 or {})
    findings = mad_findings(tables)
    space = next((v["fd_space"] for v in tables["table1"].values() if v["fd_space"]), "")
    space_name = {"fd_recognition": "our recognition network's embeddings",
                  "fd_pixels8": "8×8 area-downsampled pixels"}.get(space, "–")
    md = ["# MAD (seed 003): autoencoder and disentanglement ablations on this run's data", "",
          "CelebA plays AffectNet's (expression), VGGFace2's (identity) and VoxCeleb's (style) roles; verification "
          "is the mean 10-fold accuracy over the `.bin` sets; the expression AUC is a linear probe's macro one-vs-rest "
          "ROC AUC over 4 CelebA expression classes (lrface/mad_evaluation.py).", "",
          f"## Table 1: autoencoder ablation (random-sample Fréchet distance in {space_name}; not Inception FID)", ""]
    rows = []
    for row, v in tables["table1"].items():
        terms = TABLE1_TERMS.get(row, ())
        marks = ["✓" if t in terms else "" for t in ("L_rec", "L_enc", "L_adv", "L_gen")]
        for k, mode in enumerate(MODES):
            e = v.get(mode)
            rows.append([TABLE1_NAMES.get(row, row) if k == 0 else "", *(marks if k == 0 else [""] * 4),
                         f"{v['fd']:.2f}" if k == 0 and _finite(v["fd"]) else "", _rmse(e),
                         _auc(e["f_e"]) if e else DASH, _pct(e["f_id"]) if e else DASH, mode])
    md += [_table(["row", "L_rec", "L_enc", "L_adv", "L_gen", "random FD", "RMSE train/test", "expr. AUC (f_e)",
                   "verif. acc. % (f_id)", ""], rows)]
    md += ["## Table 2: disentanglement ablation", ""]
    rows = []
    for row, modes in tables["table2"].items():
        factors, terms = TABLE2_TERMS.get(row, ("", ""))
        for k, (mode, v) in enumerate(modes.items()):
            rows.append([TABLE2_NAMES.get(row, row) if k == 0 else "", factors if k == 0 else "",
                         terms if k == 0 else "", _auc(v["f_e"]), _auc(v["f_not_e"]), _auc(v["z_e"]),
                         _pct(v["f_id"]), _pct(v["f_not_id"]), _pct(v["z_id"]), mode])
    md += [_table(["row", "factors", "terms", "AUC f_e", "AUC f_¬e", "AUC z", "acc. f_id", "acc. f_¬id", "acc. z",
                   ""], rows)]
    pixels = [v["pixels_e"] for modes in tables["table2"].values() for v in modes.values() if _finite(v["pixels_e"])]
    if pixels:
        md += [f"References: the same linear probe on the test faces' 16×16 pixels gives expression AUC "
               f"{pixels[0]:.4f}; `acc. z` / `AUC z` read the autoencoder's whole code z.", ""]
    md += ["## Findings (computed from the tables above)", ""]
    md += [f"- **{'holds' if f['holds'] else 'does not hold' if f['holds'] is False else 'not measured'}** — "
           f"{f['claim']}: {f['evidence']}" for f in findings]
    md.append("")
    written: dict[str, str] = {}
    strips = [Path(runs[s]) / "mad_reconstructions.png" for s in before_after if s in runs]
    if strips and all(p.is_file() for p in strips):
        inputs = Path(runs[before_after[0]]) / "mad_inputs.png"
        stack_strips([inputs, *strips], out / "mad_before_after.png")
        written["before_after"] = "mad_before_after.png"
        md += ["## Fig. 3: reconstructions before / after disentanglement", "",
               "Rows: input; " + "; ".join(before_after) + ".", "", "![before and after](mad_before_after.png)", ""]
    if figures and figures in runs:
        src = Path(runs[figures])
        shown = sorted(p.name for p in src.glob("mad_*.png") if p.name not in ("mad_inputs.png",))
        md += [f"## Figures of step `{figures}` ({src})", ""]
        md += [f"![{name}]({src / name})" for name in shown]
        md.append("")
        written.update({name: str(src / name) for name in shown})
    text = "\n".join(md)
    atomic_write_text(out / "mad_report.md", text)
    atomic_write_text(out / "mad_report.json", json.dumps({**tables, "findings": findings, "figures": written},
                                                          indent=2, default=str) + "\n")
    print(text)
    return text
