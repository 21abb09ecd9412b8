"""URL's supplementary figures: sub-embedding confidence histograms (Fig. 1) and uncertainty heat maps (Fig. 2–3).

Seed 001 (Shi et al., URL, supplementary §E–F): "the confidences of different sub-embeddings not only have different
distributions, but also vary in terms of which kind of images have high/low confidence" (Fig. 1, over training
samples); "distinguishable face images have low uncertainty on most sub-embeddings [...] For images with extremely
large variations, high uncertainty is observed on all the sub-embeddings" (Fig. 2–3, uncertainty = 1/s per
sub-embedding drawn as a small grid of cells next to each face).

Pure plotting and statistics: inputs are arrays (numpy or torch), outputs PNG / JSON files written atomically. The
figures are bare matplotlib ``Figure`` objects on the Agg canvas (no pyplot state, no backend switch) with a fixed size
in inches and no tight bounding box, so a PNG is exactly ``figure size × dpi`` pixels
(:func:`histogram_figure_size`, :func:`heatmap_figure_size`).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from lrface.io import atomic_write_bytes, atomic_write_text
from lrface.metrics.confidence_score import confidence_summary

__all__ = ["cell_grid_shape", "confidence_stats", "heatmap_figure_size", "histogram_figure_size",
           "plot_confidence_histograms", "plot_uncertainty_heatmaps", "write_confidence_stats"]

#: Inches of one histogram panel (Fig. 1) and of one face / heat-map panel (Fig. 2–3).
HIST_PANEL = (2.5, 2.0)
FACE_PANEL = 1.25
HEADER, COLORBAR = 0.5, 1.0  # inches: column titles above the heat-map grid, colour bar on its right


def _numpy(x, ndim: int, what: str) -> np.ndarray:
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        x = t.float().numpy() if t.dtype.is_floating_point else t.numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{what}: expected {ndim} dimensions, got shape {a.shape}")
    return a


def _check_confidences(s: np.ndarray, what: str) -> None:
    if s.size == 0:
        raise ValueError(f"{what}: no confidences")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"{what}: confidences must be finite and > 0 (s = exp(·))")


def _save(fig, path: str | os.PathLike, dpi: int) -> Path:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    fig.clear()
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def cell_grid_shape(k: int) -> tuple[int, int]:
    """Rows × columns of a face's uncertainty cells: a square for a square K (4×4 for the paper's 16), else 1×K."""
    side = math.isqrt(k)
    return (side, side) if side * side == k else (1, k)


def _panel_grid(k: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(k))
    return math.ceil(k / cols), cols


def histogram_figure_size(k: int) -> tuple[float, float]:
    """(width, height) in inches of :func:`plot_confidence_histograms` for K sub-embeddings."""
    rows, cols = _panel_grid(k)
    return HIST_PANEL[0] * cols, HIST_PANEL[1] * rows


def heatmap_figure_size(n_faces: int, n_levels: int) -> tuple[float, float]:
    """(width, height) in inches of :func:`plot_uncertainty_heatmaps`: a face and its cells per quality level."""
    return 2 * FACE_PANEL * n_levels + COLORBAR, FACE_PANEL * n_faces + HEADER


def plot_confidence_histograms(confidences, path: str | os.PathLike, bins: int = 30, dpi: int = 100,
                               title: str | None = None) -> Path:
    """Supplementary Fig. 1: the distribution of each sub-embedding's confidence s^(k) over N samples.

    K small multiples (a near-square grid: 4×4 for K = 16) on shared bins, so the panels compare; each panel gives
    its mean.

    Args:
        confidences: N×K confidences s > 0 (numpy or torch).
        path: the PNG to write (:func:`histogram_figure_size` × ``dpi`` pixels).
        bins: bins over [min s, max s] of all sub-embeddings.
        dpi: resolution.
        title: figure title (default: the sample count).

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = _numpy(confidences, 2, "confidences (N×K)")
    _check_confidences(s, "confidences")
    n, k = s.shape
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1e-9 * max(1.0, abs(hi)):  # constant s (an untrained branch): one visible bin around it
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    rows, cols = _panel_grid(k)
    fig = Figure(figsize=histogram_figure_size(k))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for i, ax in enumerate(axes.ravel()):
        if i >= k:
            ax.set_visible(False)
            continue
        ax.hist(s[:, i], bins=edges, color="tab:blue", alpha=0.8)
        ax.set_title(f"k={i + 1}  (mean {s[:, i].mean():.3g})", fontsize=8)
        ax.tick_params(labelsize=6)
        if i // cols == rows - 1 or i + cols >= k:
            ax.set_xlabel("confidence s", fontsize=7)
    fig.suptitle(title or f"Sub-embedding confidence over {n} training samples (URL supp. Fig. 1)", fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08 + 0.1 / rows, top=1 - 0.12 / rows - 0.05,
                        hspace=0.55, wspace=0.3)
    return _save(fig, path, dpi)


def _rgb(img) -> np.ndarray:
    a = _numpy(img, 3, "face image")
    if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.clip(a, 0.0, 1.0)


def plot_uncertainty_heatmaps(images, confidences, path: str | os.PathLike, levels: Sequence[str],
                              dpi: int = 100, log_colour: bool = True) -> Path:
    """Supplementary Fig. 2–3: per-sub-embedding uncertainty 1/s beside each face, at several input qualities.

    One row per face; per quality level two columns, the face as the network saw it and its K uncertainty cells
    (:func:`cell_grid_shape`), titled with the face's mean s. All cells share one colour scale (logarithmic by
    default, as s spans orders of magnitude), shown by the colour bar on the right; bright = uncertain.

    Args:
        images: F×Q×3×H×W images in [0, 1] (numpy or torch), or F×Q nested sequences of 3×H×W / H×W×3 images
            (e.g. each level at its own size).
        confidences: F×Q×K confidences s > 0.
        path: the PNG to write (:func:`heatmap_figure_size` × ``dpi`` pixels).
        levels: Q column titles (e.g. ``["112 px", "28 px", "14 px", "7 px"]``).
        dpi: resolution.
        log_colour: logarithmic colour scale of 1/s.

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    s = _numpy(confidences, 3, "confidences (F×Q×K)")
    _check_confidences(s, "confidences")
    n_faces, n_levels, k = s.shape
    if len(levels) != n_levels:
        raise ValueError(f"{len(levels)} level names for {n_levels} quality levels")
    if len(images) != n_faces or any(len(row) != n_levels for row in images):
        raise ValueError(f"images must be F×Q = {n_faces}×{n_levels} (one per face and quality level)")
    uncertainty = 1.0 / s
    vmin, vmax = float(uncertainty.min()), float(uncertainty.max())
    if vmax <= vmin * (1 + 1e-9):
        vmin, vmax = vmin / 1.05, vmax * 1.05
    norm = LogNorm(vmin=vmin, vmax=vmax) if log_colour else Normalize(vmin=vmin, vmax=vmax)
    grid = cell_grid_shape(k)

    width, height = heatmap_figure_size(n_faces, n_levels)
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # the axes grid covers everything but the header band and the colour bar's column
    top = 1 - HEADER / height
    gs = fig.add_gridspec(n_faces, 2 * n_levels, left=0.1 / width, right=1 - COLORBAR / width,
                          bottom=0.1 / height, top=top, wspace=0.08, hspace=0.3)
    mappable = None
    for f in range(n_faces):
        for q in range(n_levels):
            ax_img, ax_map = fig.add_subplot(gs[f, 2 * q]), fig.add_subplot(gs[f, 2 * q + 1])
            ax_img.imshow(_rgb(images[f][q]), interpolation="nearest")
            mappable = ax_map.imshow(uncertainty[f, q].reshape(grid), cmap="inferno", norm=norm,
                                     interpolation="nearest", aspect="auto")
            ax_map.set_title(f"s̄={s[f, q].mean():.3g}", fontsize=7, pad=2)
            for ax in (ax_img, ax_map):
                ax.set_xticks([])
                ax.set_yticks([])
            if f == 0:
                ax_img.set_title(str(levels[q]), fontsize=9, loc="left", pad=12)
    cax = fig.add_axes((1 - (COLORBAR - 0.2) / width, 0.1 / height, 0.15 / width, top - 0.1 / height))
    fig.colorbar(mappable, cax=cax).set_label("uncertainty 1/s", fontsize=8)
    cax.tick_params(which="both", labelsize=6)
    fig.suptitle("Sub-embedding uncertainty by input quality (URL supp. Fig. 2–3)", fontsize=9, y=1 - 0.08 / height)
    return _save(fig, path, dpi)


def confidence_stats(levels: Mapping[str, Any]) -> dict[str, Any]:
    """Mean confidence per input quality level.

    Args:
        levels: ``{level name: N×K confidences}`` in order, the first being the reference (full quality).

    Returns:
        ``{"levels": [names], "num_sub_embeddings": K, "per_level": {name: summary}}``, a summary being
        :func:`lrface.metrics.confidence_score.confidence_summary` plus ``log_s_change`` (mean log s minus the first
        level's: < 0 means the model is less confident on that quality).
    """
    if not levels:
        raise ValueError("confidence_stats needs at least one quality level")
    per_level: dict[str, dict[str, Any]] = {}
    ks = set()
    for name, conf in levels.items():
        s = _numpy(conf, 2, f"confidences of level {name!r} (N×K)")
        _check_confidences(s, f"level {name!r}")
        ks.add(s.shape[1])
        per_level[str(name)] = confidence_summary(s)
    if len(ks) != 1:
        raise ValueError(f"quality levels disagree on K: {sorted(ks)}")
    ref = next(iter(per_level.values()))["mean_log_s"]
    for summary in per_level.values():
        summary["log_s_change"] = summary["mean_log_s"] - ref
    return {"levels": list(per_level), "num_sub_embeddings": ks.pop(), "per_level": per_level}


def write_confidence_stats(path: str | os.PathLike, stats: Mapping[str, Any],
                           extra: Mapping[str, Any] | None = None) -> Path:
    """Writes :func:`confidence_stats` (plus ``extra`` keys) as JSON, atomically."""
    atomic_write_text(path, json.dumps({**stats, **(extra or {})}, indent=2) + "\n")
    return Path(path)
