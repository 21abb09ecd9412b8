"""Rendering of the seed paper's evaluation: Tables 1–3 beside the published numbers (Markdown, rich, JSON), the
angle histograms of Fig. 5 and a grid of upscaled samples (cf. Fig. 2).

Seed paper (identity-preserving upscaling, ``seeds/000_*.txt``) §4.1–4.3 and Appendix B. The tables come from
:mod:`lrface.metrics.reid`; this module only formats and writes them. Every file is written atomically.
"""
from __future__ import annotations

import json
import math
import os
from io import BytesIO
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lrface.io import atomic_write_bytes, atomic_write_text
from lrface.judge_scores import JUDGE_COLUMNS
from lrface.labels import RACE_NAMES
from lrface.metrics.reid import (
    ATTRIBUTE_STRATEGIES, EXTRACTORS, PAPER, PAPER_ATTRIBUTES, SAME_SETS, SETS, STRATEGIES, findings as check_findings,
    lookup,
)

__all__ = ["plot_angle_histograms", "print_tables", "render_markdown", "sample_grid", "write_report"]

TITLE = "Seed 000 — Identity and Attribute Preserving Thumbnail Upscaling: evaluation"

#: Fig. 5's caption: PULSE-Pairs, Lookalike-Baseline and CelebA-Diff in green, yellow and red; the same-person sets
#: get blue and purple. A dark yellow, since pure yellow vanishes on white.
SET_COLOURS = {
    "CelebA-Same": "tab:blue",
    "CelebA-Diff": "tab:red",
    "PULSE-Pairs": "tab:green",
    "Lookalike-Baseline": "#e0a800",
    "Lookalike-Ours": "tab:purple",
}

_DASH = "–"
_MARK = {True: "✔", False: "✘", None: _DASH}
_OPTIONS = (("opt1", "Opt 1"), ("opt2", "Opt 2"))
_OPT_ROWS = ("alpha_thr", "CelebA-Same+Diff", "Lookalike-Baseline", "CelebA-Same", "CelebA-Diff")


# ---------------------------------------------------------------------------------------------------------------
# Table building: (title, headers, rows, notes) shared by Markdown and rich.

def _pct(x) -> str:
    return _DASH if x is None else f"{100 * float(x):.1f}%"


def _deg_stats(s) -> str:
    if not isinstance(s, Mapping) or s.get("mean") is None:
        return _DASH
    std = s.get("std")
    return f"{s['mean']:.1f}°" if std is None else f"{s['mean']:.1f}°±{std:.1f}"


def _acc(entry):
    if isinstance(entry, Mapping):
        return entry.get("accuracy"), entry.get("n")
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return entry, None
    return None, None


def _extras(table: Mapping | None, order: Sequence[str]) -> list[str]:
    return list(order) + [k for k in (table or {}) if k not in order]


_JUDGE_NOTE = ("Independent judges (not trained here), the reference being {ref}: dlib_dist = mean±SD distance of "
               "the dlib descriptors of reference and result, dlib_same = share below dlib's 0.6 (same person), "
               "gender_kept = share judged (Cydral gender network) of the reference's gender; unscored = faces a "
               "judge could not score (dlib / gender).")


def _judge_cells(summary: Mapping | None) -> list[str]:
    """The :data:`lrface.judge_scores.JUDGE_COLUMNS` cells of one row (``summary``: ``judge_scores.summarise``)."""
    if not isinstance(summary, Mapping):
        return [_DASH] * len(JUDGE_COLUMNS)
    mean, std = summary.get("dlib_dist"), summary.get("dlib_dist_std")
    dist = _DASH if mean is None else (f"{mean:.3f}" if std is None else f"{mean:.3f}±{std:.3f}")
    unscored = f"{summary.get('dlib_unscored', 0)} / {summary.get('gender_unscored', 0)} of {summary.get('n', 0)}"
    return [dist, _pct(summary.get("dlib_same")), _pct(summary.get("gender_kept")), unscored]


def _has_judges(table: Mapping | None, rows: Sequence[str]) -> bool:
    return any(isinstance(lookup(table, r, "judges"), Mapping) for r in rows)


def _table1_top(t1: Mapping | None):
    angles = lookup(t1, "angles") or {}
    sets = _extras(angles, SETS)
    headers = ["Set", "Same person"]
    for e in EXTRACTORS:
        headers += [f"{e} ours", f"{e} paper"]
    headers.append("n (" + " / ".join(EXTRACTORS) + ")")
    judges = lookup(t1, "judges") if isinstance(lookup(t1, "judges"), Mapping) else None
    if judges:
        sets += [s for s in judges if s not in sets]
        headers += list(JUDGE_COLUMNS)
    rows = []
    for s in sets:
        row = [s, "yes" if s in SAME_SETS else "no"]
        ns = []
        for e in EXTRACTORS:
            row += [_deg_stats(lookup(angles, s, e)), _deg_stats(lookup(PAPER, "table1", "angles", s, e))]
            n = lookup(angles, s, e, "n")
            ns.append(_DASH if n is None else str(n))
        rows.append(row + [" / ".join(ns)] + (_judge_cells(judges.get(s)) if judges else []))
    notes = [f"Mean°±SD of θ(F(i₁), F(i₂)); the paper uses {PAPER['n_pairs_per_set']:,} pairs per set."]
    if judges:
        notes.append(_JUDGE_NOTE.format(ref="i₁ (I_GT for the upscaled sets)"))
    return "Table 1 (top): pair angles, mean°±SD (§4.1)", headers, rows, notes


def _table1_bottom(t1: Mapping | None):
    sep = lookup(t1, "separation") or {}
    headers = ["Option", "Tested on"]
    for e in EXTRACTORS:
        headers += [f"{e} ours", f"{e} paper"]
    rows = []
    for key, label in _OPTIONS:
        for what in _OPT_ROWS:
            row = [label, "α_thr" if what == "alpha_thr" else what]
            for e in EXTRACTORS:
                v = lookup(sep, e, key, what)
                paper = lookup(PAPER, "table1", "separation", e, key, what)
                if what == "alpha_thr":
                    row += [_DASH if v is None else f"{v:.1f}°", _DASH]
                else:
                    row += [_pct(v), _pct(paper)]
            rows.append(row)
    notes = [
        "Opt 1: α_thr from CelebA-Same vs CelebA-Diff; Opt 2: CelebA-Same vs CelebA-Diff ∪ Lookalike-Baseline "
        "(brute-force search, pooled accuracy). θ < α_thr means the same person.",
        f"The paper gives no α_thr per option; Fig. 5 names a separator at θ_thr = {PAPER['fig5_theta_thr']:.0f}° for "
        "F_ours. §4.1's text quotes F_baseline's Opt-1 CelebA-Same+Diff as 96.5% (Table 1: 96.6%).",
    ]
    return "Table 1 (bottom): separation accuracy at the optimal α_thr (§4.1)", headers, rows, notes


def _table2(t2: Mapping | None):
    headers = ["Strategy", "ours", "paper", "n"]
    judged = _has_judges(t2, _extras(t2, STRATEGIES))
    headers += list(JUDGE_COLUMNS) if judged else []
    rows = []
    for s in _extras(t2, STRATEGIES):
        acc, n = _acc(lookup(t2, s))
        rows.append([s, _pct(acc), _pct(PAPER["table2"].get(s)), _DASH if n is None else str(n)]
                    + (_judge_cells(lookup(t2, s, "judges")) if judged else []))
    notes = [f"Share of generated images that the external race classifier assigns the source's race (paper: "
             f"{PAPER['n_race_images']:,} FairFace test images)."]
    if judged:
        notes.append(_JUDGE_NOTE.format(ref="I_GT"))
    return "Table 2: race re-identification accuracy (§4.2)", headers, rows, notes


def _table2_per_race(t2: Mapping | None):
    headers = ["Strategy", *RACE_NAMES]
    rows = []
    for s in _extras(t2, STRATEGIES):
        entry = lookup(t2, s)
        row = [s]
        for r in RACE_NAMES:
            acc, n = lookup(entry, "per_race", r), lookup(entry, "per_race_n", r)
            row.append(_pct(acc) + ("" if n is None else f" ({n})"))
        rows.append(row)
    return "Table 2 by true race: accuracy (images)", headers, rows, []


def _table2_predicted(t2: Mapping | None):
    headers = ["Strategy", *RACE_NAMES]
    rows = [[s] + [_pct(lookup(t2, s, "predicted_fraction", r)) for r in RACE_NAMES] for s in _extras(t2, STRATEGIES)]
    notes = ["Share of generated images classified as each race (StyleGAN's bias shows here)."]
    return "Table 2, predicted race distribution", headers, rows, notes


def _table3(t3: Mapping | None):
    attrs = list(PAPER_ATTRIBUTES)
    for s in t3 or {}:
        attrs += [a for a in (lookup(t3, s, "per_attribute") or {}) if a not in attrs]
    headers = ["Strategy", "mean ours", "paper", *attrs, "n"]
    judged = _has_judges(t3, _extras(t3, ATTRIBUTE_STRATEGIES))
    headers += list(JUDGE_COLUMNS) if judged else []
    rows = []
    for s in _extras(t3, ATTRIBUTE_STRATEGIES):
        acc, n = _acc(lookup(t3, s))
        row = [s, _pct(acc), _pct(PAPER["table3"].get(s))]
        row += [_pct(lookup(t3, s, "per_attribute", a)) for a in attrs]
        row.append(_DASH if n is None else str(n))
        rows.append(row + (_judge_cells(lookup(t3, s, "judges")) if judged else []))
    notes = ["Per attribute, the share of generated images whose attribute the external detector reads as the "
             "source's; the mean is over the attributes (paper: the five shown)."]
    if judged:
        notes.append(_JUDGE_NOTE.format(ref="I_GT"))
    return "Table 3: attribute re-identification accuracy (§4.3)", headers, rows, notes


def _tables(t1, t2, t3) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    return [_table1_top(t1), _table1_bottom(t1), _table2(t2), _table2_per_race(t2), _table2_predicted(t2),
            _table3(t3)]


# ---------------------------------------------------------------------------------------------------------------
# Markdown, rich, JSON.

def _md_cell(x: str) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _meta_value(key: str, value) -> str:
    if isinstance(value, float) and "accuracy" in key and 0.0 <= value <= 1.0:
        return _pct(value)
    if isinstance(value, Mapping):
        parts = []
        for k, v in value.items():
            pct = isinstance(v, float) and "accuracy" in key and 0.0 <= v <= 1.0
            parts.append(f"{k} {_pct(v) if pct else v}")
        return ", ".join(parts)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def render_markdown(t1: Mapping | None, t2: Mapping | None, t3: Mapping | None, meta: Mapping | None = None,
                    findings: Sequence[Mapping] | None = None, figures: Mapping[str, str] | None = None) -> str:
    """The seed paper's Tables 1–3, ours beside the paper's, as Markdown.

    Args:
        t1: :func:`lrface.metrics.reid.table1` output, or None if not measured.
        t2: ``{strategy: race_reid(...)}`` (Table 2), or None.
        t3: ``{strategy: attribute_reid(...)}`` (Table 3), or None.
        meta: printed as a header list (run paths, number of pairs, generator, thumbnail size, and the judges' own
            accuracy on the original images under ``race_judge_accuracy_on_originals`` /
            ``attribute_judge_accuracy_on_originals``, printed as percentages).
        findings: :func:`lrface.metrics.reid.findings` output; computed from the tables when None.
        figures: ``{caption: relative image path}`` embedded in a "Figures" section (e.g. Fig. 5's histograms).

    Returns:
        The Markdown text (ends with a newline).
    """
    if findings is None:
        findings = check_findings(t1, t2, t3)
    lines = [f"# {TITLE}", ""]
    if meta:
        lines += [f"- **{k}**: {_meta_value(str(k), v)}" for k, v in meta.items()] + [""]
    for title, headers, rows, notes in _tables(t1, t2, t3):
        lines += [f"## {title}", ""] + _md_table(headers, rows) + [""]
        if notes:
            lines += [f"_{n}_" if len(notes) == 1 else f"- _{n}_" for n in notes] + [""]
    if figures:
        lines += ["## Figures", ""]
        for caption, rel in figures.items():
            lines += [f"![{caption}]({rel})", "", f"_{caption}_", ""]
    lines += ["## Findings", ""]
    if not findings:
        lines.append("_No claims checked._")
    for f in findings:
        lines.append(f"- {_MARK.get(f.get('holds'), _DASH)} **{f.get('claim')}** ({f.get('source', '')}): "
                     f"{f.get('evidence', '')}")
    return "\n".join(lines).rstrip("\n") + "\n"


def print_tables(t1: Mapping | None, t2: Mapping | None, t3: Mapping | None, console=None) -> None:
    """Prints the same tables as :func:`render_markdown` to the terminal as ``rich`` tables.

    Args:
        t1, t2, t3: as for :func:`render_markdown`.
        console: a ``rich.console.Console``; when None, one on stdout (160 columns wide when stdout is not a
            terminal, where rich would assume 80 and squeeze the tables).
    """
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    for title, headers, rows, notes in _tables(t1, t2, t3):
        table = Table(title=title, caption="\n".join(notes) or None, caption_justify="left")
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray) or hasattr(x, "detach"):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (str, int, bool)):
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return str(x)


def write_report(directory: str | os.PathLike, t1: Mapping | None, t2: Mapping | None, t3: Mapping | None,
                 meta: Mapping | None = None, findings: Sequence[Mapping] | None = None,
                 figures: Mapping[str, str] | None = None) -> dict:
    """Writes ``seed000.md`` and ``seed000.json`` atomically into ``directory``.

    Args:
        directory: output folder (created if missing).
        t1, t2, t3, meta, figures: as for :func:`render_markdown`.
        findings: as for :func:`render_markdown`; computed from the tables when None.

    Returns:
        The JSON document: ``{"title", "meta", "table1", "table2", "table3", "findings", "paper"}`` with NaN and
        infinities as null, numpy / torch values as plain Python.
    """
    directory = Path(directory)
    if findings is None:
        findings = check_findings(t1, t2, t3)
    doc = _jsonable({"title": TITLE, "meta": dict(meta or {}), "table1": t1, "table2": t2, "table3": t3,
                     "findings": list(findings), "paper": PAPER})
    atomic_write_text(directory / "seed000.json", json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    atomic_write_text(directory / "seed000.md", render_markdown(t1, t2, t3, meta, findings, figures))
    return doc


# ---------------------------------------------------------------------------------------------------------------
# Fig. 5 and the sample grid.

def plot_angle_histograms(angles: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                          thresholds: Mapping[str, float] | None = None, bins: int = 36, dpi: int = 100) -> Path:
    """Fig. 5 of the seed paper: angle histograms per pair set, one panel per extractor.

    Each histogram is normalised to the fraction of its set's pairs per bin, so sets of different sizes compare;
    angles beyond 0–120° are counted in the edge bins.

    Args:
        angles: ``{extractor: {set name: P angles in degrees}}`` (the input of :func:`lrface.metrics.reid.table1`);
            panels F_baseline (a) then F_ours (b), then any other extractor; missing sets are left out.
        path: the PNG to write.
        thresholds: ``{extractor: α_thr in degrees}``, drawn as a dashed vertical line (e.g.
            :func:`lrface.metrics.reid.alpha_thresholds`).
        bins: bins over 0–120°.
        dpi: resolution of the PNG (the figure is 11×4.2 inches).

    Returns:
        ``path`` as a Path.
    """
    # A bare Figure on the Agg canvas: no pyplot global state, so no backend switch and nothing left open.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    extractors = list(EXTRACTORS) + [e for e in angles if e not in EXTRACTORS]
    fig = Figure(figsize=(5.5 * len(extractors), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(extractors), squeeze=False)[0]
    edges = np.linspace(0.0, 120.0, bins + 1)
    for i, (ax, e) in enumerate(zip(axes, extractors)):
        sets = angles.get(e) or {}
        drawn = 0
        for s in list(SETS) + [s for s in sets if s not in SETS]:
            a = sets.get(s)
            a = None if a is None else np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, float).ravel()
            if a is None or a.size == 0:
                continue
            a = np.clip(a[np.isfinite(a)], edges[0], edges[-1])
            if a.size == 0:
                continue
            colour = SET_COLOURS.get(s)
            w = np.full(a.size, 1.0 / a.size)
            ax.hist(a, bins=edges, weights=w, histtype="stepfilled", alpha=0.3, color=colour)
            ax.hist(a, bins=edges, weights=w, histtype="step", linewidth=1.5, color=colour,
                    label=f"{s} (n={a.size})")
            drawn += 1
        thr = (thresholds or {}).get(e)
        if thr is not None:
            ax.axvline(float(thr), color="black", linestyle="--", linewidth=1.2, label=f"α_thr = {float(thr):.1f}°")
        if not drawn:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("angle θ(F(i₁), F(i₂)) [°]")
        ax.set_ylabel("fraction of pairs")
        ax.set_title(f"({chr(ord('a') + i)}) {e}")
        if drawn or thr is not None:
            ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Angle histograms (seed paper Fig. 5)")
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    fig.clear()
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _to_hwc_uint8(img) -> np.ndarray:
    """3×H×W float in [0, 1] (torch or numpy), H×W×3 uint8, or H×W gray → H×W×3 uint8."""
    if hasattr(img, "detach"):
        t = img.detach().cpu()
        img = (t.float() if t.dtype.is_floating_point else t).numpy()
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"an image must be 3×H×W, H×W×3 or H×W; got shape {a.shape}")
    chw = a.shape[0] in (1, 3, 4) and (a.dtype != np.uint8 or a.shape[-1] not in (1, 3, 4))
    if chw:
        a = a.transpose(1, 2, 0)
    elif a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image must have 1, 3 or 4 channels; got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.round(np.clip(np.nan_to_num(a.astype(np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)
    a = a[..., :3]
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def _nearest(a: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = (np.arange(h) * a.shape[0]) // h
    xs = (np.arange(w) * a.shape[1]) // w
    return a[ys][:, xs]


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def sample_grid(rows: Sequence[Sequence[Any]], path: str | os.PathLike, columns: Sequence[str],
                scale: int | None = None, gap: int = 2) -> np.ndarray:
    """A labelled grid of samples (cf. the seed paper's Fig. 2), e.g. columns
    ``["I_GT", "I_LR", "L_SR", "F_baseline + L_sim", "F_ours + L_sim", "F_ours + L_race"]``.

    Every cell is the size of the largest image (tallest H, widest W); smaller images (thumbnails) are upscaled by
    nearest neighbour so their pixels stay visible. Layout: a white header band of column labels (PIL's default
    font, wrapped to the cell width), then the rows, ``gap`` white pixels between cells and between rows (none
    around the border or under the header).

    Args:
        rows: R lists of len(columns) images each: 3×H×W float in [0, 1] (torch or numpy), H×W×3 uint8, H×W gray,
            or None for an empty (white) cell.
        path: the PNG to write.
        columns: the column labels.
        scale: integer nearest-neighbour magnification of the common cell size (None = 1).
        gap: pixels between cells.

    Returns:
        The grid, (header + R·cell_h + (R−1)·gap) × (C·cell_w + (C−1)·gap) × 3 uint8.

    Raises:
        ValueError: no rows, a row of the wrong length, no image at all, or a malformed image.
    """
    from PIL import Image, ImageDraw, ImageFont

    columns = [str(c) for c in columns]
    if not rows or not columns:
        raise ValueError("sample_grid needs at least one row and one column")
    cells = []
    for r, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"row {r} has {len(row)} cells; expected {len(columns)} (one per column)")
        cells.append([None if img is None else _to_hwc_uint8(img) for img in row])
    present = [c for row in cells for c in row if c is not None]
    if not present:
        raise ValueError("sample_grid got no image (every cell is None)")
    factor = 1 if scale is None else int(scale)
    if factor < 1:
        raise ValueError(f"scale must be a positive integer; got {scale}")
    ch = max(c.shape[0] for c in present) * factor
    cw = max(c.shape[1] for c in present) * factor

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(probe, c, font, cw - 2) for c in columns]
    top, bottom = probe.textbbox((0, 0), "Ag_|", font=font)[1::2]
    line_h = bottom - top + 2
    header = 4 + line_h * max(len(w) for w in wrapped) + 2

    n_r, n_c = len(cells), len(columns)
    height, width = header + n_r * ch + (n_r - 1) * gap, n_c * cw + (n_c - 1) * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, lines in enumerate(wrapped):
        for k, line in enumerate(lines):
            x = j * (cw + gap) + max(0, (cw - draw.textlength(line, font=font)) / 2)
            draw.text((x, 4 + k * line_h - top), line, fill=(0, 0, 0), font=font)
    grid = np.asarray(canvas).copy()
    for i, row in enumerate(cells):
        y = header + i * (ch + gap)
        for j, img in enumerate(row):
            if img is not None:
                x = j * (cw + gap)
                grid[y:y + ch, x:x + cw] = _nearest(img, ch, cw)
    buf = BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return grid
