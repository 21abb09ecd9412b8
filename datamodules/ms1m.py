"""MS1M (MS1MV2 ``faces_emore`` / MS1MV3 ``ms1m-retinaface-t1``) and any InsightFace RecordIO training folder.

Training images come from ``train.rec`` / ``train.idx`` / ``property`` through the pure-Python reader in
:mod:`datamodules.formats.recordio`; validation uses the ``.bin`` pair sets beside them (``lfw.bin``, ``cfp_fp.bin``,
``agedb_30.bin``, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import FaceDataModule
from datamodules.errors import CorruptLog, DataFormatError, check_on_corrupt, handle_corrupt
from datamodules.formats.recordio import InsightFaceRec, read_property
from datamodules.formats.verification_bin import load_bin_encoded
from datamodules.image_io import decode_image, to_tensor
from datamodules.transforms import resize_uint8

DEFAULT_VAL_SETS = ("lfw", "cfp_fp", "agedb_30")
#: Ground-truth head pose beside ``train.rec`` (``<rec stem>_pose.tsv``): written only by the synthetic world.
POSE_SIDECAR = "train_pose.tsv"
POSE_HEADER = "index\tyaw\tpitch\troll"


def read_pose_sidecar(path: str | Path, num_images: int) -> np.ndarray:
    """Parse a pose sidecar: header ``index<TAB>yaw<TAB>pitch<TAB>roll``, then one row per image record.

    ``index`` is the 0-based image record (the dataset index, i.e. the position in ``train.idx`` after the meta
    record); angles in radians. Every index in ``[0, num_images)`` must appear exactly once.

    Returns:
        num_images×3 float32 (yaw, pitch, roll).

    Raises:
        DataFormatError: naming the file and line of a malformed row, or the first index without a row.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not a text file ({exc.reason})", offset=exc.start,
                              expected="tab-separated text") from None
    if not lines or lines[0].strip().split("\t") != POSE_HEADER.split("\t"):
        raise DataFormatError(path, f"bad header {lines[0][:60] if lines else ''!r}", line=1,
                              expected=repr(POSE_HEADER))
    pose = np.full((num_images, 3), np.nan, dtype=np.float32)
    seen = np.zeros(num_images, dtype=bool)
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        try:
            if len(fields) != 4:
                raise ValueError(f"{len(fields)} fields")
            index, angles = int(fields[0]), [float(v) for v in fields[1:]]
            if not np.isfinite(angles).all():
                raise ValueError("a non-finite angle")
        except ValueError as exc:
            raise DataFormatError(path, f"malformed row {line[:60]!r} ({exc})", line=lineno,
                                  expected="an integer index and three finite angles in radians, tab-separated") \
                from None
        if not 0 <= index < num_images:
            raise DataFormatError(path, f"index {index} out of range", line=lineno,
                                  expected=f"0 ≤ index < {num_images} (the image records of the .rec)")
        if seen[index]:
            raise DataFormatError(path, f"index {index} appears twice", line=lineno, expected="one row per record")
        seen[index] = True
        pose[index] = angles
    if not seen.all():
        missing = int(np.flatnonzero(~seen)[0])
        raise DataFormatError(path, f"no row for index {missing} ({int((~seen).sum())} of {num_images} missing)",
                              expected="one row per image record")
    return pose


class MS1MDataset(Dataset):
    """Image records of an InsightFace ``.rec`` folder.

    Items: ``image`` float32 3×H×W in [0, 1], ``identity`` 0-based int, ``size`` int64 [H, W] of the stored image,
    ``index`` int; and ``yaw`` (float32 scalar tensor, radians) when a pose sidecar ``<rec stem>_pose.tsv``
    (:func:`read_pose_sidecar`) lies beside the ``.rec``. Only the synthetic world writes one (its rendered head
    pose, the ground truth of URL's pose variation with ``datamodules.variations`` ``pose.source="label"``); real
    releases have none and their items are unchanged.

    Args:
        root: folder with ``train.rec``, ``train.idx`` (and ``property``), or the ``.rec`` path.
        transform: callable on the uint8 H×W×3 RGB array (after resizing), or None.
        image_size: resize to this (int or (H, W)) before ``transform``; None keeps the stored size (112 for MS1M).
        on_corrupt: ``"error"`` or ``"skip"`` (a corrupt record's item becomes None and is counted in
            ``self.corrupt_log``).
    """

    def __init__(self, root: str | Path, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 image_size: int | tuple[int, int] | None = None, on_corrupt: str = "error"):
        self.root = Path(root)
        self.rec = InsightFaceRec(root)
        self.keys = self.rec.image_keys
        self.transform = transform
        self.image_size = image_size
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.corrupt_log = CorruptLog(f"MS1M {self.rec.rec_path}")
        sidecar = self.rec.rec_path.with_name(f"{self.rec.rec_path.stem}_pose.tsv")
        self.pose = read_pose_sidecar(sidecar, len(self.keys)) if sidecar.is_file() else None

    @property
    def num_classes(self) -> int:
        return self.rec.num_classes

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict | None:
        key = int(self.keys[index])
        try:
            label, data = self.rec.sample(key)
            image = decode_image(data, str(self.rec.rec_path), record=key)
        except DataFormatError as err:
            handle_corrupt(self.on_corrupt, err, self.corrupt_log)
            return None
        size = torch.tensor(image.shape[:2], dtype=torch.int64)
        image = resize_uint8(image, self.image_size) if self.image_size is not None else image
        if self.transform is not None:
            image = self.transform(image)
        item = {"image": to_tensor(image), "identity": label, "size": size, "index": index}
        if self.pose is not None:
            item["yaw"] = torch.tensor(self.pose[index, 0])
        return item


class VerificationPairs(Dataset):
    """The image pairs of an InsightFace ``.bin`` set.

    Items: ``image1``, ``image2`` float32 3×H×W in [0, 1], ``issame`` bool, ``index`` (pair index).
    Every image must decode (no ``on_corrupt`` skip): dropping a pair would change the benchmark's protocol.

    Args:
        bin_path: the ``.bin`` file.
        image_size: resize to this (int or (H, W)); None keeps the stored size.
        lazy: keep the encoded bytes and decode per item instead of decoding all 2P images up front (an LFW-size set
            is ~60 MB encoded, ~450 MB decoded at 112×112).
    """

    def __init__(self, bin_path: str | Path, image_size: int | tuple[int, int] | None = None, lazy: bool = False):
        self.bin_path = Path(bin_path)
        self.name = self.bin_path.stem
        self.image_size = image_size
        self.lazy = lazy
        self._encoded, self.issame = load_bin_encoded(self.bin_path)
        self._images: np.ndarray | list[np.ndarray] | None = None
        if not lazy:
            images = [self._decode(i) for i in range(len(self._encoded))]
            shapes = {im.shape for im in images}
            # one contiguous block instead of 12k small arrays: fewer objects for forked workers to touch
            self._images = np.stack(images) if len(shapes) == 1 else images
            self._encoded = None

    def _decode(self, i: int) -> np.ndarray:
        image = decode_image(self._encoded[i], str(self.bin_path), record=i)
        return resize_uint8(image, self.image_size) if self.image_size is not None else image

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` of the 2P as H×W×3 uint8 RGB."""
        return self._images[i] if self._images is not None else self._decode(i)

    def __len__(self) -> int:
        return int(self.issame.size)

    def __getitem__(self, index: int) -> dict:
        return {"image1": to_tensor(self.image(2 * index)), "image2": to_tensor(self.image(2 * index + 1)),
                "issame": bool(self.issame[index]), "index": index}


class MS1MDataModule(FaceDataModule):
    """MS1M training images + ``.bin`` verification sets.

    Args:
        root: the InsightFace folder (``train.rec``, ``train.idx``, ``property``, ``*.bin``).
        val_sets: names of the ``.bin`` sets to validate on, in order. None (default) takes those of
            ``("lfw", "cfp_fp", "agedb_30")`` whose ``.bin`` exists; an explicit list requires every set and raises
            if one is missing. ``[]`` disables validation.
        transform: per-sample training transform on the uint8 RGB array, or None.
        image_size: training / validation image size (int or (H, W)); None keeps the stored size.
        batch_size, num_workers, pin_memory, on_corrupt: see :class:`FaceDataModule`.
        lazy_val: decode ``.bin`` images per item rather than at setup.
    """

    def __init__(self, root: str | Path, val_sets: Sequence[str] | None = None,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 image_size: int | tuple[int, int] | None = 112, batch_size: int = 64, num_workers: int = 0,
                 pin_memory: bool = False, on_corrupt: str = "error", lazy_val: bool = False):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, on_corrupt=on_corrupt)
        self.root = Path(root)
        self.requested_val_sets = None if val_sets is None else [str(v) for v in val_sets]
        self.transform = transform
        self.image_size = image_size
        self.lazy_val = lazy_val
        self.train_set: MS1MDataset | None = None
        self.val_datasets: list[VerificationPairs] = []
        self._num_classes: int | None = None

    @property
    def val_set_names(self) -> list[str]:
        """The validation sets used, in order (what exists, or what was asked for)."""
        if self.requested_val_sets is None:
            return [name for name in DEFAULT_VAL_SETS if (self.root / f"{name}.bin").is_file()]
        missing = [name for name in self.requested_val_sets if not (self.root / f"{name}.bin").is_file()]
        if missing:
            present = sorted(p.stem for p in self.root.glob("*.bin"))
            raise FileNotFoundError(f"{self.root}: verification set(s) {missing} not found (no "
                                    f"{', '.join(m + '.bin' for m in missing)}); .bin sets present: "
                                    f"{present or 'none'}")
        return list(self.requested_val_sets)

    @property
    def num_classes(self) -> int:
        """Number of identities: from the training set after ``setup()``, else from ``property`` / the meta record."""
        if self.train_set is not None:
            return self.train_set.num_classes
        if self._num_classes is None:
            prop = self.root / "property"
            self._num_classes = read_property(prop)[0] if prop.is_file() else InsightFaceRec(self.root).num_classes
        return self._num_classes

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = MS1MDataset(self.root, transform=self.transform, image_size=self.image_size,
                                         on_corrupt=self.on_corrupt)
        if stage in (None, "fit", "validate", "test") and not self.val_datasets:
            self.val_datasets = [VerificationPairs(self.root / f"{name}.bin", image_size=self.image_size,
                                                   lazy=self.lazy_val) for name in self.val_set_names]

    def train_dataloader(self):
        if self.train_set is None:
            self.setup("fit")
        return self.loader(self.train_set, train=True)

    def val_dataloader(self):
        if not self.val_datasets:
            self.setup("validate")
        return [self.loader(ds, train=False) for ds in self.val_datasets]

    def test_dataloader(self):
        return self.val_dataloader()
