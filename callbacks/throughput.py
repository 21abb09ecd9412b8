"""Samples per second (global, across ranks) and peak memory, logged every `log_every_n_steps`."""
from __future__ import annotations

import resource
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch


def count_samples(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor; sub-batches of a combined batch are summed."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, dict):
        if any(isinstance(v, (dict, list, tuple)) for v in batch.values()) and not any(
            isinstance(v, torch.Tensor) for v in batch.values()
        ):
            return sum(count_samples(v) for v in batch.values() if v is not None)
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                return count_samples(value)
        return 0
    if isinstance(batch, (list, tuple)) and batch:
        if all(isinstance(b, dict) for b in batch):
            return sum(count_samples(b) for b in batch)
        return count_samples(batch[0])
    return 0


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated accelerator memory on CUDA; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


class ThroughputMonitor(pl.Callback):
    """Logs ``perf/samples_per_sec`` (this rank's count × world size over wall time) and ``perf/peak_mem_mb``.

    The rate is measured over the steps between two logging points, so it excludes validation and start-up. Samples are
    counted per rank and multiplied by the world size rather than all-reduced, to avoid a collective every step;
    Lightning's DistributedSampler gives every rank the same number of samples per step.
    """

    def __init__(self, log_every_n_steps: int | None = None):
        self.log_every_n_steps = log_every_n_steps
        self._samples = 0
        self._t0: float | None = None
        self.last_samples_per_sec: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._samples, self._t0 = 0, time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._samples += count_samples(batch)
        every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        if (batch_idx + 1) % every:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        elapsed = now - (self._t0 or now)
        if elapsed > 0 and self._samples:
            self.last_samples_per_sec = self._samples * trainer.world_size / elapsed
            pl_module.log("perf/samples_per_sec", self.last_samples_per_sec, rank_zero_only=True)
        pl_module.log("perf/peak_mem_mb", peak_memory_mb(pl_module.device), reduce_fx="max", sync_dist=False)
        self._samples, self._t0 = 0, now
