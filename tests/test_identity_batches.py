"""P×K identity batches for the triplet losses."""
from __future__ import annotations

import numpy as np
import pytest

from datamodules.identity_batches import IdentityBatchSampler


def _labels():
    # 10 identities with 1..10 images, plus 3 unknown (-1) items
    labels = np.concatenate([np.full(i + 1, i) for i in range(10)] + [np.full(3, -1)])
    return np.random.default_rng(0).permutation(labels)


def test_every_batch_is_p_identities_times_k_images():
    labels = _labels()
    sampler = IdentityBatchSampler(labels, p=3, k=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3                      # 10 identities // 3
    seen = set()
    for batch in batches:
        assert len(batch) == 12
        ids = labels[batch]
        assert (ids >= 0).all()
        counts = np.unique(ids, return_counts=True)[1]
        assert len(counts) == 3 and (counts == 4).all()
        seen |= set(ids.tolist())
    assert len(seen) == 9                                          # one identity left over this epoch


def test_identities_with_enough_images_never_repeat_an_image():
    labels = _labels()
    for batch in IdentityBatchSampler(labels, p=2, k=4, seed=3):
        for identity in np.unique(labels[batch]):
            picks = [i for i in batch if labels[i] == identity]
            if (labels == identity).sum() >= 4:
                assert len(set(picks)) == 4


def test_epochs_differ_and_are_reproducible():
    labels = _labels()
    a, b = IdentityBatchSampler(labels, p=3, k=2, seed=5), IdentityBatchSampler(labels, p=3, k=2, seed=5)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first


def test_ddp_ranks_split_the_batches():
    labels = _labels()
    full = list(IdentityBatchSampler(labels, p=2, k=2, seed=7))
    ranks = [list(IdentityBatchSampler(labels, p=2, k=2, seed=7, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2                     # 5 batches → 2 each, the fifth dropped
    assert ranks[0] == full[0:4:2] and ranks[1] == full[1:4:2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="fewer than p"):
        IdentityBatchSampler(_labels(), p=11, k=2)
    with pytest.raises(ValueError, match="rank"):
        IdentityBatchSampler(_labels(), p=2, k=2, num_replicas=2, rank=2)


# -- CelebADataModule(identity_batches=...) on the tiny world ----------------------------------------------------------

def _celeba_dm(world, **kw):
    from datamodules.celeba import CelebADataModule

    kw.setdefault("identity_batches", {"p": 2, "k": 4, "seed": 3})
    dm = CelebADataModule(str(world / "celeba"), batch_size=kw.pop("batch_size", 8), image_size=16, **kw)
    dm.setup("fit")
    return dm


def _fake_trainer(world_size, rank, use_distributed_sampler=False):
    from types import SimpleNamespace

    return SimpleNamespace(world_size=world_size, global_rank=rank,
                           _accelerator_connector=SimpleNamespace(use_distributed_sampler=use_distributed_sampler))


def test_celeba_train_loader_yields_pk_batches_whose_triplets_all_have_positives(tiny_world):
    import torch

    from lrface.losses.disentangle import batch_hard_triplet

    dm = _celeba_dm(tiny_world)
    train_ids = dm.train_set.identities
    n_ids = len(np.unique(train_ids))
    batches = list(dm.train_dataloader())
    assert len(batches) == n_ids // 2 >= 3
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        labels = batch["identity"]
        assert batch["image"].shape == (8, 3, 16, 16)
        np.testing.assert_array_equal(labels.numpy(), train_ids[batch["index"].numpy()])
        values, counts = np.unique(labels.numpy(), return_counts=True)
        assert len(values) == 2 and (counts == 4).all()
        # with a margin no distance can reach, relu never clips: the loss is the mean of d_ap − d_an + m over the
        # anchors that have a positive and a negative; it equals the mean over all 8 anchors only if every anchor has
        emb = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=1)
        dist = torch.cdist(emb.double(), emb.double())
        same = labels[:, None] == labels[None, :]
        d_ap = dist.masked_fill(~same, -1.0).amax(1)        # the diagonal (0) never wins: positives are > 0 away
        d_an = dist.masked_fill(same, 9.0).amin(1)
        expected = (d_ap - d_an + 10.0).mean()
        assert float(batch_hard_triplet(emb, labels, margin=10.0)) == pytest.approx(float(expected), abs=1e-5)
    # every training identity but the epoch's leftovers is visited once
    seen = np.concatenate([b["identity"].numpy() for b in batches])
    assert len(np.unique(seen)) == 2 * len(batches)


def test_celeba_random_batches_and_eval_loaders_unchanged(tiny_world):
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    plain = _celeba_dm(tiny_world, identity_batches=None)
    loader = plain.train_dataloader()
    assert type(loader.batch_sampler) is BatchSampler and isinstance(loader.sampler, RandomSampler)
    assert loader.batch_size == 8 and loader.drop_last
    pk = _celeba_dm(tiny_world)
    assert type(pk.train_dataloader().batch_sampler.sampler) is IdentityBatchSampler
    val = pk.val_dataloader()
    assert type(val.batch_sampler) is BatchSampler and isinstance(val.sampler, SequentialSampler)
    assert val.batch_size == 8 and not val.drop_last


def test_identity_batches_must_fill_the_batch(tiny_world):
    from datamodules.celeba import CelebADataModule

    with pytest.raises(ValueError, match=r"p·k = 4·4 = 16 must equal batch_size = 8"):
        CelebADataModule(str(tiny_world / "celeba"), batch_size=8, identity_batches={"p": 4, "k": 4})
    with pytest.raises(ValueError, match="missing \\['k'\\]"):
        CelebADataModule(str(tiny_world / "celeba"), batch_size=8, identity_batches={"p": 8})
    with pytest.raises(ValueError, match="unknown \\['q'\\]"):
        CelebADataModule(str(tiny_world / "celeba"), batch_size=8, identity_batches={"p": 2, "k": 4, "q": 1})


def test_ddp_ranks_of_the_datamodule_draw_disjoint_images(tiny_world):
    dm = _celeba_dm(tiny_world)
    full = list(dm.train_dataloader().batch_sampler)                # no Trainer: one replica
    per_rank = []
    for rank in (0, 1):
        dm.trainer = _fake_trainer(2, rank)
        per_rank.append(list(dm.train_dataloader().batch_sampler))
    assert len(per_rank[0]) == len(per_rank[1]) == len(full) // 2 >= 2
    flat = [set(sum(batches, [])) for batches in per_rank]
    assert not flat[0] & flat[1]
    assert per_rank[0] + per_rank[1] == full[0:2 * len(per_rank[0]):2] + full[1:2 * len(per_rank[0]):2]
    dm.trainer = _fake_trainer(2, 0, use_distributed_sampler=True)
    with pytest.raises(ValueError, match="use_distributed_sampler=false"):
        dm.train_dataloader()


def test_lightning_reshuffles_identity_batches_every_epoch(tiny_world):
    """Lightning 2.6 calls set_epoch on loader.sampler and loader.batch_sampler.sampler only: the DataModule's
    loader must expose the IdentityBatchSampler there, or every epoch would repeat epoch 0's batches."""
    import pytorch_lightning as pl
    import torch

    class Record(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list[list[int]]] = {}

        def training_step(self, batch, batch_idx):
            self.seen.setdefault(self.current_epoch, []).append(batch["index"].tolist())
            return (self.w * batch["image"].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = _celeba_dm(tiny_world)
    module = Record()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer._accelerator_connector.use_distributed_sampler is True  # what the DataModule reads under DDP
    assert sorted(module.seen) == [0, 1, 2]
    for epoch, batches in module.seen.items():
        sampler = IdentityBatchSampler(dm.train_set.identities, p=2, k=4, seed=3)
        sampler.set_epoch(epoch)
        assert batches == list(sampler)
    assert module.seen[0] != module.seen[1] != module.seen[2]
