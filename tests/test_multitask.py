"""MultiTaskDataModule: dict batches with one sub-batch per dataset (Eq. 10's b1..b4), modes, hooks, Trainer fit."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from datamodules.celeba import CelebADataModule
from datamodules.fairface import FairFaceDataModule
from datamodules.multitask import MultiTaskDataModule
from tests.fixtures_real_formats import make_celeba, make_fairface


class Spy(pl.LightningDataModule):
    """Records the hooks the combined module forwards."""

    def __init__(self, n=5):
        super().__init__()
        self.calls, self.n = [], n

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage=None):
        self.calls.append(f"setup:{stage}")

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.arange(self.n), batch_size=1)


@pytest.fixture
def members(tmp_path):
    make_celeba(tmp_path / "celeba")
    make_fairface(tmp_path / "fairface")
    celeba = CelebADataModule(str(tmp_path / "celeba"), batch_size=2, image_size=32)  # 6 train → 3 batches
    fairface = FairFaceDataModule(str(tmp_path / "fairface"), batch_size=2, image_size=32)  # 8 train → 4 batches
    return {"celeba": celeba, "fairface": fairface}


def _batches(dm):
    return [batch for batch, _, _ in iter(dm.train_dataloader())]


def test_dict_batches_and_modes(members):
    dm = MultiTaskDataModule(members)
    dm.prepare_data()
    dm.setup("fit")
    batches = _batches(dm)
    assert len(batches) == 4  # max_size_cycle: as long as the longest member; CelebA restarts
    for b in batches:
        assert set(b) == {"celeba", "fairface"}
        assert b["celeba"]["image"].shape == (2, 3, 32, 32) and b["celeba"]["attributes"].shape == (2, 40)
        assert b["fairface"]["race"].shape == (2,)
    assert len(_batches(MultiTaskDataModule(members, mode="min_size"))) == 3
    padded = _batches(MultiTaskDataModule(members, mode="max_size"))
    assert len(padded) == 4 and padded[-1]["celeba"] is None
    with pytest.raises(ValueError, match="sequential"):
        MultiTaskDataModule(members, mode="sequential")
    with pytest.raises(ValueError, match="unknown member"):
        MultiTaskDataModule(members, val_from="ms1m")


def test_hooks_are_forwarded():
    a, b = Spy(), Spy(3)
    dm = MultiTaskDataModule({"a": a, "b": b}, val_from="all")
    dm.prepare_data()
    dm.setup("fit")
    assert a.calls == b.calls == ["prepare_data", "setup:fit"]
    assert dm.val_dataloader() == []  # neither member defines validation
    assert [x["a"].item() for x, _, _ in iter(dm.train_dataloader())] == [0, 1, 2, 3, 4]


def test_val_from_one_member(members):
    dm = MultiTaskDataModule(members, val_from="fairface")
    dm.setup("fit")
    val = dm.val_dataloader()
    assert isinstance(val, torch.utils.data.DataLoader) and len(val.dataset) == 4


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        self.train_keys, self.val_idx = [], set()

    def training_step(self, batch, batch_idx):
        self.train_keys.append(sorted(batch))
        feats = [batch[k]["image"].mean(dim=(2, 3)) for k in sorted(batch)]
        return sum(self.net(f).mean() for f in feats)  # one loss term per sub-batch, as Eq. 10 sums them

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_idx.add(dataloader_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.timeout(120)
def test_trainer_fit_sees_all_sub_batches(members):
    dm = MultiTaskDataModule(members, val_from="all")
    model = _Recorder()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    assert model.train_keys == [["celeba", "fairface"]] * 4
    assert model.val_idx == {0, 1}  # CelebA valid then FairFace val, sequentially
    assert members["celeba"].trainer is trainer
