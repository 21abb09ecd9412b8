"""P×K identity batches: every batch holds P identities with K images each, so batch-hard triplet losses always find
positives (Hermans et al. 2017; MAD's identity / style / expression triplets, seed 003 Table 2's L_f^Φ). A random
batch of 32 from CelebA's ~8,000 training identities almost never holds two faces of one person.

``IdentityBatchSampler`` is a batch sampler over dataset indices. Identities with fewer than K images are drawn with
replacement inside the identity (so every identity can serve); each epoch visits every identity about once. It is
deterministic per (seed, epoch) and splits the epoch's batches across DDP ranks by ``rank`` / ``num_replicas``
(every rank gets the same number of batches, the remainder is dropped), so ranks never share a batch.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["IdentityBatchSampler"]


class IdentityBatchSampler(Sampler[list[int]]):
    """Args:
        identities: N identity labels of the dataset's items (−1 = unknown: never sampled).
        p: identities per batch.
        k: images per identity.
        seed: base seed; the epoch (``set_epoch``) is added.
        num_replicas, rank: the DDP split (1, 0 on one process).

    Yields:
        lists of P·K dataset indices.
    """

    def __init__(self, identities: Sequence[int] | np.ndarray, p: int = 8, k: int = 4, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be ≥ 1; got p={p}, k={k}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        labels = np.asarray(identities, dtype=np.int64)
        known = np.flatnonzero(labels >= 0)
        ids, inverse = np.unique(labels[known], return_inverse=True)
        if len(ids) < p:
            raise ValueError(f"{len(ids)} identities with images, fewer than p={p} per batch")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(ids)))[:-1]
        self.members = np.split(known[order], bounds)
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return (len(self.members) // self.p) // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.members))
        n = len(self) * self.num_replicas
        for b in range(self.rank, n, self.num_replicas):
            # one generator per batch: a batch is the same whichever rank draws it
            rng = np.random.default_rng((self.seed, self.epoch, b))
            batch: list[int] = []
            for identity in order[b * self.p:(b + 1) * self.p]:
                images = self.members[identity]
                picks = rng.choice(images, size=self.k, replace=len(images) < self.k)
                batch.extend(int(i) for i in picks)
            yield batch
