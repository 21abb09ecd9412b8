"""QMUL-SurvFace (Cheng et al. 2018): native low-resolution surveillance faces, training set and both test protocols.

Layout (the release's ``QMUL-SurvFace/`` folder is ``root``)::

    training_set/<pid>/<pid>_camX_Y.jpg                   5,319 identities
    Face_Verification_Test_Set/verification_images/*.jpg
    Face_Verification_Test_Set/{positive,negative}_pairs_names.mat   cells 'positive_pairs_names' / ... (P×2)
    Face_Identification_Test_Set/{gallery,mated_probe,unmated_probe}/*.jpg
    Face_Identification_Test_Set/ or Face_Identification_Evaluation/:
        gallery_img_ID_pairs.mat       'gallery_set' (N×1 names), 'gallery_ids' (N×1 uint16, 1-based)
        mated_probe_img_ID_pairs.mat   'mated_probe_set', 'mated_probe_ids'

Images keep their native, tiny and varied sizes (tens of pixels): every item carries ``size`` = native [H, W], and
:meth:`SurvFaceTrain.native_sizes` gives them all without decoding pixels, so a resolution-routed model (BTNet)
can choose its branch from them.

Batching native sizes (``image_size=None``): :func:`native_collate` returns the images as a **list** of C×h×w
tensors instead of padding them into one tensor. Padding would mix border pixels into what a resolution-specific
branch sees and hide the true size; a list lets the model group images by ``size`` and stack each group itself.
:class:`ResizeCollate` instead resizes every image to one ``resize_to`` side in the collate (area when shrinking,
bicubic + clamp when enlarging) while ``size`` keeps the native resolution. ``SurvFaceDataModule`` picks: dataset
``image_size`` set → ordinary batches; else ``resize_to`` set → :class:`ResizeCollate`; else
:func:`native_collate`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.base import FaceDataModule
from datamodules.errors import CorruptLog, DataFormatError, check_on_corrupt, handle_corrupt, skip_collate
from datamodules.image_io import load_sample, read_image, to_tensor
from datamodules.transforms import apply_transform, build_train_augment, resize_tensor, resize_uint8

log = logging.getLogger("lrface.data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IDENTIFICATION_MAT_DIRS = ("Face_Identification_Test_Set", "Face_Identification_Evaluation")


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise DataFormatError(path, "missing folder", expected=expected)
    return path


def _load_mat(path: Path, variables: Sequence[str]) -> dict:
    import scipy.io

    if not path.is_file():
        raise DataFormatError(path, "missing annotation file",
                              expected=f"a MATLAB .mat file with {', '.join(variables)}")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError / TypeError / MatReadError / OSError for garbage
        raise DataFormatError(path, f"unreadable .mat file ({type(exc).__name__}: {exc})",
                              expected="a MATLAB v5 .mat file") from None
    for name in variables:
        if name not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise DataFormatError(path, f"missing variable {name!r} (found {found})", expected=f"variable {name!r}")
    return mat


def _cell_str(cell, path: Path, record) -> str:
    """A MATLAB cell entry as scipy returns it (``array(['name.jpg'])``, possibly nested) → ``'name.jpg'``."""
    value = cell
    for _ in range(4):
        if isinstance(value, str):
            return value
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(-1)[0]
            continue
        break
    if isinstance(value, (str, np.str_)):
        return str(value)
    raise DataFormatError(path, f"cell is not a file name: {cell!r:.80}", record=record, expected="a char array")


def _mat_names(mat: dict, name: str, path: Path) -> list[str]:
    cells = np.asarray(mat[name], dtype=object).reshape(-1)
    return [_cell_str(c, path, f"{name}[{i}]") for i, c in enumerate(cells)]


def _image_size(path: Path) -> tuple[int, int]:
    """Native (H, W) from the file header (no pixel decode)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except FileNotFoundError:
        raise DataFormatError(path, "missing image file", expected="an existing JPEG/PNG file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataFormatError(path, f"unreadable image header ({exc})", expected="a JPEG/PNG file") from None


class SurvFaceImages(Dataset):
    """A list of SurvFace image files with labels (the training set and each identification part).

    Args:
        paths: image files.
        identities: int per image, 0-based (-1 = unknown / not enrolled).
        distractor: bool per image (unlabelled ``distractors_*`` images of the unmated probe set).
        transform: per-sample callable on the H×W×3 uint8 RGB image.
        image_size: resize every image to this side (or (h, w)); None keeps the native size.
        on_corrupt: ``"error"`` | ``"skip"``.
        name: for logs.

    Items: ``image`` (3×h×w float in [0, 1]), ``identity`` (int64), ``distractor`` (bool), ``size`` (int64 native
    [H, W]), ``index``.
    """

    def __init__(self, paths: Sequence[Path], identities: Sequence[int] | np.ndarray, distractor=None,
                 transform: Callable | None = None, image_size: int | tuple[int, int] | None = None,
                 on_corrupt: str = "error", name: str = "survface"):
        self.paths = [Path(p) for p in paths]
        self.identities = np.asarray(identities, dtype=np.int64)
        self.distractor = (np.zeros(len(self.paths), bool) if distractor is None
                           else np.asarray(distractor, dtype=bool))
        if not len(self.paths) == len(self.identities) == len(self.distractor):
            raise ValueError("paths, identities and distractor flags differ in length")
        self.transform, self.image_size, self.name = transform, image_size, name
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.corrupt_log = CorruptLog(name)
        self._sizes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def native_sizes(self) -> np.ndarray:
        """N×2 int64 native [H, W] of every image, read from the file headers once and cached.

        Under ``on_corrupt="skip"`` an unreadable header gives [0, 0] (and is counted); ``__getitem__`` will then
        skip that item too.
        """
        if self._sizes is None:
            sizes = np.zeros((len(self.paths), 2), dtype=np.int64)
            for i, p in enumerate(self.paths):
                try:
                    sizes[i] = _image_size(p)
                except DataFormatError as err:
                    handle_corrupt(self.on_corrupt, err, self.corrupt_log)
            self._sizes = sizes
        return self._sizes

    def __getitem__(self, index: int):
        sample = load_sample(self.paths[index], image_size=self.image_size, transform=self.transform,
                             on_corrupt=self.on_corrupt, corrupt_log=self.corrupt_log)
        if sample is None:
            return None
        image, native = sample
        return {"image": image, "identity": torch.tensor(int(self.identities[index]), dtype=torch.int64),
                "distractor": bool(self.distractor[index]), "size": torch.tensor(native, dtype=torch.int64),
                "index": index}


class SurvFaceTrain(SurvFaceImages):
    """``training_set/<pid>/*.jpg``; identity = index of the pid folder in sorted order (numeric if all pids are
    integers, as in the release), 0-based. Folders without images are ignored (and logged)."""

    def __init__(self, root: str | Path, transform: Callable | None = None,
                 image_size: int | tuple[int, int] | None = None, on_corrupt: str = "error"):
        self.root = Path(root)
        folder = _require_dir(self.root / "training_set", "training_set/<pid>/*.jpg")
        pids = [p for p in folder.iterdir() if p.is_dir()]
        numeric = all(p.name.isdigit() for p in pids)
        pids.sort(key=(lambda p: (int(p.name), p.name)) if numeric else (lambda p: p.name))
        paths, ids, self.pids = [], [], []
        for pid_dir in pids:
            files = _list_images(pid_dir)
            if not files:
                log.warning("%s: no images, identity folder ignored", pid_dir)
                continue
            paths += files
            ids += [len(self.pids)] * len(files)
            self.pids.append(pid_dir.name)
        if not paths:
            raise DataFormatError(folder, "no training images", expected="training_set/<pid>/*.jpg")
        super().__init__(paths, ids, transform=transform, image_size=image_size, on_corrupt=on_corrupt,
                         name="survface/train")
        self.num_identities = len(self.pids)


class SurvFaceVerification(Dataset):
    """The verification protocol's 5,320 positive then 5,320 negative pairs.

    Items: ``image1``, ``image2`` (native sizes unless ``image_size``), ``issame`` (bool), ``size1``, ``size2``
    (int64 native [H, W]), ``index``.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None,
                 image_size: int | tuple[int, int] | None = None, on_corrupt: str = "error"):
        self.root = Path(root)
        base = _require_dir(self.root / "Face_Verification_Test_Set",
                            "Face_Verification_Test_Set/ with verification_images/ and the pair .mat files")
        self.image_dir = _require_dir(base / "verification_images", "verification_images/*.jpg")
        pairs, same = [], []
        for kind, issame in (("positive", True), ("negative", False)):
            path = base / f"{kind}_pairs_names.mat"
            var = f"{kind}_pairs_names"
            cells = _load_mat(path, [var])[var]
            if cells.ndim != 2 or cells.shape[1] != 2:
                raise DataFormatError(path, f"{var} has shape {cells.shape}", expected="a P×2 cell array")
            for i in range(cells.shape[0]):
                pairs.append((_cell_str(cells[i][0], path, f"{var}[{i}][0]"),
                              _cell_str(cells[i][1], path, f"{var}[{i}][1]")))
                same.append(issame)
        self.pairs, self.issame = pairs, np.asarray(same, dtype=bool)
        self.transform, self.image_size = transform, image_size
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.corrupt_log = CorruptLog("survface/verification")

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, name: str):
        image = read_image(self.image_dir / name)
        native = image.shape[:2]
        if self.image_size is not None:
            image = resize_uint8(image, self.image_size)
        image, _ = apply_transform(self.transform, image)
        return to_tensor(image), torch.tensor(native, dtype=torch.int64)

    def __getitem__(self, index: int):
        try:
            (im1, s1), (im2, s2) = (self._load(n) for n in self.pairs[index])
        except DataFormatError as err:
            handle_corrupt(self.on_corrupt, err, self.corrupt_log)
            return None
        return {"image1": im1, "image2": im2, "issame": bool(self.issame[index]), "size1": s1, "size2": s2,
                "index": index}


def find_identification_mat(root: str | Path, filename: str) -> Path:
    """An identification ``.mat`` file in ``Face_Identification_Test_Set/`` or ``Face_Identification_Evaluation/``."""
    root = Path(root)
    for folder in IDENTIFICATION_MAT_DIRS:
        if (root / folder / filename).is_file():
            return root / folder / filename
    raise DataFormatError(root / IDENTIFICATION_MAT_DIRS[0] / filename, "missing annotation file",
                          expected=f"{filename} in {' or '.join(d + '/' for d in IDENTIFICATION_MAT_DIRS)}")


class SurvFaceIdentification:
    """The open-set identification protocol: ``gallery``, ``mated_probe`` and ``unmated_probe`` image sets.

    Gallery and mated-probe identities come from the ``.mat`` files (1-based uint16 → 0-based); every mated-probe
    identity must be enrolled in the gallery. Unmated probes (all images of ``unmated_probe/``) get identity -1;
    the unlabelled ``distractors_*`` images among them have ``distractor=True``.

    Attributes:
        gallery, mated_probe, unmated_probe: :class:`SurvFaceImages`.
        parts: the three by name.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None,
                 image_size: int | tuple[int, int] | None = None, on_corrupt: str = "error"):
        self.root = Path(root)
        base = _require_dir(self.root / "Face_Identification_Test_Set",
                            "Face_Identification_Test_Set/{gallery,mated_probe,unmated_probe}/")
        kw = dict(transform=transform, image_size=image_size, on_corrupt=on_corrupt)
        labelled = {}
        for part, stem in (("gallery", "gallery"), ("mated_probe", "mated_probe")):
            path = find_identification_mat(self.root, f"{stem}_img_ID_pairs.mat")
            set_var, id_var = f"{stem}_set", f"{stem}_ids"
            mat = _load_mat(path, [set_var, id_var])
            names = _mat_names(mat, set_var, path)
            raw = np.asarray(mat[id_var]).reshape(-1)
            if len(raw) != len(names):
                raise DataFormatError(path, f"{len(names)} names but {len(raw)} ids", record=id_var,
                                      expected=f"one id per entry of {set_var}")
            if raw.size and (not np.issubdtype(raw.dtype, np.number) or raw.min() < 1):
                k = int(np.argmax(raw < 1)) if np.issubdtype(raw.dtype, np.number) else 0
                raise DataFormatError(path, f"id {raw[k]!r}", record=f"{id_var}[{k}]", expected="1-based integer ids")
            folder = _require_dir(base / part, f"{part}/*.jpg")
            labelled[part] = (path, [folder / n for n in names], raw.astype(np.int64) - 1)
        gallery_ids = set(labelled["gallery"][2].tolist())
        path, _, probe_ids = labelled["mated_probe"]
        missing = [i for i, pid in enumerate(probe_ids.tolist()) if pid not in gallery_ids]
        if missing:
            raise DataFormatError(path, f"mated probe identity {probe_ids[missing[0]] + 1} is not in the gallery",
                                  record=f"mated_probe_ids[{missing[0]}]", expected="ids enrolled in the gallery")
        self.gallery = SurvFaceImages(labelled["gallery"][1], labelled["gallery"][2], name="survface/gallery", **kw)
        self.mated_probe = SurvFaceImages(labelled["mated_probe"][1], labelled["mated_probe"][2],
                                          name="survface/mated_probe", **kw)
        unmated = _list_images(_require_dir(base / "unmated_probe", "unmated_probe/*.jpg"))
        self.unmated_probe = SurvFaceImages(unmated, np.full(len(unmated), -1),
                                            [p.name.startswith("distractor") for p in unmated],
                                            name="survface/unmated_probe", **kw)
        self.parts = {"gallery": self.gallery, "mated_probe": self.mated_probe, "unmated_probe": self.unmated_probe}

    def __getitem__(self, part: str) -> SurvFaceImages:
        return self.parts[part]


def native_collate(batch: Sequence[dict | None]) -> dict | None:
    """Collate items of differing image sizes: tensors that all share a shape are stacked, others (the images)
    become a list; other values go through ``default_collate``. Skipped (``None``) items are dropped."""
    items = [b for b in batch if b is not None]
    if not items:
        return None
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor) and any(v.shape != values[0].shape for v in values):
            out[key] = values
        else:
            out[key] = default_collate(values)
    return out


class ResizeCollate:
    """Collate that resizes every ``image*`` tensor to ``resize_to``×``resize_to`` (area down, bicubic up, clamped
    to [0, 1]) and stacks; ``size*`` entries keep the native resolution. Skipped items are dropped."""

    def __init__(self, resize_to: int):
        self.resize_to = int(resize_to)

    def __call__(self, batch: Sequence[dict | None]) -> dict | None:
        items = [b for b in batch if b is not None]
        if not items:
            return None
        side = (self.resize_to, self.resize_to)
        resized = [{k: (resize_tensor(v[None], side)[0] if k.startswith("image") and torch.is_tensor(v) else v)
                    for k, v in it.items()} for it in items]
        return default_collate(resized)


class SurvFaceDataModule(FaceDataModule):
    """QMUL-SurvFace: training set for fit, verification pairs for validation, identification parts for test.

    ``test_dataloader`` returns three loaders in the order gallery, mated_probe, unmated_probe (Lightning runs them
    sequentially with ``dataloader_idx`` 0, 1, 2).

    Args:
        root: the ``QMUL-SurvFace/`` folder.
        image_size: resize in the dataset (fixed-size batches); None keeps native sizes.
        resize_to: with ``image_size=None``, resize in the collate instead (items keep their native ``size``);
            None → images stay native and batches hold lists (see module docstring).
        train_transform: callable, or a mapping of :func:`~datamodules.transforms.build_train_augment` kwargs.
        batch_size, num_workers, pin_memory, on_corrupt: see :class:`FaceDataModule`.
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False,
                 on_corrupt: str = "error", image_size: int | None = None, resize_to: int | None = None,
                 train_transform: Callable | Mapping | None = None):
        super().__init__(batch_size, num_workers, pin_memory, on_corrupt)
        self.root, self.image_size, self.resize_to = root, image_size, resize_to
        self.train_transform = (build_train_augment(**dict(train_transform)) if isinstance(train_transform, Mapping)
                                else train_transform)
        self.train_set: SurvFaceTrain | None = None
        self.val_set: SurvFaceVerification | None = None
        self.test_set: SurvFaceIdentification | None = None

    @property
    def collate_fn(self):
        if self.image_size is not None:
            return skip_collate
        return ResizeCollate(self.resize_to) if self.resize_to is not None else native_collate

    def setup(self, stage: str | None = None) -> None:
        kw = dict(image_size=self.image_size, on_corrupt=self.on_corrupt)
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = SurvFaceTrain(self.root, transform=self.train_transform, **kw)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = SurvFaceVerification(self.root, **kw)
        if stage in (None, "test") and self.test_set is None:
            self.test_set = SurvFaceIdentification(self.root, **kw)

    @property
    def num_classes(self) -> int | None:
        """Training identities (5,319 in the release), known after ``setup("fit")``."""
        return None if self.train_set is None else self.train_set.num_identities

    val_set_names = ("survface",)

    def native_sizes(self, part: str = "train") -> np.ndarray:
        """N×2 native [H, W] of ``"train"`` or an identification part (``"gallery"``, ``"mated_probe"``,
        ``"unmated_probe"``)."""
        if part == "train":
            if self.train_set is None:
                self.setup("fit")
            return self.train_set.native_sizes()
        if self.test_set is None:
            self.setup("test")
        return self.test_set[part].native_sizes()

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        return self.loader(dataset, train=train, collate_fn=self.collate_fn)

    def train_dataloader(self):
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        return self._loader(self.val_set, train=False)

    def test_dataloader(self):
        return [self._loader(self.test_set[p], train=False) for p in ("gallery", "mated_probe", "unmated_probe")]
