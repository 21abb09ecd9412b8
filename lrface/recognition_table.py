"""One Markdown table comparing face-recognition models, from the ``evaluation.json`` of their run directories.

``callbacks.evaluation.FaceEvaluation`` writes ``evaluation.json`` = ``{set: {metric: value}}`` when a fit ends:
``.bin`` sets (``lfw``, and ``lfw@14px`` with both images shrunk to 14 px and upsampled) with the 10-fold
``accuracy``; ``qmul_survface`` with ``verification/auc``, ``verification/tar@far=…``,
``identification/tpir20@fpir=…``, ``identification/auc``, ``identification/rank1`` / ``rank5``. URL models add the same
metrics under the confidence-weighted score as ``url/<metric>`` and their mean confidence ``confidence/mean_s``.

:func:`comparison_table` puts one model per row and, by default (:func:`default_columns`), the accuracy of every
``.bin`` set at full and degraded resolution, then the QMUL-SurvFace 1:1 AUC and TAR@FAR = 0.1, 1:N TPIR20@FPIR = 0.1
and AUC, and closed-set rank-1 / rank-5. A URL model's cell reads ``cosine / confidence-weighted`` where both exist;
missing cells are ``–``. :func:`write_comparison` is the pipeline hook (experiment key ``pipeline_report``): it reads
every step's run directory and writes ``comparison.md`` / ``comparison.json`` into the pipeline's.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lrface.io import atomic_write_text

__all__ = ["Column", "collect_evaluations", "comparison_table", "confidence_table", "default_columns",
           "write_comparison"]

log = logging.getLogger("lrface")

EVALUATION_FILE = "evaluation.json"
SURVFACE = "qmul_survface"
URL_PREFIX = "url/"
DASH = "–"

Results = Mapping[str, Mapping[str, Mapping[str, float]]]  # {model: {set: {metric: value}}}


@dataclass(frozen=True)
class Column:
    """A table column: ``metric`` of evaluation set ``set`` (shown in %), headed ``header``."""

    header: str
    set: str
    metric: str = "accuracy"


SURVFACE_COLUMNS = (
    Column("SF 1:1 AUC", SURVFACE, "verification/auc"),
    Column("SF TAR@FAR=0.1", SURVFACE, "verification/tar@far=0.1"),
    Column("SF TPIR20@FPIR=0.1", SURVFACE, "identification/tpir20@fpir=0.1"),
    Column("SF 1:N AUC", SURVFACE, "identification/auc"),
    Column("SF rank-1", SURVFACE, "identification/rank1"),
    Column("SF rank-5", SURVFACE, "identification/rank5"),
)

NOTES = (
    "All numbers in %. `a / b`: cosine similarity / URL's confidence-weighted score (URL models). `.bin` sets: "
    "insightface's 10-fold accuracy on flip-sum embeddings; `set@Npx`: both images of every pair shrunk to N px and "
    "upsampled back. SF = QMUL-SurvFace: 1:1 ROC AUC and TAR@FAR = 0.1; 1:N open-set TPIR at rank 20 for FPIR = 0.1 "
    "and its AUC; closed-set CMC rank-1 / rank-5 of the mated probes against the gallery. `–`: not evaluated."
)


def _evaluation_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix == ".json" else p / EVALUATION_FILE


def collect_evaluations(runs: Mapping[str, str | os.PathLike], missing: str = "skip") -> dict[str, dict]:
    """Reads each run's ``evaluation.json``.

    Args:
        runs: ``{model name: run directory (or an evaluation.json path)}``, in table order.
        missing: ``"skip"`` (log and leave the run out, e.g. a pipeline step that trains a judge) or ``"error"``.

    Returns:
        ``{model name: {set: {metric: value}}}`` for the runs that have one.

    Raises:
        FileNotFoundError: ``missing="error"`` and a run has no evaluation.
        ValueError: a file that is not an evaluation (names the file and what was expected).
    """
    if missing not in ("skip", "error"):
        raise ValueError(f"missing must be 'skip' or 'error'; got {missing!r}")
    out: dict[str, dict] = {}
    for name, path in runs.items():
        file = _evaluation_file(path)
        if not file.is_file():
            if missing == "error":
                raise FileNotFoundError(f"{file}: no {EVALUATION_FILE} for run {name!r} (written by "
                                        "callbacks.evaluation.FaceEvaluation at the end of training)")
            log.info("comparison: %s has no %s, left out", name, EVALUATION_FILE)
            continue
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError(f"{file}: expected {{set: {{metric: value}}}} as FaceEvaluation writes it")
        for set_name, metrics in data.items():
            for metric, value in metrics.items():
                if not _is_number(value):
                    raise ValueError(f"{file}: {set_name}/{metric} is {value!r}, expected a number")
        out[str(name)] = data
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _degraded_size(set_name: str) -> int | None:
    m = re.fullmatch(r".+@(\d+)px", set_name)
    return int(m.group(1)) if m else None


def default_columns(results: Results) -> list[Column]:
    """Every ``.bin`` set's accuracy (full resolution, then its degraded sizes, largest first), in order of first
    appearance, then the QMUL-SurvFace columns if any model has that evaluation."""
    bases: list[str] = []
    sizes: dict[str, set[int]] = {}
    for evaluation in results.values():
        for set_name, metrics in evaluation.items():
            if set_name == SURVFACE or "accuracy" not in metrics:
                continue
            base = set_name.split("@")[0] if _degraded_size(set_name) else set_name
            if base not in bases:
                bases.append(base)
            size = _degraded_size(set_name)
            if size is not None:
                sizes.setdefault(base, set()).add(size)
    columns = []
    for base in bases:
        columns.append(Column(base, base))
        columns += [Column(f"{base}@{s}px", f"{base}@{s}px") for s in sorted(sizes.get(base, ()), reverse=True)]
    if any(SURVFACE in evaluation for evaluation in results.values()):
        columns += list(SURVFACE_COLUMNS)
    return columns


def _as_column(spec: Column | str | Sequence[str]) -> Column:
    if isinstance(spec, Column):
        return spec
    if isinstance(spec, str):
        set_name, _, metric = spec.partition(":")
        return Column(spec, set_name, metric or "accuracy")
    if isinstance(spec, Mapping):
        return Column(**spec)
    return Column(*spec)


def _cell(evaluation: Mapping[str, Mapping[str, float]], column: Column) -> tuple[float | None, float | None]:
    metrics = evaluation.get(column.set) or {}
    value, url = metrics.get(column.metric), metrics.get(URL_PREFIX + column.metric)
    return (None if value is None else float(value)), (None if url is None else float(url))


def _fmt(value: float | None, url: float | None) -> str:
    if value is None and url is None:
        return DASH
    pct = lambda v: DASH if v is None else f"{100.0 * v:.2f}"
    return pct(value) if url is None else f"{pct(value)} / {pct(url)}"


def comparison_table(results: Results, columns: Sequence[Column | str | Sequence[str]] | None = None) -> str:
    """The Markdown comparison table, one row per model.

    Args:
        results: ``{model: {set: {metric: value}}}`` (:func:`collect_evaluations`).
        columns: :class:`Column` objects, ``(header, set, metric)`` tuples, or strings ``"set"`` (its accuracy) /
            ``"set:metric"``; default :func:`default_columns`.

    Returns:
        The table (header, alignment row, one row per model), newline-terminated; values in %, ``cosine / URL``
        where a model has the confidence-weighted score, ``–`` where a model lacks the metric.
    """
    cols = [_as_column(c) for c in (default_columns(results) if columns is None else columns)]
    lines = ["| model | " + " | ".join(c.header for c in cols) + " |",
             "|---|" + "".join("---:|" for _ in cols)]
    for model, evaluation in results.items():
        lines.append(f"| {model} | " + " | ".join(_fmt(*_cell(evaluation, c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def confidence_table(results: Results) -> str:
    """URL models' mean confidence s per evaluation set (``confidence/mean_s``), with the change of mean log s
    against the same set at full resolution in brackets for degraded sets; "" when no model has confidences."""
    models = {m: e for m, e in results.items() if any("confidence/mean_s" in v for v in e.values())}
    if not models:
        return ""
    sets: list[str] = []
    for evaluation in models.values():
        sets += [s for s, v in evaluation.items() if "confidence/mean_s" in v and s not in sets]
    lines = ["| model | " + " | ".join(sets) + " |", "|---|" + "".join("---:|" for _ in sets)]
    for model, evaluation in models.items():
        cells = []
        for s in sets:
            v = evaluation.get(s) or {}
            if "confidence/mean_s" not in v:
                cells.append(DASH)
                continue
            cell = f"{v['confidence/mean_s']:.3g}"
            full = evaluation.get(s.split("@")[0]) if _degraded_size(s) else None
            if full and "confidence/mean_log_s" in full and "confidence/mean_log_s" in v:
                cell += f" ({v['confidence/mean_log_s'] - full['confidence/mean_log_s']:+.2f})"
            cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(runs: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike,
                     columns: Sequence[Column | str | Sequence[str]] | None = None,
                     title: str = "Face recognition comparison") -> str:
    """Pipeline hook: the comparison of ``runs`` written to ``out_dir/comparison.md`` and ``comparison.json``
    (atomically), and printed.

    Args:
        runs: ``{model (step) name: run directory}``; runs without ``evaluation.json`` are left out.
        out_dir: where to write (the pipeline's run directory).
        columns: as :func:`comparison_table`.
        title: Markdown title.

    Returns:
        The Markdown written.
    """
    results = collect_evaluations(runs)
    out = Path(out_dir)
    md = f"# {title}\n\n"
    if results:
        cols = [_as_column(c) for c in (default_columns(results) if columns is None else columns)]
        md += comparison_table(results, cols) + f"\n{NOTES}\n"
        conf = confidence_table(results)
        if conf:
            md += ("\n## URL: mean confidence s by evaluation set\n\nMean over images and sub-embeddings; in brackets "
                   "the change of mean log s against the same set at full resolution (< 0: less confident on the "
                   "degraded pairs).\n\n" + conf)
    else:
        cols = []
        md += f"No run has an {EVALUATION_FILE} (runs: {', '.join(runs) or 'none'}).\n"
    table: dict[str, dict[str, Any]] = {
        model: {c.header: dict(zip(("cosine", "url"), _cell(e, c))) for c in cols} for model, e in results.items()}
    atomic_write_text(out / "comparison.md", md)
    atomic_write_text(out / "comparison.json", json.dumps(
        {"runs": {k: str(v) for k, v in runs.items()}, "columns": [asdict(c) for c in cols], "table": table,
         "evaluations": results}, indent=2) + "\n")
    print("\n" + md, flush=True)
    return md
