"""What every DataModule shares: loader settings, worker seeding, the skip-aware collate."""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

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
               collate_fn: Callable[[list], Any] | None = None,
               batch_sampler: Sampler[list[int]] | None = None) -> DataLoader:
        """A DataLoader over ``dataset``: shuffled, fixed-size batches when ``train``, in order otherwise.

        ``batch_sampler`` (e.g. :class:`~datamodules.identity_batches.IdentityBatchSampler`) replaces batch_size /
        shuffle / drop_last; it must split the data across DDP ranks itself, and the Trainer must then run with
        ``use_distributed_sampler=False`` (Lightning cannot inject a DistributedSampler into a foreign batch sampler).
        """
        common = dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0, worker_init_fn=worker_init_fn,
                      collate_fn=collate_fn or skip_collate)
        if batch_sampler is not None:
            return DataLoader(dataset, batch_sampler=EpochBatchSampler(batch_sampler), **common)
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=train,
            drop_last=train,  # margin heads and Partial FC want fixed batch shapes
            **common,
        )


class EpochBatchSampler(Sampler[list[int]]):
    """Passes a batch sampler through unchanged while exposing it where Lightning looks for ``set_epoch``.

    Lightning 2.6 (``lightning_fabric.utilities.data._set_sampler_epoch``, called by the fit loop at every epoch
    start) calls ``set_epoch`` on ``loader.sampler`` and on ``loader.batch_sampler.sampler``, never on
    ``loader.batch_sampler`` itself: a batch sampler handed straight to the DataLoader would repeat epoch 0's batches
    in every epoch. Here it is ``batch_sampler.sampler``, so it is reached.

    Args:
        batch_sampler: yields lists of dataset indices; ``set_epoch(epoch)`` if it reshuffles per epoch.
    """

    def __init__(self, batch_sampler: Sampler[list[int]]):
        self.sampler = batch_sampler

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)
