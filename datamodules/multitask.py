"""Several DataModules trained together: one sub-batch per dataset in every training batch.

The feature extractor of the lookalike paper is trained on a sum of losses over different datasets
(L_arc on MS1M + 10·L_siam on lookalikes + 10·L_race on FairFace + 10·L_att on CelebA, Eq. 10): each optimisation
step needs a batch from every dataset (b1..b4). ``train_dataloader`` therefore returns Lightning's
``CombinedLoader({name: member.train_dataloader()}, mode)``, whose batches are ``{name: sub_batch}``. With the
default ``max_size_cycle`` an epoch lasts as long as the longest member and shorter ones restart; ``min_size``
stops at the shortest. Under DDP Lightning gives every member loader its own ``DistributedSampler``.
"""
from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader
from pytorch_lightning.utilities.model_helpers import is_overridden

TRAIN_MODES = ("max_size_cycle", "min_size", "max_size")


class MultiTaskDataModule(pl.LightningDataModule):
    """Combine named DataModules into dict batches.

    Args:
        datamodules: ``{name: LightningDataModule}``; the names become the batch keys.
        mode: ``CombinedLoader`` mode for training: ``"max_size_cycle"`` (default), ``"min_size"`` or
            ``"max_size"`` (exhausted members yield ``None``).
        val_from: member whose ``val_dataloader`` is used, or ``"all"`` for every member that has one, run one
            after the other (``sequential``: ``validation_step`` gets ``dataloader_idx`` in the order of
            ``datamodules``). None = no validation.
        test_from: same for ``test_dataloader``.
    """

    def __init__(self, datamodules: Mapping[str, pl.LightningDataModule], mode: str = "max_size_cycle",
                 val_from: str | None = "all", test_from: str | None = None):
        super().__init__()
        if not datamodules:
            raise ValueError("MultiTaskDataModule needs at least one member")
        if mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {TRAIN_MODES} (sequential cannot train), got {mode!r}")
        for which in (val_from, test_from):
            if which not in (None, "all") and which not in datamodules:
                raise ValueError(f"unknown member {which!r}; members: {list(datamodules)}")
        self.datamodules = dict(datamodules)
        self.mode, self.val_from, self.test_from = mode, val_from, test_from

    def _share_trainer(self) -> None:
        trainer = getattr(self, "trainer", None)
        for dm in self.datamodules.values():
            if trainer is not None and getattr(dm, "trainer", None) is None:
                dm.trainer = trainer  # members sizing themselves by world size / epoch need it

    def prepare_data(self) -> None:
        for dm in self.datamodules.values():
            dm.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self._share_trainer()
        for dm in self.datamodules.values():
            dm.setup(stage)

    def teardown(self, stage: str | None = None) -> None:
        for dm in self.datamodules.values():
            dm.teardown(stage)

    def train_dataloader(self) -> CombinedLoader:
        return CombinedLoader({name: dm.train_dataloader() for name, dm in self.datamodules.items()}, self.mode)

    def _eval(self, which: str | None, hook: str):
        if which is None:
            return []
        if which != "all":
            return getattr(self.datamodules[which], hook)()
        loaders = {}
        for name, dm in self.datamodules.items():
            if not is_overridden(hook, dm, pl.LightningDataModule):  # the base hook raises "must be implemented"
                continue
            loader = getattr(dm, hook)()
            if loader is not None:
                loaders[name] = loader
        return CombinedLoader(loaders, "sequential") if loaders else []

    def val_dataloader(self):
        return self._eval(self.val_from, "val_dataloader")

    def test_dataloader(self):
        return self._eval(self.test_from, "test_dataloader")

    def state_dict(self) -> dict:
        return {name: dm.state_dict() for name, dm in self.datamodules.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, dm in self.datamodules.items():
            if name in state_dict:
                dm.load_state_dict(state_dict[name])
