"""Thumbnails to upscale with PULSE: a folder of images, or a CelebA split made into realizable thumbnails.

- ``source="folder"``: every image file under ``root`` (recursive, sorted). A face already thumbnail-sized is used as
  is (resized to ``size``); a larger photo is detected and aligned with MTCNN when ``mtcnn_weights`` is given
  (:func:`lrface.upscale.make_thumbnail`: similarity warp onto the generator template at ``hr_size``, then PULSE's
  bicubic downscaler), otherwise resized as is. With a detector, items also carry the ground truth ``hr``: the aligned
  canvas the thumbnail was downscaled from, or, where no face was found, the photo's centre square at that size
  (the framing an undetected thumbnail is taken to have, as ``lrface upscale`` judges it).
- ``source="celeba"``: each image of the split is warped by its five CelebA landmarks onto the FFHQ template at
  ``hr_size`` (the framing of every generator, see ``lrface.align.ffhq_template``) — the ground truth ``hr`` — and
  downscaled to ``size`` with PULSE's own :class:`~lrface.losses.pulse.BicubicDownsample`, the operator the search
  inverts, so a generator that can draw the face can match its thumbnail exactly (thumbnails are not quantised).

Prediction only: one unshuffled DataLoader. Under DDP Lightning's predict wraps it in an *unrepeated* distributed
sampler (no padding), so every index reaches exactly one rank.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import FaceDataModule
from datamodules.celeba import CelebADataset
from datamodules.errors import CorruptLog, DataFormatError, check_on_corrupt, handle_corrupt
from datamodules.image_io import to_tensor
from lrface.align import arcface_template, ffhq_template
from lrface.losses.pulse import BicubicDownsample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
SOURCES = ("folder", "celeba")
TEMPLATES = ("ffhq", "arcface")  # the generator's framing: StyleGAN's FFHQ, or ArcFace's (the DigiFace-1M DCGAN)
DEFAULT_HR_SIZE = 1024  # PULSE's (FFHQ) resolution


def read_image_any(path: Path) -> np.ndarray:
    """Any image file → H×W×3 uint8 RGB (``lrface.upscale``: 16-bit, alpha, grayscale, EXIF orientation).

    Raises:
        DataFormatError: missing or undecodable file, or unsupported pixel format (names the file).
    """
    from lrface.upscale import read_photo, to_rgb_uint8

    try:
        return to_rgb_uint8(read_photo(path), str(path))
    except FileNotFoundError:
        raise DataFormatError(path, "missing image file", expected="an existing image file") from None
    except ValueError as exc:
        raise DataFormatError(path, str(exc), expected="a decodable grayscale, RGB or RGBA image") from None


def _unique_names(files: list[Path], root: Path) -> list[str]:
    """Output names: the path under root without suffix, '/' → '__'; the suffix is kept where stems collide."""
    stems = ["__".join(p.relative_to(root).with_suffix("").parts) for p in files]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [f"{s}_{p.suffix.lstrip('.').lower()}" if counts[s] > 1 else s for s, p in zip(stems, files)]


class FolderThumbnails(Dataset):
    """Every image under ``root`` as a ``size``×``size`` thumbnail.

    Args:
        root: folder (searched recursively) or a single image file.
        size: thumbnail side.
        hr_size: resolution of the template the faces are aligned to (MTCNN path only).
        mtcnn_weights: folder with MTCNN's pnet/rnet/onet ``.pt``; None → no detection (images resized as is).
        limit: keep only the first ``limit`` files (sorted order).
        on_corrupt: ``"error"`` | ``"skip"``.
        template: ``"ffhq"`` | ``"arcface"``: the five-point template faces are aligned to (MTCNN path only).

    Items: ``image`` (3×size×size float in [0, 1]), ``name``, ``index``, ``source`` (file path), ``detected``
    (bool: MTCNN found and aligned a face); with ``mtcnn_weights`` also ``hr`` (3×S×S, S = size·round(hr_size /
    size), the side PULSE's downscaler needs): the aligned face, or the centre square where none was found. Every
    item of a detector-enabled folder has it, so batches mixing found and missed faces still collate.
    """

    def __init__(self, root: str | Path, size: int, hr_size: int = DEFAULT_HR_SIZE, mtcnn_weights: str | None = None,
                 limit: int | None = None, on_corrupt: str = "error", template: str = "ffhq"):
        root = Path(root)
        if root.is_file():
            files, base = [root], root.parent
        elif root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            base = root
        else:
            raise DataFormatError(root, "no such file or folder", expected="a folder of images or an image file")
        if not files:
            raise DataFormatError(root, "no image files", expected=f"files ending in {', '.join(IMAGE_SUFFIXES)}")
        self.files = files[:limit] if limit is not None else files
        self.names = _unique_names(self.files, base)
        self.size, self.hr_size, self.mtcnn_weights = int(size), int(hr_size), mtcnn_weights
        self.template = _check_template(template)
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.corrupt_log = CorruptLog("thumbnails/folder")
        self._mtcnn = None

    def __len__(self) -> int:
        return len(self.files)

    def _detector(self):
        if self.mtcnn_weights is None:
            return None
        if self._mtcnn is None:  # built lazily: once per DataLoader worker, not pickled into it
            from lrface.nets.mtcnn import MTCNN

            self._mtcnn = MTCNN(self.mtcnn_weights)
        return self._mtcnn

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_mtcnn"] = None
        return state

    def __getitem__(self, index: int):
        from lrface.upscale import make_thumbnail

        path = self.files[index]
        try:
            image = read_image_any(path)
        except DataFormatError as err:
            handle_corrupt(self.on_corrupt, err, self.corrupt_log)
            return None
        mtcnn = self._detector()
        template = (arcface_template if self.template == "arcface" else ffhq_template)(self.hr_size)
        thumb, info = make_thumbnail(image, self.size, template, self.hr_size, mtcnn=mtcnn, detect=mtcnn is not None)
        item = {"image": to_tensor(np.ascontiguousarray(thumb)), "name": self.names[index], "index": index,
                "source": str(path), "detected": bool(info.get("detected", False))}
        if mtcnn is not None:
            item["hr"] = to_tensor(_ground_truth(image, info, template, self.size, self.hr_size))
        return item


def _ground_truth(image: np.ndarray, info: dict, template, size: int, resolution: int) -> np.ndarray:
    """The S×S×3 uint8 canvas :func:`lrface.upscale.make_thumbnail` downscaled (S = size·round(resolution / size)):
    the same similarity of MTCNN's ``info["landmarks"]`` onto ``template·S/resolution``, after the same integer
    area shrink of faces much larger than the canvas; the centre square resized to S when no face was found."""
    import cv2

    from lrface.align import estimate_similarity_np
    from lrface.upscale import _resize_square

    hr = max(1, round(resolution / size)) * size
    if not info.get("detected"):
        return _resize_square(image, hr)
    lm = np.asarray(info["landmarks"], dtype=np.float64)
    dst = np.asarray(torch.as_tensor(template, dtype=torch.float64).cpu().numpy()) * (hr / resolution)
    h, w = image.shape[:2]
    scale = float(np.sqrt(abs(np.linalg.det(estimate_similarity_np(lm, dst)[:, :2]))))
    shrink = int(np.floor(1.0 / scale)) if scale < 1.0 else 1
    if shrink >= 2:
        new_w, new_h = max(1, round(w / shrink)), max(1, round(h / shrink))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        lm = (lm + 0.5) * np.array([new_w / w, new_h / h]) - 0.5
    canvas = cv2.warpAffine(image, estimate_similarity_np(lm, dst), (hr, hr), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    return np.ascontiguousarray(canvas)


class CelebAThumbnails(Dataset):
    """A CelebA split as (ground truth aligned at ``hr_size``, its bicubic thumbnail at ``size``).

    The ground truth is ``CelebADataset(align="ffhq")``: each image warped by its five landmarks onto the FFHQ
    template, the framing the embedded generator is trained on.

    Args:
        root: CelebA folder (either layout, see :mod:`datamodules.celeba`).
        size: thumbnail side; ``hr_size`` must be a multiple of it.
        split: ``"train"`` | ``"valid"`` | ``"test"`` | ``"all"``.
        hr_size: side of the aligned ground truth (normally the generator's resolution).
        limit: keep the first ``limit`` images of the split.
        on_corrupt: ``"error"`` | ``"skip"``.
        template: ``"ffhq"`` | ``"arcface"``: the template the ground truth is warped to.

    Items: ``image`` (3×size×size thumbnail), ``hr`` (3×hr_size×hr_size ground truth), ``landmarks`` (5×2 in
    ``hr``), ``identity``, ``attributes`` (40 floats 0/1), ``size`` (native [H, W]), ``name`` (file stem),
    ``index``.
    """

    def __init__(self, root: str | Path, size: int, split: str = "test", hr_size: int = DEFAULT_HR_SIZE,
                 limit: int | None = None, on_corrupt: str = "error", template: str = "ffhq"):
        if hr_size % size:
            raise ValueError(f"hr_size {hr_size} is not a multiple of the thumbnail size {size}: PULSE's bicubic "
                             "downscaler needs an integer factor (e.g. 1024/32, 64/16)")
        self.celeba = CelebADataset(root, split, image_size=hr_size, align=_check_template(template),
                                    on_corrupt=on_corrupt)
        n = len(self.celeba)
        self.count = n if limit is None else min(n, int(limit))
        self.size, self.hr_size = int(size), int(hr_size)
        self.downsample = BicubicDownsample(hr_size // size)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        item = self.celeba[index]
        if item is None:  # unreadable, skipped and counted by the CelebA dataset (on_corrupt="skip")
            return None
        hr = item.pop("image")
        with torch.no_grad():
            thumb = self.downsample(hr[None])[0].clamp_(0.0, 1.0)
        return {**item, "image": thumb, "hr": hr, "name": Path(self.celeba.names[index]).stem, "index": index}


class ThumbnailDataModule(FaceDataModule):
    """Prediction data for :class:`lightning_modules.pulse_search.PulseSearchModule`.

    Args:
        source: ``"folder"`` or ``"celeba"`` (see the module docstring).
        root: the image folder / file, or the CelebA folder.
        size: thumbnail side (PULSE: 32 for 1024 generators; 16 for the 64 px embedded one).
        split: CelebA split (``source="celeba"``).
        limit: at most this many items.
        hr_size: resolution of the template faces are aligned to: the generator's (default 1024, FFHQ's).
        batch_size: thumbnails per predict step (each searched as its own latent; results do not depend on it).
        num_workers: DataLoader workers.
        mtcnn_weights: MTCNN weights folder for photos in a folder (None: no detection).
        pin_memory: pin host memory.
        on_corrupt: ``"error"`` | ``"skip"`` for unreadable images.
        template: ``"ffhq"`` (StyleGAN generators) | ``"arcface"`` (the DigiFace-1M DCGAN): the generator's framing,
            which the faces are aligned to.
    """

    def __init__(self, source: str = "folder", root: str = "thumbnails", size: int = 16, split: str = "test",
                 limit: int | None = None, hr_size: int | None = None, batch_size: int = 8, num_workers: int = 0,
                 mtcnn_weights: str | None = None, pin_memory: bool = False, on_corrupt: str = "error",
                 template: str = "ffhq"):
        super().__init__(batch_size, num_workers, pin_memory, on_corrupt)
        if source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
        if size < 1 or (limit is not None and limit < 0):
            raise ValueError(f"need size >= 1 and limit >= 0, got size={size}, limit={limit}")
        self.source, self.root, self.size, self.split, self.limit = source, root, int(size), split, limit
        self.hr_size = int(hr_size) if hr_size is not None else DEFAULT_HR_SIZE
        self.mtcnn_weights = mtcnn_weights
        self.template = _check_template(template)
        self.dataset: Dataset | None = None

    def build(self) -> Dataset:
        if self.source == "celeba":
            return CelebAThumbnails(self.root, self.size, self.split, self.hr_size, self.limit, self.on_corrupt,
                                    self.template)
        return FolderThumbnails(self.root, self.size, self.hr_size, self.mtcnn_weights, self.limit, self.on_corrupt,
                                self.template)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = self.build()

    def predict_dataloader(self):
        if self.dataset is None:
            self.setup("predict")
        return self.loader(self.dataset, train=False)


def _check_template(template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"data.template must be one of {TEMPLATES}, got {template!r}")
    return template
