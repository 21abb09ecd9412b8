"""Landmark-annotated CelebA faces for the IJB-C-TinyFace-style covariate protocol (RAN supplementary §3).

IJB-C's LR faces are natively small (eye–mouth distance 10–30 px). CelebA's are not: in the aligned 178×218 crops
(and in our synthetic world) the distance is about 39 px. With ``simulate_scales=(lo, hi)`` each image i is shrunk
by a factor f_i drawn log-uniform in [lo, hi] — ``f = exp(np.random.default_rng(seed).uniform(log lo, log hi,
n_rows))[row]``, one draw per row of the annotation files, so an image keeps its factor whatever the split —
with OpenCV's area filter at exactly that factor (``cv2.resize(fx=f, fy=f, INTER_AREA)``, output side
round(side·f)), and its landmarks follow exactly: p' = (p + 0.5)·f − 0.5 (pixel centres at integers). The shrunk
pixels are then aligned to the ArcFace crop with :func:`lrface.align.align_face_np`, as a detector + ``norm_crop``
pipeline would treat a small face: a 20 px face stays a blurred 20 px face at 112×112. This is a stand-in for
IJB-C's natively small faces (no sensor noise, no compression, no surveillance blur), not a replacement.

Two CelebA sources, both under the same root and layout as :mod:`datamodules.celeba` (which parses the tables):
the aligned ``img_align_celeba`` + ``list_landmarks_align_celeba.txt``, or the in-the-wild ``img_celeba`` +
``list_landmarks_celeba.txt`` (same header and row format; faces of every size, so the protocol selects real small
faces without simulation). ``source="auto"`` takes the in-the-wild pair when both are present.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.celeba import CELEBA_LANDMARK_COLUMNS, CELEBA_SPLITS, _check_same_names, _read_table, find_celeba_files
from datamodules.errors import CorruptLog, DataFormatError, check_on_corrupt, handle_corrupt, skip_collate
from datamodules.image_io import read_image, to_tensor
from lrface.align import align_face_np
from lrface.covariate_protocol import COVARIATE_FARS, CovariateProtocol, evaluate_covariate
from lrface.inference import embed_flip_sum

SOURCES = ("auto", "aligned", "wild")


def simulated_scales(n_rows: int, simulate_scales: tuple[float, float], seed: int) -> np.ndarray:
    """Per-row shrink factors, log-uniform in [lo, hi] (the draw documented in the module docstring)."""
    lo, hi = (float(s) for s in simulate_scales)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"simulate_scales must satisfy 0 < lo <= hi <= 1 (a shrink), got {simulate_scales!r}")
    return np.exp(np.random.default_rng(seed).uniform(np.log(lo), np.log(hi), size=n_rows))


class CovariateFaces(Dataset):
    """CelebA faces (optionally shrunk to IJB-C-like sizes) aligned to the ArcFace crop, with their landmarks.

    Args:
        root: CelebA folder (flat torchvision layout or the original ``Img/ Anno/ Eval/`` one).
        split: ``"train"`` | ``"valid"`` | ``"test"`` | ``"all"`` from ``list_eval_partition.txt``.
        simulate_scales: ``(lo, hi)`` with 0 < lo ≤ hi ≤ 1 to shrink every image by a seeded log-uniform factor;
            None keeps the native pixels.
        seed: seed of the factors.
        image_size: side of the aligned crop (112).
        source: ``"auto"`` | ``"aligned"`` | ``"wild"`` (see the module docstring).
        on_corrupt: ``"error"`` | ``"skip"`` for unreadable images (skipped items are ``None``).

    Attributes:
        landmarks: N×5×2 float32 landmarks in the (shrunk) images' pixels — what the protocol builder measures.
        identities: N int64 0-based CelebA identities.
        scales: N float64 shrink factors (ones without simulation).
        names: N image file names.

    Items: ``image`` (3×image_size×image_size float in [0, 1], aligned from the shrunk pixels), ``identity``
    (int64), ``landmarks`` (5×2 in the crop), ``size`` (int64 [H, W] of the shrunk image: the simulated native
    size), ``scale`` (float), ``index``.
    """

    def __init__(self, root: str | Path, split: str = "all", simulate_scales: Sequence[float] | None = None,
                 seed: int = 0, image_size: int = 112, source: str = "auto", on_corrupt: str = "error"):
        if split not in CELEBA_SPLITS:
            raise ValueError(f"split must be one of {tuple(CELEBA_SPLITS)}, got {split!r}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        self.root, self.split, self.image_size, self.seed = Path(root), split, int(image_size), seed
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.corrupt_log = CorruptLog(f"covariate_faces/{split}")
        files = find_celeba_files(root)
        wild_images = files.images.parent / "img_celeba"
        wild_landmarks = files.landmarks.parent / "list_landmarks_celeba.txt"
        has_wild = wild_images.is_dir() and wild_landmarks.is_file()
        if source == "wild" and not has_wild:
            missing = wild_landmarks if not wild_landmarks.is_file() else wild_images
            raise DataFormatError(missing, "missing in-the-wild CelebA piece",
                                  expected=f"{wild_images} and {wild_landmarks} (or source='aligned')")
        self.source = "wild" if source == "wild" or (source == "auto" and has_wild) else "aligned"
        self.image_dir = wild_images if self.source == "wild" else files.images
        landmark_file = wild_landmarks if self.source == "wild" else files.landmarks

        part = _read_table(files.partition, n_values=1, header=None, allowed=(0, 1, 2))
        ident = _read_table(files.identities, n_values=1, header=None, minimum=1)
        lmk = _read_table(landmark_file, n_values=10, header=CELEBA_LANDMARK_COLUMNS, dtype=np.float32)
        for path, table in ((files.identities, ident), (landmark_file, lmk)):
            _check_same_names(files.partition, part, path, table)
        n_rows = len(part.names)
        code = CELEBA_SPLITS[split]
        self.rows = np.arange(n_rows) if code is None else np.flatnonzero(part.values[:, 0] == code)
        self.simulate_scales = None if simulate_scales is None else tuple(float(s) for s in simulate_scales)
        all_scales = (np.ones(n_rows) if self.simulate_scales is None
                      else simulated_scales(n_rows, self.simulate_scales, seed))
        self.scales = all_scales[self.rows]
        native = lmk.values.reshape(-1, 5, 2).astype(np.float64)[self.rows]
        self.landmarks = ((native + 0.5) * self.scales[:, None, None] - 0.5).astype(np.float32)
        self.identities = (ident.values[:, 0] - 1)[self.rows].astype(np.int64)
        self.names = [part.names[r] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.names[index]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(aligned uint8 crop, its 5×2 landmarks, (H, W) of the shrunk image)."""
        import cv2

        image = read_image(self.image_path(index))
        scale = float(self.scales[index])
        if scale != 1.0:
            # fx/fy (not dsize) so the sampling grid is exactly p' = (p + 0.5)·f − 0.5, as the landmarks
            image = cv2.resize(image, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        crop, points = align_face_np(image, self.landmarks[index], self.image_size)
        return crop, points.astype(np.float32), image.shape[:2]

    def __getitem__(self, index: int):
        try:
            crop, points, size = self.load(index)
        except DataFormatError as err:
            handle_corrupt(self.on_corrupt, err, self.corrupt_log)
            return None
        return {
            "image": to_tensor(crop),
            "identity": torch.tensor(int(self.identities[index]), dtype=torch.int64),
            "landmarks": torch.from_numpy(points),
            "size": torch.tensor(size, dtype=torch.int64),
            "scale": float(self.scales[index]),
            "index": index,
        }


@torch.no_grad()
def evaluate_covariate_faces(model: nn.Module, dataset: Dataset, protocol: CovariateProtocol, batch_size: int = 128,
                             device: str | torch.device = "cpu",
                             fars: Sequence[float] = COVARIATE_FARS) -> dict[str, float]:
    """Embed the faces the protocol uses (flip-sum, :func:`lrface.inference.embed_flip_sum`) and score it.

    Only the faces in :meth:`CovariateProtocol.used_faces` are embedded. Faces the dataset skips (``on_corrupt=
    "skip"``) take their pairs and LR-face entries out of the protocol; their count is ``n_skipped_faces``.

    Args:
        model: a backbone taking B×3×H×W in [-1, 1] (the dataset's ``image_size``) → B×D.
        dataset: a :class:`CovariateFaces` (any dataset whose items carry ``image`` and ``index``).
        protocol: built on this dataset's ``landmarks`` / ``identities`` (``protocol.n_faces == len(dataset)``).
        batch_size: images per forward.
        device: where the model runs.
        fars: target FARs.

    Returns:
        :func:`lrface.covariate_protocol.evaluate_covariate`'s dict plus ``n_skipped_faces``.
    """
    if protocol.n_faces != len(dataset):
        raise ValueError(f"the protocol indexes {protocol.n_faces} faces but the dataset has {len(dataset)}")
    used = protocol.used_faces()
    model = model.to(device).eval()
    rows: dict[int, np.ndarray] = {}
    loader = DataLoader(Subset(dataset, used.tolist()), batch_size=batch_size, shuffle=False,
                        collate_fn=skip_collate)
    for batch in loader:
        if batch is None:
            continue
        emb = embed_flip_sum(model, batch["image"].to(device).float()).cpu().numpy()
        for i, e in zip(torch.as_tensor(batch["index"]).tolist(), emb):
            rows[int(i)] = e
    kept = np.asarray(sorted(rows), dtype=np.int64)
    dim = next(iter(rows.values())).shape[0] if rows else 1
    embeddings = np.stack([rows[i] for i in kept.tolist()]) if rows else np.zeros((0, dim), np.float32)
    # re-index onto the embedded faces only: the full N×D array would not fit for a 200k-image CelebA
    present = np.zeros(protocol.n_faces, dtype=bool)
    present[kept] = True
    position = np.full(protocol.n_faces, -1, dtype=np.int64)
    position[kept] = np.arange(len(kept))

    def remap(pairs: np.ndarray) -> np.ndarray:
        pairs = pairs[present[pairs].all(axis=1)] if len(pairs) else pairs
        return position[pairs]

    compact = CovariateProtocol(position[protocol.lr_faces[present[protocol.lr_faces]]], remap(protocol.positives),
                                remap(protocol.negatives), len(kept))
    out = evaluate_covariate(embeddings, compact, fars)
    out["n_skipped_faces"] = int(len(used) - len(kept))
    return out
