"""The RAN pipeline report (seed 002) and the translation gate's Fig. 3 trace.

:func:`write_ran_report` is the ``pipeline_report`` hook of ``ran_synthetic`` / ``ran_survface``. Every recognition
step ends with ``callbacks.ran_evaluation.RANEvaluation``, whose ``evaluation.json`` holds ``average@r1&r2`` (the
``.bin`` sets' mean accuracy with the first face at r1 px, the second at r2), ``qmul_survface@resize`` (1:1 and 1:N)
and ``tinyface_covariate`` (the TinyFace-style 1:1 covariate protocol, supp. §3). It writes ``ran_report.md`` /
``.json`` with:

(a) verification per resolution pair, one row per model (HR-only, LR model, MR-GAN faces without the gate, RAN);
(b) QMUL-SurvFace 1:1 (TAR@FAR, AUC) and 1:N (TPIR20@FPIR, AUC);
(c) the covariate protocol's TAR at FAR 1e-7 … 1e-1 (supp. Table 1's columns; – where the protocol has too few
    negatives to resolve a FAR);
(d) MR-GAN's own numbers: the Fréchet distance to real LR faces in the identity network's feature space, of MR-GAN's
    faces and of plain down-sampling, and the identity cosine of each to the HR face;
(e) the translation gate's W over training (Fig. 3a): first, peak and last traced values.

It reads files only (no Lightning, no datasets).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lrface.io import atomic_write_bytes, atomic_write_text
from lrface.metrics.multi_resolution import pair_key
from lrface.recognition_table import collect_evaluations

__all__ = ["COVARIATE_FARS", "gate_trace_figure", "ran_tables", "write_gate_trace", "write_ran_report"]

COVARIATE_FARS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
DEFAULT_PAIRS = ((112, 112), (112, 16), (112, 24), (16, 16), (24, 24))
SURVFACE = "qmul_survface@resize"
COVARIATE = "tinyface_covariate"
DASH = "–"
SURVFACE_COLUMNS = (("1:1 AUC", "verification/auc"), ("TAR@FAR=0.1", "verification/tar@far=0.1"),
                    ("TAR@FAR=0.01", "verification/tar@far=0.01"), ("1:N AUC", "identification/auc"),
                    ("TPIR20@0.3", "identification/tpir20@fpir=0.3"), ("TPIR20@0.1", "identification/tpir20@fpir=0.1"))
MRGAN_METRICS = (("FD to real LR (MR-GAN)", "val/fd_identity"), ("FD to real LR (down-sampling)",
                 "val/fd_identity_down"), ("identity cos (MR-GAN)", "val/identity_cos"),
                 ("identity cos (down-sampling)", "val/identity_cos_down"))
TRACE_FILE, TRACE_FIGURE = "translation_gate.jsonl", "translation_gate.png"


def _pct(value: Any) -> str:
    return DASH if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{100 * value:.2f}"


def _num(value: Any) -> str:
    return DASH if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _far_key(far: float) -> str:
    return f"tar@far={far:g}"


def ran_tables(results: Mapping[str, Mapping[str, Mapping[str, float]]],
               pairs: Sequence[Sequence[int]] = DEFAULT_PAIRS) -> dict[str, dict[str, dict[str, float]]]:
    """{table: {model: {column: value}}} for tables ``verification``, ``survface``, ``covariate`` (fractions)."""
    out: dict[str, dict[str, dict[str, float]]] = {"verification": {}, "survface": {}, "covariate": {}}
    for model, sets in results.items():
        out["verification"][model] = {pair_key(r1, r2): sets.get(f"average@{pair_key(r1, r2)}", {}).get("accuracy",
                                                                                                      math.nan)
                                      for r1, r2 in pairs}
        out["survface"][model] = {header: sets.get(SURVFACE, {}).get(key, math.nan) for header, key in SURVFACE_COLUMNS}
        cov = sets.get(COVARIATE, {})
        out["covariate"][model] = {**{_far_key(f): cov.get(_far_key(f), math.nan) for f in COVARIATE_FARS},
                                   "auc": cov.get("auc", math.nan), "n_lr_faces": cov.get("n_lr_faces", math.nan),
                                   "n_positives": cov.get("n_positives", math.nan),
                                   "n_negatives": cov.get("n_negatives", math.nan)}
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None


def write_ran_report(runs: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike,
                     models: Mapping[str, str] | None = None, mrgan: str | None = "mrgan",
                     adaption: str | None = "ran", pairs: Sequence[Sequence[int]] = DEFAULT_PAIRS) -> str:
    """Pipeline hook: ``ran_report.md`` / ``.json`` in ``out_dir``; returns the Markdown (also printed).

    Args:
        runs: {step: run directory} (the pipeline's).
        out_dir: the pipeline's run directory.
        models: {row label: step} of the recognition models, in table order (None: every step with an
            ``evaluation.json``, labelled by step).
        mrgan: the MR-GAN step (its ``results.json`` metrics), or None.
        adaption: the feature adaption step (its ``translation_gate.jsonl``), or None.
        pairs: resolution pairs of table (a).
    """
    out = Path(out_dir)
    labelled = {label: runs[step] for label, step in (models or {s: s for s in runs}).items() if step in runs}
    results = collect_evaluations(labelled)
    tables = ran_tables(results, pairs)
    md = ["# RAN (seed 002): resolution adaption on this run's data", ""]
    md += ["## (a) Verification on the .bin sets, mean accuracy (%) over the sets, first face at r1 px, second at r2",
           "", _table(["model", *(pair_key(r1, r2) for r1, r2 in pairs)],
                      [[m, *(_pct(v) for v in row.values())] for m, row in tables["verification"].items()])]
    md += ["## (b) QMUL-SurvFace (faces at native size, resized to 112), %", "",
           _table(["model", *(h for h, _ in SURVFACE_COLUMNS)],
                  [[m, *(_pct(v) for v in row.values())] for m, row in tables["survface"].items()])]
    cov_rows = []
    for m, row in tables["covariate"].items():
        counts = "/".join(DASH if not math.isfinite(row[k]) else str(int(row[k]))
                          for k in ("n_lr_faces", "n_positives", "n_negatives"))
        cov_rows.append([m, *(_pct(row[_far_key(f)]) for f in COVARIATE_FARS), _pct(row["auc"]), counts])
    md += ["## (c) TinyFace-style 1:1 covariate protocol (supp. §3 on a landmark-annotated set), TAR (%) at FAR", "",
           _table(["model", *(f"{f:g}" for f in COVARIATE_FARS), "AUC", "LR faces / pos / neg"], cov_rows),
           "A FAR below 1 / #negatives cannot be resolved (–). IJB-C's fixed negative list is not available: these "
           "pairs are built by `lrface.covariate_protocol`, so the numbers are not comparable with the paper's.", ""]
    report: dict[str, Any] = {"tables": tables}
    if mrgan and mrgan in runs:
        metrics = _read_json(Path(runs[mrgan]) / "results.json").get("metrics", {})
        report["mrgan"] = {key: metrics.get(key, math.nan) for _, key in MRGAN_METRICS}
        md += ["## (d) MR-GAN: LR faces against real LR faces (the identity network's feature space)", "",
               _table(["metric", "value"], [[label, _num(report["mrgan"][key])] for label, key in MRGAN_METRICS]),
               f"Sample grid (input | down-sampled | MR-GAN | attention): `{Path(runs[mrgan]) / 'samples.png'}`.", ""]
    if adaption and adaption in runs:
        trace_file = Path(runs[adaption]) / TRACE_FILE
        trace = [json.loads(line) for line in trace_file.read_text().splitlines() if line.strip()] \
            if trace_file.is_file() else []
        ws = [(t["step"], t["W"]) for t in trace if "W" in t]
        if ws:
            peak = max(ws, key=lambda sw: sw[1])
            report["gate_W"] = {"first": ws[0][1], "peak": peak[1], "peak_step": peak[0], "last": ws[-1][1]}
            md += ["## (e) The translation gate's W over training (Fig. 3a)", "",
                   _table(["first", "peak (step)", "last"],
                          [[_num(ws[0][1]), f"{_num(peak[1])} ({peak[0]})", _num(ws[-1][1])]]),
                   f"Trace and figure: `{trace_file}`, `{Path(runs[adaption]) / TRACE_FIGURE}`.", ""]
    text = "\n".join(md)
    atomic_write_text(out / "ran_report.md", text)
    atomic_write_text(out / "ran_report.json", json.dumps(report, indent=2, default=str) + "\n")
    print(text, flush=True)
    return text


def gate_trace_figure(trace: Sequence[Mapping[str, float]]) -> bytes:
    """Fig. 3 analogue as PNG bytes: (a) W, (b) translated vs LR-model accuracy under κ_LR, (c) L_feature."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    steps = [t["step"] for t in trace]
    panels = (("(a) W", (("W", "W", "tab:blue"),)),
              ("(b) LR accuracy", (("translate_acc", "translation gate", "tab:red"),
                                   ("lr_model_acc", "LR model", "tab:green"))),
              ("(c) L_feature", (("L_feature", "L_feature", "tab:purple"),)))
    for k, (title, series) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        drawn = 0
        for key, label, color in series:
            points = [(s, t[key]) for s, t in zip(steps, trace) if key in t]
            if points:
                ax.plot(*zip(*points), label=label, color=color, linewidth=1.2)
                drawn += 1
        ax.set_title(title)
        ax.set_xlabel("update")
        if drawn > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_gate_trace(trace: Sequence[Mapping[str, float]], run_dir: str | os.PathLike) -> None:
    """``translation_gate.jsonl`` and ``translation_gate.png`` into ``run_dir``, atomically."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / TRACE_FILE, "".join(json.dumps(dict(t)) + "\n" for t in trace))
    atomic_write_bytes(run_dir / TRACE_FIGURE, gate_trace_figure(trace))
