"""What every DataModule shares: loader settings, worker seeding, the skip-aware collate."""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from datamodules.errors import check_on_corrupt, skip_collate


def _reseed_transforms(obj: Any, seed: int, seen: set[int]) -> None:
    if obj is None or id(obj) in seen:
        return
    seen.add(id(obj))
    if hasattr(obj, "set_random_seed"):  # albumentations Compose / our AlbumentationsTransform wrapper
        obj.set_random_seed(seed)
    for name in ("transform", "datasets", "dataset"):
        child = getattr(obj, name, None)
        if isinstance(child, (list, tuple)):
            for c in child:
                _reseed_transforms(c, seed, seen)
        else:
            _reseed_transforms(child, seed, seen)


def worker_init_fn(worker_id: int) -> None:
    """Seeds a DataLoader worker so that workers, epochs and DDP ranks all draw different augmentations.

    albumentations 2.0.8 does not reseed per worker: its Compose keeps one RNG that every forked worker copies, so
    without this all workers (and, without persistent workers, all epochs) apply identical augmentations.
    ``torch.initial_seed()`` in a worker already differs per worker, epoch and (with Lightning's seeding) rank.
    """
    try:  # Lightning's own per-(seed, worker, rank) seeding first, as seed_everything(workers=True) would do
        from pytorch_lightning.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
    except ImportError:  # pragma: no cover - older Lightning
        pass
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    try:
        import cv2

        cv2.setNumThreads(0)  # one decoder thread per worker: workers are the parallelism
    except ImportError:  # pragma: no cover
        pass
    info = get_worker_info()
    if info is not None:
        _reseed_transforms(info.dataset, seed, set())


class FaceDataModule(pl.LightningDataModule):
    """Base for the dataset DataModules: builds DataLoaders the same way everywhere.

    Args:
        batch_size: per-device batch size.
        num_workers: DataLoader workers per rank.
        pin_memory: pin host memory (useful on GPU).
        on_corrupt: ``"error"`` raises on the first bad item; ``"skip"`` counts, logs and drops it.
    """

    def __init__(self, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False,
                 on_corrupt: str = "error"):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.on_corrupt = check_on_corrupt(on_corrupt)

    def loader(self, dataset: Dataset, *, train: bool, batch_size: int | None = None,
               collate_fn: Callable[[list], Any] | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=train,
            drop_last=train,  # margin heads and Partial FC want fixed batch shapes
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=worker_init_fn,
            collate_fn=collate_fn or skip_collate,
        )
