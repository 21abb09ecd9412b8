"""Writes every PULSE result as it is found, and a summary of the whole prediction run.

Per sample (``lrface.upscale.write_result``, atomic): ``<run dir>/upscaled/<name>.png`` (the upscaled image),
``<name>.json`` (losses per term, angles, accepted / rejected, seed, ...) and ``<name>_lr.png`` (the thumbnail it
was searched for). Rejected and unconverged results are written too, flagged, never dropped.

At the end, the per-sample records of every rank are gathered (each rank writes only its own samples; Lightning's
predict sampler gives every index to exactly one rank) and rank 0 writes ``upscaled/summary.json``: the summary,
every sample's record (with the ``rank`` that wrote it) and ``duplicates``, the number of records of an index seen
before (0 unless a padding sampler repeated samples; each index is counted once). The summary is
exposed as ``.results = {"pulse": {...}}`` and as ``pulse/<key>`` scalars in ``trainer.callback_metrics``, which is
how it reaches the runner's ``results.json`` (also from ``ddp_spawn`` workers, which send only those back).

The independent judges' scores (issue #12) are made by the module on each rank for its own samples (records carry
``judges``) and summarised here over the gathered records with :func:`lrface.judge_scores.summarise`, as the
tables and ``lrface upscale`` do.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from lrface.io import atomic_write_bytes, atomic_write_text

# Per-sample fields kept for the summary (the images are not gathered across ranks).
_RECORD_KEYS = ("index", "name", "seed", "accepted", "converged", "downscale_loss", "steps", "seconds", "measures",
                "angle_to_reference", "angle_to_gt", "race", "race_prob", "predicted_race", "attributes",
                "attribute_probs", "detected", "judges")


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(values) / len(values) if values else None


def summarize(records: list[dict]) -> dict[str, float]:
    """The run's summary from per-sample records (one per sample): rates and means of the measured quantities.

    Keys (those that apply): ``samples``, ``accepted_rate`` (no active constraint above the rejection threshold),
    ``converged_rate`` (within eps), ``mean_downscale_loss``, ``mean_steps``, ``mean_seconds``,
    ``mean_angle_to_gt_deg``, ``mean_angle_to_reference_deg``, ``mean_L_sim`` / ``mean_L_race`` / ``mean_L_att``
    (measured on the written images), ``mean_race_prob`` (of the target race), ``race_rate`` (predicted race = the
    target), ``mean_attribute_error`` (|σ(C_A) − target| over the targeted attributes), ``detected_rate``; of the
    samples the independent judges scored against their ground truth (``judges``): ``judged_samples``,
    ``mean_dlib_dist``, ``dlib_same_rate`` (dlib distance < 0.6), ``gender_kept_rate`` (judged gender of the result =
    the ground truth's) and ``dlib_unscored`` / ``gender_unscored`` (judged samples a judge could not score).
    """
    n = len(records)
    out: dict[str, float] = {"samples": float(n)}
    if not n:
        return out
    out["accepted_rate"] = sum(bool(r["accepted"]) for r in records) / n
    out["converged_rate"] = sum(bool(r["converged"]) for r in records) / n
    means = {"downscale_loss": "downscale_loss", "steps": "steps", "seconds": "seconds",
             "angle_to_gt": "angle_to_gt_deg", "angle_to_reference": "angle_to_reference_deg", "race_prob": "race_prob"}
    for key, name in means.items():
        m = _mean([r.get(key) for r in records])
        if m is not None:
            out[f"mean_{name}"] = m
    for term in ("L_sim", "L_race", "L_att"):
        m = _mean([(r.get("measures") or {}).get(term) for r in records])
        if m is not None:
            out[f"mean_{term}"] = m
    races = [r for r in records if r.get("race") is not None and r.get("predicted_race") is not None]
    if races:
        out["race_rate"] = sum(r["predicted_race"] == r["race"] for r in races) / len(races)
    errors = [abs(p - r["attributes"][k]) for r in records if r.get("attribute_probs")
              for k, p in r["attribute_probs"].items()]
    if errors:
        out["mean_attribute_error"] = sum(errors) / len(errors)
    detected = [r["detected"] for r in records if r.get("detected") is not None]
    if detected:
        out["detected_rate"] = sum(bool(d) for d in detected) / len(detected)
    judged = [r["judges"]["I_GT"] for r in records if r.get("judges")]
    if judged:
        from lrface.judge_scores import summarise

        j = summarise(judged)
        out.update({"judged_samples": float(j["n"]), "dlib_unscored": float(j["dlib_unscored"]),
                    "gender_unscored": float(j["gender_unscored"])})
        out.update({key: j[name] for key, name in (("mean_dlib_dist", "dlib_dist"), ("dlib_same_rate", "dlib_same"),
                                                   ("gender_kept_rate", "gender_kept")) if j[name] is not None})
    return out


class PulseWriter(BasePredictionWriter):
    """Saves each predicted sample of :class:`lightning_modules.pulse_search.PulseSearchModule` and summarises the run.

    Args:
        out_dir: output folder; default ``<trainer.default_root_dir>/upscaled`` (the run directory).
        write_lr: also save the thumbnail as ``<name>_lr.png``.
    """

    def __init__(self, out_dir: str | None = None, write_lr: bool = True):
        super().__init__(write_interval="batch")
        self.out_dir = out_dir
        self.write_lr = write_lr
        self.results: dict[str, dict[str, float]] = {}
        self.records: list[dict] = []

    def directory(self, trainer: pl.Trainer) -> Path:
        return Path(self.out_dir) if self.out_dir is not None else Path(trainer.default_root_dir) / "upscaled"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.records, self.results = [], {}

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        from lrface.upscale import encode_png, jsonable, safe_name, to_uint8_image, write_result

        out = self.directory(trainer)
        for sample in prediction:
            meta = jsonable({k: v for k, v in sample.items() if k not in ("image", "lr")})
            if self.write_lr and sample.get("lr") is not None:  # before the JSON, whose presence marks completion
                atomic_write_bytes(out / f"{safe_name(str(sample['name']))}_lr.png",
                                   encode_png(to_uint8_image(sample["lr"])))
            png, _ = write_result(out, str(sample["name"]), sample["image"], meta)
            self.records.append({k: meta[k] for k in _RECORD_KEYS if k in meta}
                                | {"file": Path(png).name, "rank": trainer.global_rank})

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        records = self.records
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[dict] | None] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, records)
            records = [r for part in gathered for r in (part or [])]
        # A custom sampler that pads (DistributedSampler) would repeat indices: count each sample once.
        unique: dict[int, dict] = {}
        for r in records:
            unique.setdefault(int(r["index"]), r)
        duplicates = len(records) - len(unique)
        records = [unique[i] for i in sorted(unique)]
        summary = summarize(records)
        self.results = {"pulse": summary}
        for key, value in summary.items():
            trainer.callback_metrics[f"pulse/{key}"] = torch.tensor(float(value))
        if trainer.is_global_zero:
            text = json.dumps({"summary": summary, "samples": records, "duplicates": duplicates}, indent=2,
                              sort_keys=True) + "\n"
            atomic_write_text(self.directory(trainer) / "summary.json", text)
        # Ranks leave together: a rank that exits while rank 0 still writes tears gloo down under it at interpreter
        # exit (Lightning destroys the process group in an atexit hook), aborting with "terminate called ...".
        trainer.strategy.barrier("pulse_writer_summary")
