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
