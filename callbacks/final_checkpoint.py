"""``last.ckpt`` holds the weights training ended with.

``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` when it validates, or at a training epoch's end when
validation runs once per epoch. A run whose last batches come after its last validation (``val_check_interval``
without a validation at the very end, ``max_steps`` stopping mid-epoch) would leave older weights there than the
ones its end-of-fit evaluation measured — and a pipeline's next step (``init=<step>/checkpoints/last.ckpt``) would
start from them. Found on mad_synthetic: the autoencoder steps (1,275 batches, validation every 100) left the weights
of batch 1,200 in ``last.ckpt``.
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

__all__ = ["FinalCheckpoint"]


class FinalCheckpoint(pl.Callback):
    """At the end of training (not interrupted, not ``fast_dev_run``, at least one step) write ``path`` again; every
    rank calls ``trainer.save_checkpoint`` (rank 0 writes, through the run's atomic checkpoint I/O)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted or trainer.fast_dev_run or trainer.global_step == 0:
            return
        trainer.save_checkpoint(self.path)
