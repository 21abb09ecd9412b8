"""Gathers the seed-paper evaluation's per-sample records and writes Tables 1–3, Fig. 5 and the sample grids.

Fed by :class:`lightning_modules.upscaling_evaluation.UpscalingEvaluationModule` through ``Trainer.predict``. Each
rank keeps its records (images only for the few samples the module kept); at the end of the predict epoch they are
gathered, rank 0 computes the tables (:mod:`lrface.metrics.reid`) and writes, atomically, in the run directory:

- ``seed000.md`` / ``seed000.json``: Table 1 (mean ± SD angles and Opt 1 / Opt 2 separation), Table 2 (race
  re-identification), Table 3 (attribute re-identification), each beside the paper's numbers, the checked findings
  and the run's facts (α_thr per F, judges' accuracy on the originals, counts, search statistics);
- ``angle_histograms.png`` (Fig. 5), ``samples_lookalike.png`` (I_GT, I_LR, L_SR, Lookalike-Baseline,
  Lookalike-Ours), ``samples_race.png`` and ``samples_attributes.png`` (I_GT, I_LR, then the four strategies);
- ``seed000_samples.jsonl``: every record without images (one per line), for re-analysis.

It prints the tables, logs them (and the images) to W&B when a W&B logger is attached, and exposes the headline
numbers as ``.results`` and ``seed000/<key>`` callback metrics (the runner's ``results.json``).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from lrface.io import atomic_write_text

LOOKALIKE_COLUMNS = ("I_GT", "I_LR", "L_SR", "Lookalike-Baseline", "Lookalike-Ours")
RACE_COLUMNS = ("I_GT", "I_LR", "L_SR", "F_baseline + L_sim(I_LR)", "F_ours + L_sim(I_LR)", "F_ours + L_race(r)")
ATTRIBUTE_COLUMNS = ("I_GT", "I_LR", "L_SR", "F_baseline + L_sim(I_LR)", "F_ours + L_sim(I_LR)", "F_ours + L_att(a)")


def _dist_ready(trainer: pl.Trainer) -> bool:
    return trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def collect(records: list[Mapping[str, Any]], attributes: tuple[str, ...]) -> dict[str, Any]:
    """The inputs of :mod:`lrface.metrics.reid` from per-sample records (each uid counted once).

    Returns:
        ``angles`` ({extractor: {Table 1 set: array}}), ``race`` ({strategy: (predicted, true)}), ``attributes``
        ({strategy: (N×K predicted, N×K true)}), ``search`` ({set: {strategy: mean downscale loss, converged rate}})
        and ``counts``.
    """
    unique: dict[int, Mapping[str, Any]] = {}
    for r in records:
        unique.setdefault(int(r["uid"]), r)
    rows = [unique[u] for u in sorted(unique)]
    angles: dict[str, dict[str, list[float]]] = {"F_baseline": {}, "F_ours": {}}
    race: dict[str, tuple[list[int], list[int]]] = {}
    attrs: dict[str, tuple[list[list[int]], list[list[int]]]] = {}
    search: dict[str, dict[str, list[tuple[float, bool]]]] = {}
    counts = {"pairs": 0, "celeba": 0, "fairface": 0, "duplicates": len(records) - len(rows)}
    for r in rows:
        counts[r["set"]] += 1
        if r["set"] == "pairs":
            name = "CelebA-Same" if r["issame"] else "CelebA-Diff"
            for ext, a in r["angles"].items():
                angles[ext].setdefault(name, []).append(float(a))
            continue
        for strategy, st in (r.get("search") or {}).items():
            search.setdefault(r["set"], {}).setdefault(strategy, []).append(
                (float(st["downscale_loss"]), bool(st["converged"])))
        if r["set"] == "celeba":
            for name, per in r["angles"].items():
                for ext, a in per.items():
                    angles[ext].setdefault(name, []).append(float(a))
            for strategy, pred in (r.get("attributes_pred") or {}).items():
                p, t = attrs.setdefault(strategy, ([], []))
                p.append(list(pred))
                t.append(list(r["attributes"]))
        elif r["set"] == "fairface":
            for strategy, pred in (r.get("race_pred") or {}).items():
                p, t = race.setdefault(strategy, ([], []))
                p.append(int(pred))
                t.append(int(r["race"]))
    return {
        "angles": {e: {k: np.asarray(v, dtype=np.float64) for k, v in sets.items()} for e, sets in angles.items()},
        "race": {k: (np.asarray(p), np.asarray(t)) for k, (p, t) in race.items()},
        "attributes": {k: (np.asarray(p).reshape(-1, len(attributes)), np.asarray(t).reshape(-1, len(attributes)))
                       for k, (p, t) in attrs.items()},
        "search": {s: {k: {"mean_downscale_loss": float(np.mean([d for d, _ in v])),
                           "converged_rate": float(np.mean([c for _, c in v])), "n": len(v)}
                       for k, v in per.items()} for s, per in search.items()},
        "counts": counts,
    }


class UpscalingReport(pl.Callback):
    """Writes the seed paper's tables, Fig. 5 and sample grids after ``Trainer.predict`` (see the module docstring).

    Args:
        out_dir: output folder; default the run directory (``trainer.default_root_dir``).
        grid_rows: samples per grid.
        grid_scale: integer magnification of the grid cells (64 px faces are small on a screen).
    """

    def __init__(self, out_dir: str | None = None, grid_rows: int = 8, grid_scale: int = 2):
        self.out_dir, self.grid_rows, self.grid_scale = out_dir, int(grid_rows), int(grid_scale)
        self.records: list[dict] = []
        self.images: dict[str, list[dict]] = {}
        self.results: dict[str, dict[str, float]] = {}
        self.report: dict[str, Any] = {}

    def directory(self, trainer: pl.Trainer) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else Path(trainer.default_root_dir)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.records, self.images, self.results, self.report = [], {}, {}, {}

    def on_predict_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        for rec in outputs or []:
            rec = dict(rec)
            images = rec.pop("images", None)
            if images is not None and trainer.is_global_zero:
                self.images.setdefault(rec["set"], []).append(images)
            self.records.append(rec)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records = self.records
        if _dist_ready(trainer):
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, records)
            records = [r for part in parts for r in (part or [])]
        if trainer.is_global_zero:
            self._write(trainer, pl_module, records)
        # every rank exposes the same headline numbers (rank 0's are broadcast)
        self.results = trainer.strategy.broadcast(self.results, src=0)
        for group, values in self.results.items():
            for key, value in values.items():
                trainer.callback_metrics[f"{group}/{key}"] = torch.tensor(float(value))
        trainer.strategy.barrier("upscaling_report")

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, records: list[dict]) -> None:
        from lrface.judge_scores import attach_judge_columns, judge_headline
        from lrface.metrics.reid import attribute_reid, findings, race_reid, table1
        from lrface.upscaling_report import plot_angle_histograms, print_tables, sample_grid, write_report

        attributes = tuple(getattr(pl_module, "attributes", ()))
        data = collect(records, attributes)
        t1 = table1(data["angles"])
        t2 = {k: race_reid(p, t) for k, (p, t) in data["race"].items()}
        t3 = {k: attribute_reid(p, t, attributes) for k, (p, t) in data["attributes"].items()}
        originals = {"race_judge_accuracy_on_originals": t2.pop("originals", {}).get("accuracy"),
                     "attribute_judge_accuracy_on_originals": t3.pop("originals", {}).get("accuracy")}
        judged = attach_judge_columns(t1, t2, t3, records)  # issue #12: dlib / gender columns beside F's angles
        checked = findings(t1, t2, t3)
        meta = {
            **{k: v for k, v in originals.items() if v is not None},
            **dict(getattr(pl_module, "judge_info", {}) or {}),
            "counts": data["counts"],
            "alpha_thr of each F's L_sim (Alg. 1, CelebA-train)": {
                k: f"{v['alpha_thr']:.1f}° (train accuracy {v['train_accuracy']:.1%})"
                for k, v in getattr(pl_module, "alpha_info", {}).items()} or dict(getattr(pl_module, "alpha_thr", {})),
            "thumbnail_size": getattr(pl_module, "thumbnail_size", None),
            "search": {s: {k: f"downscale loss {v['mean_downscale_loss']:.4f}, converged {v['converged_rate']:.0%}"
                           for k, v in per.items()} for s, per in data["search"].items()},
        }
        out = self.directory(trainer)
        self.report = write_report(out, t1, t2, t3, meta=meta, findings=checked)
        text = "".join(json.dumps({k: v for k, v in r.items()}, sort_keys=True) + "\n" for r in records)
        atomic_write_text(out / "seed000_samples.jsonl", text)
        thresholds = {e: (t1.get("separation", {}).get(e) or {}).get("opt1", {}).get("alpha_thr")
                      for e in ("F_baseline", "F_ours")}
        pngs = {"angle_histograms": out / "angle_histograms.png"}
        plot_angle_histograms(data["angles"], pngs["angle_histograms"],
                              thresholds={k: v for k, v in thresholds.items() if v is not None})
        for name, set_name, columns in (("samples_lookalike", "celeba", LOOKALIKE_COLUMNS),
                                        ("samples_attributes", "celeba", ATTRIBUTE_COLUMNS),
                                        ("samples_race", "fairface", RACE_COLUMNS)):
            kept = self.images.get(set_name, [])[: self.grid_rows]
            if kept and all(c in kept[0] for c in columns):
                pngs[name] = out / f"{name}.png"
                sample_grid([[row.get(c) for c in columns] for row in kept], pngs[name], columns=list(columns),
                            scale=self.grid_scale)
        print_tables(t1, t2, t3)
        headline = _headline(t1, t2, t3)
        headline.update(judge_headline(judged))
        for set_name, per in data["search"].items():
            for strategy, v in per.items():
                headline[f"{set_name}_{strategy}_downscale_loss"] = v["mean_downscale_loss"]
        self.results = {"seed000": {slug(k): v for k, v in headline.items()}}
        self._log_wandb(trainer, t1, t2, t3, pngs)
        from pytorch_lightning.loggers import WandbLogger

        if judged and isinstance(trainer.logger, WandbLogger):
            from lrface.judge_scores import judge_rows

            columns, rows = judge_rows(judged)
            trainer.logger.log_table("seed000/independent_judges", columns=columns, data=rows)

    @staticmethod
    def _log_wandb(trainer: pl.Trainer, t1: dict, t2: dict, t3: dict, pngs: Mapping[str, Path]) -> None:
        from pytorch_lightning.loggers import WandbLogger

        logger = trainer.logger
        if not isinstance(logger, WandbLogger):
            return
        rows = [[s, e, v["mean"], v["std"], v["n"]] for s, per in t1.get("angles", {}).items()
                for e, v in per.items() if v]
        logger.log_table("seed000/table1_angles", columns=["set", "extractor", "mean", "std", "n"], data=rows)
        logger.log_table("seed000/table2_race", columns=["strategy", "accuracy", "n"],
                         data=[[k, v["accuracy"], v["n"]] for k, v in t2.items()])
        logger.log_table("seed000/table3_attributes", columns=["strategy", "accuracy", "n"],
                         data=[[k, v["accuracy"], v["n"]] for k, v in t3.items()])
        for key, path in pngs.items():
            if path.exists():
                logger.log_image(f"seed000/{key}", [str(path)])


def slug(key: str) -> str:
    """A metric name from a table label: ``race_F_ours + L_race(r)`` → ``race_F_ours_L_race_r``."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_+.-]", "_", key).replace("+", "_")).strip("_")


def _headline(t1: Mapping[str, Any], t2: Mapping[str, Any], t3: Mapping[str, Any]) -> dict[str, float]:
    """Flat numbers for results.json: mean angles, Opt 1 / Opt 2 accuracies, re-ID accuracies per strategy."""
    out: dict[str, float] = {}
    slug = {"F_baseline": "fb", "F_ours": "fo"}
    for set_name, per in t1.get("angles", {}).items():
        for ext, v in per.items():
            if v:
                out[f"angle_{slug[ext]}_{set_name}"] = float(v["mean"])
    for ext, opts in t1.get("separation", {}).items():
        for opt, v in (opts or {}).items():
            for key in ("alpha_thr", "CelebA-Same+Diff", "Lookalike-Baseline"):
                if v and v.get(key) is not None:
                    out[f"sep_{slug[ext]}_{opt}_{key}"] = float(v[key])
    for prefix, table in (("race", t2), ("attr", t3)):
        for strategy, v in table.items():
            if v.get("accuracy") is not None:
                out[f"{prefix}_{strategy}"] = float(v["accuracy"])
    return out
