"""Sample grids of the generative modules (MR-GAN's Fig. 4 grid, MAD's reconstructions): one PNG per validation in
``samples/``, the newest also as ``samples.png``, and the same grid in W&B when the logger takes images."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from lrface.io import atomic_write_bytes, image_grid_png

__all__ = ["write_sample_grid"]


def write_sample_grid(module: pl.LightningModule, grid: torch.Tensor, nrow: int, name: str, key: str) -> None:
    """Rank 0 only: ``grid`` (N×3×H×W in [0, 1], row-major with ``nrow`` images per row) → ``samples/<name>.png``,
    ``samples.png`` and the logger's image ``key``."""
    if not module.trainer.is_global_zero:
        return
    png = image_grid_png(grid, nrow=nrow)
    root = Path(module.trainer.default_root_dir)
    atomic_write_bytes(root / "samples" / f"{name}.png", png)
    atomic_write_bytes(root / "samples.png", png)
    logger = module.logger
    if logger is not None and hasattr(logger, "log_image"):
        from torchvision.utils import make_grid

        logger.log_image(key, [make_grid(grid, nrow=nrow, padding=2)], step=module.global_step)
