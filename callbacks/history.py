"""A per-epoch record of every logged metric in the run directory (``history.jsonl``), consistent across resumes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from callbacks.atomic_checkpoint import atomic_write_text


def scalar_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


class RunHistory(pl.Callback):
    """Writes one JSON line per finished training epoch: ``{"epoch", "step", "metrics"}``.

    On a resume, lines for the epoch being resumed and any later one are dropped first, so a run that was killed and
    resumed ends with exactly the lines an uninterrupted run would have (no duplicated or lost epochs).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def _write(self, rows: list[dict]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            rows = self.read()
            kept = [r for r in rows if r["epoch"] < trainer.current_epoch]
            if len(kept) != len(rows):
                self._write(kept)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        rows = [r for r in self.read() if r["epoch"] < trainer.current_epoch]
        rows.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                     "metrics": scalar_metrics(trainer.callback_metrics)})
        self._write(rows)
