"""Several DataModules trained together: one sub-batch per dataset in every training batch.

The feature extractor of the lookalike paper is trained on a sum of losses over different datasets
(L_arc on MS1M + 10·L_siam on lookalikes + 10·L_race on FairFace + 10·L_att on CelebA, Eq. 10): each optimisation
step needs a batch from every dataset (b1..b4). ``train_dataloader`` therefore returns Lightning's
``CombinedLoader({name: member.train_dataloader()}, mode)``, whose batches are ``{name: sub_batch}``. With the
default ``max_size_cycle`` an epoch lasts as long as the longest member and shorter ones restart; ``min_size``
stops at the shortest. Under DDP Lightning gives every member loader its own ``DistributedSampler``.

A member with nothing to train on (its train loader is None or has length 0, e.g. the lookalike set before its first
generation) is left out of that epoch's batches: in ``max_size_cycle`` mode an empty member would otherwise end every
epoch before its first step. With ``reload_dataloaders_every_n_epochs: 1`` it joins once it has data.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader
from pytorch_lightning.utilities.model_helpers import is_overridden

log = logging.getLogger("lrface.data")

TRAIN_MODES = ("max_size_cycle", "min_size", "max_size")


def _is_empty(loader) -> bool:
    if loader is None:
        return True
    try:
        return len(loader) == 0
    except TypeError:  # an iterable-style loader has no length: assume it yields
        return False


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
        num_workers: if not None, the DataLoader workers of every member that has a ``num_workers`` attribute
            (one knob for the whole mixture).

    ``val_set_names`` names the validation loaders in ``dataloader_idx`` order: a member's own ``val_set_names``
    when it returns a list of loaders (MS1M's ``.bin`` sets), else the member's name.
    """

    def __init__(self, datamodules: Mapping[str, pl.LightningDataModule], mode: str = "max_size_cycle",
                 val_from: str | None = "all", test_from: str | None = None, num_workers: int | None = None):
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
        if num_workers is not None:
            for dm in self.datamodules.values():
                if hasattr(dm, "num_workers"):
                    dm.num_workers = num_workers
        self._eval_names: dict[str, list[str]] = {}

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
        loaders = {}
        for name, dm in self.datamodules.items():
            loader = dm.train_dataloader()
            if _is_empty(loader):
                log.info("multi-task member %r has no training data this epoch: left out of the batches", name)
                continue
            loaders[name] = loader
        if not loaders:
            raise ValueError(f"no member of the multi-task mixture has training data ({list(self.datamodules)})")
        return CombinedLoader(loaders, self.mode)

    @staticmethod
    def _names(name: str, dm: pl.LightningDataModule, loader) -> list[str]:
        if not isinstance(loader, (list, tuple)):
            return [name]
        own = list(getattr(dm, "val_set_names", []) or [])
        return own if len(own) == len(loader) else [f"{name}/{i}" for i in range(len(loader))]

    def _eval(self, which: str | None, hook: str):
        self._eval_names[hook] = []
        if which is None:
            return []
        if which != "all":
            loader = getattr(self.datamodules[which], hook)()
            self._eval_names[hook] = self._names(which, self.datamodules[which], loader)
            return loader
        loaders, names = {}, []
        for name, dm in self.datamodules.items():
            if not is_overridden(hook, dm, pl.LightningDataModule):  # the base hook raises "must be implemented"
                continue
            loader = getattr(dm, hook)()
            if loader is not None:
                loaders[name] = loader
                names += self._names(name, dm, loader)
        self._eval_names[hook] = names
        return CombinedLoader(loaders, "sequential") if loaders else []

    @property
    def val_set_names(self) -> list[str]:
        """Names of the validation loaders in ``dataloader_idx`` order (after ``val_dataloader()``)."""
        return list(self._eval_names.get("val_dataloader", []))

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
