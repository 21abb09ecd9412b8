"""FairFace (Kärkkäinen & Joo, WACV 2021): race / gender / age labelled faces from ``fairface_label_{train,val}.csv``.

Each CSV has the header ``file,age,gender,race,service_test``; ``file`` (``train/1.jpg``) is relative to the image
folder of the chosen margin (``fairface-img-margin025-trainval/`` for padding 0.25, the paper's main setting, or
``fairface-img-margin125-trainval/`` for 1.25). Labels are mapped to indices in the canonical orders below (race
order = the official model's ``RACE_MAP``; ages in age order, not string order). The CSV says ``more than 70``
while the official model code says ``70+``: both are accepted. ``service_test == True`` marks the subset balanced
over race × gender within each age group (``balanced_only=True`` keeps only it).

``align="ffhq"`` reframes every chip for the StyleGAN generators (whose outputs the Table 2 race judge classifies):
the chips come from dlib ``get_face_chip``, which maps each face's landmarks onto dlib's mean-face template
(:func:`lrface.align.dlib_chip_template_np`), so one fixed similarity — that template onto the FFHQ template
(:func:`lrface.align.ffhq_template_np`) — moves every chip into the generators' framing.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import FaceDataModule
from datamodules.errors import CorruptLog, DataFormatError, check_on_corrupt, handle_corrupt
from datamodules.image_io import load_sample, read_image, to_tensor
from datamodules.transforms import apply_transform, build_train_augment, resize_uint8
from lrface.align import dlib_chip_template_np, estimate_similarity_np, ffhq_template_np, warp_np
from lrface.labels import RACE_NAMES

FAIRFACE_RACES = RACE_NAMES
FAIRFACE_GENDERS = ("Male", "Female")
FAIRFACE_AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
FAIRFACE_HEADER = ("file", "age", "gender", "race", "service_test")
FAIRFACE_MARGIN_DIRS = {0.25: "fairface-img-margin025-trainval", 1.25: "fairface-img-margin125-trainval"}
FAIRFACE_ALIGNS = (None, "ffhq")

_AGE_ALIASES = {"70+": "more than 70"}
_BOOLS = {"True": True, "False": False, "true": True, "false": False, "TRUE": True, "FALSE": False}


def find_fairface_images(root: str | Path, margin: float) -> Path:
    """The image folder of one margin (the folder holding ``train/`` and ``val/``)."""
    root = Path(root)
    if margin not in FAIRFACE_MARGIN_DIRS:
        raise ValueError(f"margin must be one of {tuple(FAIRFACE_MARGIN_DIRS)}, got {margin!r}")
    name = FAIRFACE_MARGIN_DIRS[margin]
    candidates = [root / name, root / name / name]
    if margin == 0.25:
        candidates.append(root)  # the 0.25 zip extracted straight into root
    for folder in candidates:
        if (folder / "train").is_dir() or (folder / "val").is_dir():
            return folder
    raise DataFormatError(root / name, f"missing image folder for margin {margin}",
                          expected=f"{name}/train/ and {name}/val/ (the contents of {name}.zip)")


def read_fairface_csv(path: str | Path) -> dict[str, np.ndarray | list[str]]:
    """Parse a FairFace label CSV; any deviation raises :class:`DataFormatError` with the line.

    Returns:
        dict with ``file`` (list of str), ``age``, ``gender``, ``race`` (int64 indices) and ``service_test`` (bool).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "missing annotation file",
                              expected=f"a CSV with header {','.join(FAIRFACE_HEADER)}")
    files: list[str] = []
    ages, genders, races, service = [], [], [], []
    # utf-8-sig: a CSV re-saved by a spreadsheet starts with a BOM, which would corrupt the first header name.
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != FAIRFACE_HEADER:
                raise DataFormatError(path, f"wrong header {','.join(header or [])!r}", line=1,
                                      expected=",".join(FAIRFACE_HEADER))
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(FAIRFACE_HEADER):
                    raise DataFormatError(path, f"{len(row)} fields", line=line,
                                          expected=f"{len(FAIRFACE_HEADER)} fields: {','.join(FAIRFACE_HEADER)}")
                file, age, gender, race, st = (c.strip() for c in row)
                if not file or file.startswith(("/", "\\")) or ".." in Path(file).parts:
                    raise DataFormatError(path, f"bad file path {file!r}", line=line,
                                          expected="a relative path such as train/1.jpg")
                age = _AGE_ALIASES.get(age, age)
                for value, vocab, column in ((age, FAIRFACE_AGES, "age"), (gender, FAIRFACE_GENDERS, "gender"),
                                             (race, FAIRFACE_RACES, "race")):
                    if value not in vocab:
                        allowed = ", ".join(repr(v) for v in vocab) + (" (or '70+')" if column == "age" else "")
                        raise DataFormatError(path, f"unknown {column} {value!r}", line=line,
                                              expected=f"one of {allowed}")
                if st not in _BOOLS:
                    raise DataFormatError(path, f"bad service_test {st!r}", line=line, expected="True or False")
                files.append(file)
                ages.append(FAIRFACE_AGES.index(age))
                genders.append(FAIRFACE_GENDERS.index(gender))
                races.append(FAIRFACE_RACES.index(race))
                service.append(_BOOLS[st])
        except csv.Error as exc:
            raise DataFormatError(path, f"malformed CSV ({exc})", line=reader.line_num,
                                  expected="comma-separated fields") from None
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, f"not UTF-8 text ({exc.reason})", offset=exc.start,
                                  expected="a UTF-8 CSV") from None
    if not files:
        raise DataFormatError(path, "no data rows", line=2, expected="one row per image after the header")
    return {"file": files, "age": np.asarray(ages, np.int64), "gender": np.asarray(genders, np.int64),
            "race": np.asarray(races, np.int64), "service_test": np.asarray(service, bool)}


class FairFaceDataset(Dataset):
    """FairFace images with race, gender and age labels.

    Args:
        root: folder with ``fairface_label_{train,val}.csv`` and the margin image folders.
        split: ``"train"`` or ``"val"``.
        margin: 0.25 or 1.25 (which image folder).
        balanced_only: keep only ``service_test == True`` rows.
        transform: per-sample callable on the H×W×3 uint8 RGB image (applied last, after alignment / resize).
        image_size: resize to this side (or (h, w)); None keeps the native size. With ``align="ffhq"`` the side of
            the warped square output (required, an int).
        on_corrupt: ``"error"`` | ``"skip"`` for unreadable images.
        align: None keeps dlib's chip framing; ``"ffhq"`` warps every image by the fixed similarity that takes the
            dlib face-chip template of this margin (:func:`lrface.align.dlib_chip_template_np` at the file's size)
            onto the FFHQ template at ``image_size`` (:func:`lrface.align.ffhq_template_np`), the framing of the
            StyleGAN generators. On real FairFace this is the approximation dlib's own alignment implies (every chip
            was fitted to the mean-face template), not a per-image landmark fit: FairFace ships no landmarks. The
            synthetic FairFace is rendered on exactly that template, so there it is exact up to detection noise.

    Items: ``image`` (3×H×W float in [0, 1]), ``race`` / ``gender`` / ``age`` (int64 indices into
    :data:`FAIRFACE_RACES` / :data:`FAIRFACE_GENDERS` / :data:`FAIRFACE_AGES`), ``service_test`` (bool), ``size``
    (int64 native [H, W]), ``index``.
    """

    def __init__(self, root: str | Path, split: str = "train", margin: float = 0.25, balanced_only: bool = False,
                 transform: Callable | None = None, image_size: int | tuple[int, int] | None = None,
                 on_corrupt: str = "error", align: str | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if align not in FAIRFACE_ALIGNS:
            raise ValueError(f"align must be one of {FAIRFACE_ALIGNS}, got {align!r}")
        if align is not None and not isinstance(image_size, (int, np.integer)):
            raise ValueError(f"align={align!r} needs a square output side, got image_size={image_size!r}")
        self.align = align
        self._matrices: dict[tuple[int, int], np.ndarray] = {}
        self.root, self.split, self.margin = Path(root), split, float(margin)
        self.transform, self.image_size = transform, image_size
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.corrupt_log = CorruptLog(f"fairface/{split}")
        self.csv_path = self.root / f"fairface_label_{split}.csv"
        table = read_fairface_csv(self.csv_path)
        self.image_root = find_fairface_images(self.root, self.margin)
        keep = np.flatnonzero(table["service_test"]) if balanced_only else np.arange(len(table["file"]))
        self.files = [table["file"][i] for i in keep]
        self.races, self.genders, self.ages = table["race"][keep], table["gender"][keep], table["age"][keep]
        self.service_test = table["service_test"][keep]

    def __len__(self) -> int:
        return len(self.files)

    def label_counts(self, column: str) -> np.ndarray:
        """Images per class of ``"race"`` (7), ``"gender"`` (2) or ``"age"`` (9) on this dataset."""
        values, n = {"race": (self.races, 7), "gender": (self.genders, 2), "age": (self.ages, 9)}[column]
        return np.bincount(values, minlength=n)

    def align_matrix(self, native_hw: tuple[int, int]) -> np.ndarray:
        """The 2×3 similarity (float64, source → output pixels) that ``align`` applies to a chip of ``native_hw``."""
        key = (int(native_hw[0]), int(native_hw[1]))
        if key not in self._matrices:
            self._matrices[key] = estimate_similarity_np(dlib_chip_template_np(key, self.margin),
                                                         ffhq_template_np(int(self.image_size)))
        return self._matrices[key]

    def _load_aligned(self, path: Path):
        try:
            image = read_image(path)
        except DataFormatError as err:
            handle_corrupt(self.on_corrupt, err, self.corrupt_log)
            return None
        native = image.shape[:2]
        matrix = self.align_matrix(native)
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        if scale < 0.8:
            # a bilinear warp that shrinks 2-5× (224 px chips → 64 px) aliases: shrink first with PIL's antialiased
            # bicubic, then warp at about 1:1 with the matrix re-expressed in the smaller image's pixels
            small = resize_uint8(image, (max(1, round(native[0] * scale)), max(1, round(native[1] * scale))))
            sy, sx = small.shape[0] / native[0], small.shape[1] / native[1]
            # resize: u' = (u + 0.5)·s − 0.5 (pixel centres at integers), so u = (u' + 0.5)/s − 0.5
            a = matrix[:, :2] / np.array([sx, sy])
            t = matrix[:, 2] + matrix[:, :2] @ np.array([0.5 / sx - 0.5, 0.5 / sy - 0.5])
            image, matrix = small, np.concatenate([a, t[:, None]], axis=1)
        image = warp_np(image, matrix, int(self.image_size))
        image, _ = apply_transform(self.transform, image)
        return to_tensor(image), native

    def __getitem__(self, index: int):
        path = self.image_root / self.files[index]
        if self.align is None:
            sample = load_sample(path, image_size=self.image_size, transform=self.transform,
                                 on_corrupt=self.on_corrupt, corrupt_log=self.corrupt_log)
        else:
            sample = self._load_aligned(path)
        if sample is None:
            return None
        image, native = sample
        return {
            "image": image,
            "race": torch.tensor(int(self.races[index]), dtype=torch.int64),
            "gender": torch.tensor(int(self.genders[index]), dtype=torch.int64),
            "age": torch.tensor(int(self.ages[index]), dtype=torch.int64),
            "service_test": bool(self.service_test[index]),
            "size": torch.tensor(native, dtype=torch.int64),
            "index": index,
        }


class FairFaceDataModule(FaceDataModule):
    """FairFace train / val loaders (the paper trains the race head C_R on train and tests on val images).

    Args:
        root: FairFace folder.
        margin: 0.25 (default, the paper's main setting) or 1.25.
        balanced_only: keep only the ``service_test`` balanced subset (both splits).
        image_size: resize side (112 for the recognition nets); None keeps the native size; with ``align`` the
            aligned output side.
        align: None or ``"ffhq"`` (see :class:`FairFaceDataset`).
        train_transform: callable, or a mapping of :func:`~datamodules.transforms.build_train_augment` kwargs.
        batch_size, num_workers, pin_memory, on_corrupt: see :class:`FaceDataModule`.
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False,
                 on_corrupt: str = "error", margin: float = 0.25, balanced_only: bool = False,
                 image_size: int | None = 112, train_transform: Callable | Mapping | None = None,
                 align: str | None = None):
        super().__init__(batch_size, num_workers, pin_memory, on_corrupt)
        self.root, self.margin, self.balanced_only, self.image_size = root, margin, balanced_only, image_size
        self.align = align
        self.train_transform = (build_train_augment(**dict(train_transform)) if isinstance(train_transform, Mapping)
                                else train_transform)
        self.train_set = self.val_set = None

    def _make(self, split: str, transform=None) -> FairFaceDataset:
        return FairFaceDataset(self.root, split, margin=self.margin, balanced_only=self.balanced_only,
                               transform=transform, image_size=self.image_size, on_corrupt=self.on_corrupt,
                               align=self.align)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._make("train", self.train_transform)
        if stage in (None, "fit", "validate", "test") and self.val_set is None:
            self.val_set = self._make("val")

    def train_dataloader(self):
        return self.loader(self.train_set, train=True)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False)

    def test_dataloader(self):
        return self.loader(self.val_set, train=False)
