"""The evaluation sets of the seed paper (``seeds/000_*.txt`` §4.1–4.3), in the generator's framing.

Three prediction sets, one DataLoader each (``predict_dataloader`` returns them in this order; empty ones are left
out), every item tagged with ``set`` so the evaluation module knows what to do with it:

- ``pairs`` — Table 1's CelebA-Same and CelebA-Diff: ``pairs`` pairs each from the CelebA test split
  (:class:`datamodules.celeba.CelebAPairs`). Items ``image1``, ``image2``, ``issame``.
- ``celeba`` — the ground truths I_GT of PULSE-Pairs / Lookalike-Baseline / Lookalike-Ours (Table 1) and of the
  attribute re-identification (Table 3): ``celeba_images`` random CelebA test images. Items ``image``,
  ``attributes`` (40), ``identity``.
- ``fairface`` — Table 2's race re-identification: ``fairface_images`` random FairFace validation images (FairFace
  publishes train and val labels; val is its test set). Items ``image``, ``race``.

Every image is in the FFHQ framing at the generator's resolution (CelebA by its five landmarks, FairFace by the
dlib-chip template: ``align="ffhq"`` of both datasets), the framing the generator draws and the thumbnails are cut
from. CelebA-Same / CelebA-Diff go through that framing too, so all five sets of Table 1 reach F through one identical
path (the fixed FFHQ → ArcFace warp of the evaluation module) and their angles are comparable.

``alpha_pairs()`` gives CelebA-*train* same / different pairs in the same framing for Alg. 1's
``calc-best-angle-threshold`` (the α_thr each F uses in its searches).

Every item also has ``uid`` (unique across the three sets: ``offset + position``), the per-sample search seed offset,
so a sample gets the same seed — the same start latent — under every strategy and on any number of ranks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from datamodules.base import FaceDataModule

SETS = ("pairs", "celeba", "fairface")
#: uid offsets: CelebA-Same pairs, CelebA-Diff pairs, CelebA images, FairFace images.
_OFFSETS = {"same": 0, "diff": 1_000_000, "celeba": 2_000_000, "fairface": 3_000_000}


class Tagged(Dataset):
    """Adds ``set`` (the name) and ``uid`` (``offset`` + position) to every item of ``dataset`` at ``indices``.

    Args:
        dataset: the source dataset.
        name: the ``set`` tag.
        offset: first uid.
        indices: positions in ``dataset`` to expose (None: all, in order).
    """

    def __init__(self, dataset: Dataset, name: str, offset: int, indices: list[int] | None = None):
        self.dataset, self.name, self.offset = dataset, name, int(offset)
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, Any] | None:
        item = self.dataset[self.indices[position]]
        if item is None:  # a corrupt image skipped by policy (counted by the dataset)
            return None
        return {**item, "set": self.name, "uid": self.offset + position}


def random_subset(n_total: int, n: int | None, seed: int) -> list[int]:
    """``n`` distinct positions of ``range(n_total)`` drawn with ``seed`` and sorted (all when n is None or larger)."""
    if n is None or n >= n_total:
        return list(range(n_total))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_total, size=int(n), replace=False))


class UpscalingEvalDataModule(FaceDataModule):
    """Prediction data of the seed paper's evaluation (see the module docstring).

    Args:
        celeba_root: CelebA folder (``split`` for the sets, train for ``alpha_pairs``).
        fairface_root: FairFace folder (val split); None leaves Table 2 out.
        resolution: the generator's resolution (the images' side, FFHQ framing).
        pairs: CelebA-Same and as many CelebA-Diff pairs (paper: 3,000 each); 0 leaves them out.
        celeba_images: CelebA test images for PULSE-Pairs / Lookalike-* and Table 3 (paper: 3,000 pairs for Table 1).
        fairface_images: FairFace images for Table 2 (paper: 1,000).
        fairface_margin: FairFace image folder: 1.25 (default), whose wide chips fill the FFHQ frame with hair and
            background as generated faces do; the 0.25 chips cover only its centre (black borders).
        alpha_pairs: CelebA-train same and as many different pairs for α_thr (paper: 3,000).
        split: the CelebA split of the sets (the paper: test).
        seed: seed of every random choice (pairs, subsets).
        batch_size, num_workers, pin_memory, on_corrupt: see :class:`FaceDataModule`.
    """

    def __init__(self, celeba_root: str, fairface_root: str | None = None, resolution: int = 1024, pairs: int = 3000,
                 celeba_images: int = 3000, fairface_images: int = 1000, fairface_margin: float = 1.25,
                 alpha_pairs: int = 3000, split: str = "test", seed: int = 0, batch_size: int = 16, num_workers: int = 0,
                 pin_memory: bool = False, on_corrupt: str = "error"):
        super().__init__(batch_size, num_workers, pin_memory, on_corrupt)
        for name, value in (("pairs", pairs), ("celeba_images", celeba_images), ("fairface_images", fairface_images),
                            ("alpha_pairs", alpha_pairs)):
            if value is not None and int(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if fairface_images and fairface_root is None:
            raise ValueError("fairface_images > 0 needs fairface_root (or set fairface_images=0 to leave Table 2 out)")
        self.celeba_root = Path(celeba_root)
        self.fairface_root = Path(fairface_root) if fairface_root is not None else None
        self.resolution = int(resolution)
        self.n_pairs, self.n_celeba, self.n_fairface = int(pairs), int(celeba_images), int(fairface_images or 0)
        self.fairface_margin, self.n_alpha, self.seed = float(fairface_margin), int(alpha_pairs), int(seed)
        self.split = split
        self.sets: dict[str, Dataset] = {}
        self._alpha = None

    def _celeba(self, split: str):
        from datamodules.celeba import CelebADataset

        return CelebADataset(self.celeba_root, split, align="ffhq", image_size=self.resolution,
                             on_corrupt=self.on_corrupt)

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        from datamodules.celeba import CelebAPairs

        if self.n_pairs or self.n_celeba:
            test = self._celeba(self.split)
        if self.n_pairs:
            same = Tagged(CelebAPairs(test, self.n_pairs, same=True, seed=self.seed), "pairs", _OFFSETS["same"])
            diff = Tagged(CelebAPairs(test, self.n_pairs, same=False, seed=self.seed + 1), "pairs", _OFFSETS["diff"])
            self.sets["pairs"] = ConcatDataset([same, diff])
        if self.n_celeba:
            self.sets["celeba"] = Tagged(test, "celeba", _OFFSETS["celeba"],
                                         random_subset(len(test), self.n_celeba, self.seed + 2))
        if self.n_fairface:
            from datamodules.fairface import FairFaceDataset

            ff = FairFaceDataset(self.fairface_root, "val", margin=self.fairface_margin, image_size=self.resolution,
                                 align="ffhq", on_corrupt=self.on_corrupt)
            self.sets["fairface"] = Tagged(ff, "fairface", _OFFSETS["fairface"],
                                           random_subset(len(ff), self.n_fairface, self.seed + 3))
        if not self.sets:
            raise ValueError("the evaluation has nothing to do: pairs, celeba_images and fairface_images are all 0")

    def alpha_pairs(self) -> tuple[Dataset, Dataset]:
        """CelebA-train (same, different) identity pairs in the evaluation framing, for α_thr (Alg. 1)."""
        if self._alpha is None:
            from datamodules.celeba import CelebAPairs

            train = self._celeba("train")
            self._alpha = (CelebAPairs(train, self.n_alpha, same=True, seed=self.seed + 10),
                           CelebAPairs(train, self.n_alpha, same=False, seed=self.seed + 11))
        return self._alpha

    def set_names(self) -> list[str]:
        """Names of the predict loaders, in ``dataloader_idx`` order."""
        return [name for name in SETS if name in self.sets]

    def predict_dataloader(self):
        return [self.loader(self.sets[name], train=False) for name in self.set_names()]
