"""CelebA (aligned 178×218 crops): attributes, identities, splits and 5-point landmarks, parsed from the release files.

The annotation files are parsed here rather than through ``torchvision.datasets.CelebA``: torchvision MD5-checks
every file (so a synthetic or re-exported copy fails) and reports bad rows without a line number. Files are
whitespace-separated with padding runs (split on any whitespace, never on one space); ``list_attr_celeba.txt`` and
``list_landmarks_align_celeba.txt`` start with a row-count line and a column-name line. Attributes ±1 become 0/1,
identities 1..10177 become 0-based. ``list_bbox_celeba.txt`` is deliberately never read: its boxes belong to the
in-the-wild ``img_celeba`` images, not to the aligned crops (pytorch/vision #9008); aligned geometry comes from the
landmarks.

Two layouts are accepted under ``root``: the torchvision flat one (``img_align_celeba/`` and the txt files side by
side, also under ``root/celeba/``) and the original release (``Img/img_align_celeba/``, ``Anno/*.txt``,
``Eval/list_eval_partition.txt``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from datamodules.base import FaceDataModule
from datamodules.errors import CorruptLog, DataFormatError, check_on_corrupt, handle_corrupt
from datamodules.identity_batches import IdentityBatchSampler
from datamodules.image_io import read_image, to_tensor
from datamodules.transforms import apply_transform, build_train_augment, resize_uint8, scale_points
from lrface.align import arcface_template_np, estimate_similarity_np, transform_points_np, warp_np

from lrface.labels import CELEBA_ATTRIBUTES  # noqa: F401  (re-exported: the CelebA column order)
CELEBA_LANDMARK_COLUMNS = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                           "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")
CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2, "all": None}

_ANNOTATIONS = ("list_attr_celeba.txt", "identity_CelebA.txt", "list_eval_partition.txt",
                "list_landmarks_align_celeba.txt")


@dataclass(frozen=True)
class CelebAFiles:
    """Resolved paths of one CelebA copy."""

    images: Path
    attributes: Path
    identities: Path
    partition: Path
    landmarks: Path
    layout: str  # "flat" (torchvision) or "original" (Img/ Anno/ Eval/)


def find_celeba_files(root: str | Path) -> CelebAFiles:
    """Locate the image folder and the four annotation files in either layout; missing pieces raise."""
    root = Path(root)
    if (root / "Anno").is_dir() or (root / "Img").is_dir() or (root / "Eval").is_dir():
        files = CelebAFiles(root / "Img" / "img_align_celeba", root / "Anno" / "list_attr_celeba.txt",
                            root / "Anno" / "identity_CelebA.txt", root / "Eval" / "list_eval_partition.txt",
                            root / "Anno" / "list_landmarks_align_celeba.txt", "original")
    elif not (root / "list_attr_celeba.txt").exists() and (root / "celeba").is_dir():
        return find_celeba_files(root / "celeba")  # torchvision's base_folder
    else:
        files = CelebAFiles(root / "img_align_celeba", root / "list_attr_celeba.txt", root / "identity_CelebA.txt",
                            root / "list_eval_partition.txt", root / "list_landmarks_align_celeba.txt", "flat")
    for path in (files.attributes, files.identities, files.partition, files.landmarks):
        if not path.is_file():
            raise DataFormatError(path, "missing annotation file",
                                  expected=f"the CelebA {files.layout} layout under {root}: "
                                           + ("Anno/{list_attr_celeba,identity_CelebA,list_landmarks_align_celeba}"
                                              ".txt and Eval/list_eval_partition.txt" if files.layout == "original"
                                              else ", ".join(_ANNOTATIONS)))
    if not files.images.is_dir():
        zipped = files.images.with_suffix(".zip")
        hint = f" ({zipped.name} is there: extract it)" if zipped.exists() else ""
        raise DataFormatError(files.images, "missing image folder" + hint, expected="img_align_celeba/ with the JPEGs")
    return files


@dataclass
class _Table:
    names: list[str]
    values: np.ndarray  # N×K
    lines: np.ndarray  # 1-based line numbers of the rows


def _read_table(path: Path, *, n_values: int, header: tuple[str, ...] | None, dtype=np.int64,
                allowed: tuple | None = None, minimum: float | None = None) -> _Table:
    """Parse ``name v1 .. vK`` rows; with ``header``, line 1 is the row count and line 2 the column names."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not a text file ({exc.reason})", offset=exc.start,
                              expected="ASCII whitespace-separated columns") from None
    lines = text.splitlines()
    start, declared = 0, None
    if header is not None:
        if len(lines) < 2:
            raise DataFormatError(path, "file ends before the header", line=len(lines) + 1,
                                  expected="line 1: the image count, line 2: the column names")
        tok = lines[0].split()
        if len(tok) != 1 or not tok[0].isdigit():
            raise DataFormatError(path, f"bad count line {lines[0][:60]!r}", line=1, expected="a single integer")
        declared = int(tok[0])
        names = tuple(lines[1].split())
        if names != header:
            if len(names) != len(header):
                problem = f"{len(names)} column names"
            else:
                k = next(i for i, (a, b) in enumerate(zip(names, header)) if a != b)
                problem = f"column {k} is {names[k]!r}"
            raise DataFormatError(path, f"wrong header: {problem}", line=2,
                                  expected=f"the {len(header)} names in the official order: {' '.join(header)}")
        start = 2
    data_idx = [i for i in range(start, len(lines)) if lines[i].strip()]  # blank / trailing lines are padding
    data = [lines[i] for i in data_idx]
    line_nos = np.asarray(data_idx, dtype=np.int64) + 1
    if declared is not None and declared != len(data):
        raise DataFormatError(path, f"the count line says {declared} rows but the file has {len(data)}", line=1,
                              expected="the number of data rows")
    parsed = _parse_fast(data, n_values, dtype)
    if parsed is None:
        parsed = _parse_slow(path, data, line_nos, n_values, dtype)  # raises with the line, or agrees
    names, values = parsed
    bad = np.zeros(len(data), dtype=bool)
    if allowed is not None and len(data):
        bad |= ~np.isin(values, allowed).all(axis=1)
    if minimum is not None and len(data):
        bad |= (values < minimum).any(axis=1)
    if bad.any():
        k = int(np.argmax(bad))
        want = f"values in {set(allowed)}" if allowed is not None else f"values ≥ {minimum}"
        raise DataFormatError(path, f"bad value in row {data[k].strip()!r}", line=int(line_nos[k]), expected=want)
    return _Table(names, values, line_nos)


def _token_counts(data: list[str]) -> np.ndarray:
    """Whitespace-separated tokens per line, vectorised over the bytes (str.split on 200k lines is seconds)."""
    buf = np.frombuffer(("\n".join(data) + "\n").encode("ascii"), dtype=np.uint8)
    space = buf <= 32  # ASCII whitespace (other control bytes then fail the numeric parse and go the slow way)
    starts = ~space
    starts[1:] &= space[:-1]
    bounds = np.concatenate([[0], np.flatnonzero(buf == 10) + 1])  # line i spans bytes [bounds[i], bounds[i+1])
    return np.diff(np.searchsorted(np.flatnonzero(starts), bounds))


def _parse_fast(data: list[str], n_values: int, dtype) -> tuple[list[str], np.ndarray] | None:
    """numpy's C tokenizer for well-formed tables; None if anything is off (the slow path then locates it)."""
    if not data:
        return [], np.zeros((0, n_values), dtype)
    if not all(line.isascii() for line in data):
        return None
    if not (_token_counts(data) == n_values + 1).all():
        return None
    try:
        names = np.loadtxt(data, dtype=str, usecols=0, ndmin=1, comments=None).tolist()
        try:
            values = np.loadtxt(data, dtype=np.int64, usecols=range(1, n_values + 1), ndmin=2, comments=None)
        except ValueError:
            if dtype is np.int64:
                return None
            values = np.loadtxt(data, dtype=np.float64, usecols=range(1, n_values + 1), ndmin=2, comments=None)
    except ValueError:
        return None
    return names, values.astype(dtype)


def _parse_slow(path: Path, data: list[str], line_nos: np.ndarray, n_values: int,
                dtype) -> tuple[list[str], np.ndarray]:
    names, rows = [], []
    for text, line in zip(data, line_nos.tolist()):
        tok = text.split()
        if len(tok) != n_values + 1:
            raise DataFormatError(path, f"{len(tok)} columns", line=line,
                                  expected=f"an image name and {n_values} values")
        try:
            rows.append([int(v) if dtype is np.int64 else float(v) for v in tok[1:]])
        except ValueError:
            bad = next(v for v in tok[1:] if not _is_number(v, dtype))
            raise DataFormatError(path, f"non-numeric value {bad!r}", line=line,
                                  expected="integers" if dtype is np.int64 else "numbers") from None
        names.append(tok[0])
    return names, np.asarray(rows, dtype=dtype).reshape(len(rows), n_values)


def _is_number(value: str, dtype) -> bool:
    try:
        int(value) if dtype is np.int64 else float(value)
        return True
    except ValueError:
        return False


def _check_same_names(ref_path: Path, ref: _Table, path: Path, table: _Table) -> None:
    """Every table is indexed by row position, so the image names must agree row by row."""
    n = min(len(ref.names), len(table.names))
    if ref.names[:n] != table.names[:n]:
        k = next(i for i in range(n) if ref.names[i] != table.names[i])
        raise DataFormatError(path, f"image {table.names[k]!r} where {ref_path} line {int(ref.lines[k])} has "
                                    f"{ref.names[k]!r}", line=int(table.lines[k]),
                              expected=f"the same image names in the same order as {ref_path.name}")
    if len(ref.names) != len(table.names):
        longer, lpath, other = (table, path, ref_path) if len(table.names) > len(ref.names) else (ref, ref_path, path)
        raise DataFormatError(lpath, f"{len(longer.names) - n} more rows than {other} (from image "
                                     f"{longer.names[n]!r})", line=int(longer.lines[n]),
                              expected=f"one row per image, as in {other.name}")


class CelebAAnnotations:
    """All four CelebA tables, parsed and cross-checked (row i of each describes the same image)."""

    def __init__(self, root: str | Path):
        self.files = find_celeba_files(root)
        f = self.files
        part = _read_table(f.partition, n_values=1, header=None, allowed=(0, 1, 2))
        attr = _read_table(f.attributes, n_values=40, header=CELEBA_ATTRIBUTES, allowed=(-1, 1))
        ident = _read_table(f.identities, n_values=1, header=None, minimum=1)
        lmk = _read_table(f.landmarks, n_values=10, header=CELEBA_LANDMARK_COLUMNS, dtype=np.float32)
        for path, table in ((f.attributes, attr), (f.identities, ident), (f.landmarks, lmk)):
            _check_same_names(f.partition, part, path, table)
        self.names: list[str] = part.names
        self.partition = part.values[:, 0].astype(np.int64)
        self.attributes = ((attr.values + 1) // 2).astype(np.float32)  # ±1 → 0/1 as torchvision
        self.identities = ident.values[:, 0] - 1  # 1-based in the file
        self.landmarks = lmk.values.reshape(-1, 5, 2).astype(np.float32)

    def __len__(self) -> int:
        return len(self.names)


class CelebADataset(Dataset):
    """CelebA aligned images with identity, 40 attributes and 5 landmarks.

    Args:
        root: CelebA folder (either layout, see module docstring).
        split: ``"train"`` | ``"valid"`` | ``"test"`` | ``"all"`` (from ``list_eval_partition.txt``).
        transform: per-sample callable on the H×W×3 uint8 RGB image (applied last, after alignment / resize);
            an :class:`~datamodules.transforms.AlbumentationsTransform` also moves the landmarks.
        image_size: resize the 178×218 crop to this side (or (h, w)); None keeps the native size. With
            ``align=True`` it is the aligned crop side (default 112).
        align: warp each image by the similarity that takes its 5 landmarks onto a template: ``True`` /
            ``"arcface"`` the ArcFace 112 template (insightface ``norm_crop``); ``"ffhq"`` the FFHQ framing of
            StyleGAN generators (:func:`lrface.align.ffhq_template_np`, looser: hair and chin in view), as the
            embedded generator is trained on.
        on_corrupt: ``"error"`` | ``"skip"`` for unreadable images (skipped items are ``None``).
        annotations: already parsed tables (share one parse between splits).

    Items: ``image`` (3×H×W float in [0, 1]), ``identity`` (int64, 0-based), ``attributes`` (40 float 0/1, order
    :data:`CELEBA_ATTRIBUTES`), ``landmarks`` (5×2 float, pixel coordinates in the returned image), ``size``
    (int64 [H, W] of the file's image), ``index``.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 image_size: int | tuple[int, int] | None = None, align: bool | str = False,
                 on_corrupt: str = "error", annotations: CelebAAnnotations | None = None):
        if split not in CELEBA_SPLITS:
            raise ValueError(f"split must be one of {tuple(CELEBA_SPLITS)}, got {split!r}")
        if align not in (False, True, "arcface", "ffhq"):
            raise ValueError(f"align must be False, True / 'arcface' or 'ffhq', got {align!r}")
        self.root, self.split, self.transform, self.align = Path(root), split, transform, align
        self.image_size = 112 if (align and image_size is None) else image_size
        if align and not isinstance(self.image_size, int):
            raise ValueError(f"align=True needs a square crop side, got image_size={image_size!r}")
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.corrupt_log = CorruptLog(f"celeba/{split}")
        self.annotations = annotations if annotations is not None else CelebAAnnotations(root)
        ann = self.annotations
        code = CELEBA_SPLITS[split]
        self.rows = np.arange(len(ann)) if code is None else np.flatnonzero(ann.partition == code)
        self.identities = ann.identities[self.rows]
        self.attributes = ann.attributes[self.rows]
        self.landmarks = ann.landmarks[self.rows]
        self.names = [ann.names[r] for r in self.rows]
        self.num_identities = int(ann.identities.max()) + 1 if len(ann) else 0

    def __len__(self) -> int:
        return len(self.rows)

    def image_path(self, index: int) -> Path:
        return self.annotations.files.images / self.names[index]

    def attribute_frequencies(self) -> torch.Tensor:
        """Positive rate of each attribute on this split (40 floats; the attribute-loss weighting uses it)."""
        if len(self) == 0:
            raise ValueError(f"CelebA split {self.split!r} is empty")
        return torch.from_numpy(self.attributes.mean(axis=0).astype(np.float32))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Image (uint8, after align / resize / transform), its landmarks, and the file's native (H, W)."""
        image = read_image(self.image_path(index))
        native = image.shape[:2]
        points = self.landmarks[index].copy()
        if self.align:
            if self.align == "ffhq":
                from lrface.align import ffhq_template_np

                template = ffhq_template_np(self.image_size)
            else:
                template = arcface_template_np(self.image_size)
            matrix = estimate_similarity_np(points, template)
            image = warp_np(image, matrix, self.image_size)
            points = transform_points_np(points, matrix).astype(np.float32)
        elif self.image_size is not None:
            resized = resize_uint8(image, self.image_size)
            points = scale_points(points, image.shape[:2], resized.shape[:2])
            image = resized
        image, points = apply_transform(self.transform, image, points)
        return image, np.asarray(points, dtype=np.float32), native

    def __getitem__(self, index: int):
        try:
            image, points, native = self.load(index)
        except DataFormatError as err:
            handle_corrupt(self.on_corrupt, err, self.corrupt_log)
            return None
        return {
            "image": to_tensor(image),
            "identity": torch.tensor(int(self.identities[index]), dtype=torch.int64),
            "attributes": torch.from_numpy(self.attributes[index].copy()),
            "landmarks": torch.from_numpy(points),
            "size": torch.tensor(native, dtype=torch.int64),
            "index": index,
        }


class CelebAPairs(Dataset):
    """Random image pairs from one CelebA split: the paper's CelebA-Same (``same=True``) / CelebA-Diff sets.

    CelebA-Same draws an identity uniformly among those with at least two images on the split, then two different
    images of it; CelebA-Diff draws two different identities uniformly, then one image of each. Pairs are unique
    (unordered) while the split allows; the list depends only on ``seed`` and the split.

    Args:
        dataset: a :class:`CelebADataset`.
        n_pairs: number of pairs (the paper uses 3,000 from the test split).
        same: same-identity pairs if True, different-identity pairs otherwise.
        seed: RNG seed.

    Items: ``image1``, ``image2``, ``issame`` (bool), ``identity1``, ``identity2``, ``index1``, ``index2`` (dataset
    indices) and ``index``.
    """

    def __init__(self, dataset: CelebADataset, n_pairs: int, same: bool = True, seed: int = 0):
        self.dataset, self.same, self.seed = dataset, bool(same), seed
        rng = np.random.default_rng(seed)
        ids = np.asarray(dataset.identities)
        order = np.argsort(ids, kind="stable")
        uniq, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
        members = {int(u): order[s:s + c] for u, s, c in zip(uniq, starts, counts)}
        eligible = [int(u) for u, c in zip(uniq, counts) if c >= 2] if same else [int(u) for u in uniq]
        if (same and not eligible) or (not same and len(eligible) < 2):
            need = "an identity with two images" if same else "two identities"
            raise ValueError(f"CelebA split {dataset.split!r} has no {need}")
        pairs: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        attempts = 0
        while len(pairs) < n_pairs:
            attempts += 1
            if same:
                pool = members[eligible[rng.integers(len(eligible))]]
                a, b = rng.choice(pool, size=2, replace=False)
            else:
                ia, ib = rng.choice(len(eligible), size=2, replace=False)
                pa, pb = members[eligible[ia]], members[eligible[ib]]
                a, b = pa[rng.integers(len(pa))], pb[rng.integers(len(pb))]
            key = (int(min(a, b)), int(max(a, b)))
            if key in seen and attempts < 20 * n_pairs:  # then accept repeats: the split is too small
                continue
            seen.add(key)
            pairs.append((int(a), int(b)))
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        a, b = (int(i) for i in self.pairs[index])
        item1, item2 = self.dataset[a], self.dataset[b]
        if item1 is None or item2 is None:  # counted in the dataset's corrupt log
            return None
        return {"image1": item1["image"], "image2": item2["image"], "issame": self.same,
                "identity1": item1["identity"], "identity2": item2["identity"],
                "index1": a, "index2": b, "index": index}


class CelebADataModule(FaceDataModule):
    """CelebA for training (identity / attributes) and CelebA-Same/Diff pair evaluation.

    Args:
        root: CelebA folder (either layout).
        image_size, align: as :class:`CelebADataset`.
        train_transform: callable, or a mapping of :func:`~datamodules.transforms.build_train_augment` kwargs.
        val_pairs: if > 0, validation yields this many CelebA-Same then as many CelebA-Diff pairs from ``valid``
            instead of single images; ``test_pairs`` likewise on ``test``.
        pair_seed: seed of the pair lists.
        identity_batches: None for random training batches; ``{p, k, seed=0}`` for P×K batches (P identities × K
            images, :class:`~datamodules.identity_batches.IdentityBatchSampler`; p·k must equal ``batch_size``), as
            batch-hard triplet losses need (MAD, seed 003). The sampler splits each epoch's batches across DDP ranks
            itself (world size / rank from the attached Trainer), so a distributed Trainer must run with
            ``use_distributed_sampler=False`` (experiments/data/mad.yaml sets it); validation / test loaders are
            the usual ones (with that setting every rank evaluates all of them).
        batch_size, num_workers, pin_memory, on_corrupt: see :class:`FaceDataModule`.
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False,
                 on_corrupt: str = "error", image_size: int | None = None, align: bool | str = False,
                 train_transform: Callable | Mapping | None = None, val_pairs: int = 0, test_pairs: int = 0,
                 pair_seed: int = 0, identity_batches: Mapping | None = None):
        super().__init__(batch_size, num_workers, pin_memory, on_corrupt)
        self.identity_batches = self._check_identity_batches(identity_batches, batch_size)
        self.root, self.image_size, self.align = root, image_size, align
        self.train_transform = (build_train_augment(**dict(train_transform)) if isinstance(train_transform, Mapping)
                                else train_transform)
        self.val_pairs, self.test_pairs, self.pair_seed = val_pairs, test_pairs, pair_seed
        self.annotations: CelebAAnnotations | None = None
        self.train_set = self.val_set = self.test_set = None

    @staticmethod
    def _check_identity_batches(spec: Mapping | None, batch_size: int) -> dict | None:
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise ValueError(f"identity_batches must be null or a mapping {{p, k, seed}}; got {spec!r}")
        spec = dict(spec)
        unknown = set(spec) - {"p", "k", "seed"}
        missing = {"p", "k"} - set(spec)
        if unknown or missing:
            raise ValueError(f"identity_batches takes p, k and optionally seed; got {sorted(spec)}"
                             + (f" (missing {sorted(missing)})" if missing else "")
                             + (f" (unknown {sorted(unknown)})" if unknown else ""))
        p, k, seed = int(spec["p"]), int(spec["k"]), int(spec.get("seed", 0))
        if p * k != batch_size:
            raise ValueError(f"identity_batches p·k = {p}·{k} = {p * k} must equal batch_size = {batch_size}")
        return {"p": p, "k": k, "seed": seed}

    def _replicas(self) -> tuple[int, int]:
        """(num_replicas, rank) of the attached Trainer; (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        world, rank = int(trainer.world_size), int(trainer.global_rank)
        # Lightning would try to put a DistributedSampler inside the batch sampler and fail with a TypeError that
        # does not name our config key; the setting lives on a private connector (no public accessor in 2.6)
        connector = getattr(trainer, "_accelerator_connector", None)
        if world > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError(f"identity_batches under {world}-process DDP: the batch sampler splits the data across "
                             "ranks itself; set trainer.use_distributed_sampler=false (experiments/data/mad.yaml)")
        return world, rank

    def _split(self, split: str, transform=None) -> CelebADataset:
        return CelebADataset(self.root, split, transform=transform, image_size=self.image_size, align=self.align,
                             on_corrupt=self.on_corrupt, annotations=self.annotations)

    def _eval_set(self, split: str, n_pairs: int):
        ds = self._split(split)
        if n_pairs <= 0:
            return ds
        return ConcatDataset([CelebAPairs(ds, n_pairs, same=True, seed=self.pair_seed),
                              CelebAPairs(ds, n_pairs, same=False, seed=self.pair_seed + 1)])

    def setup(self, stage: str | None = None) -> None:
        if self.annotations is None:
            self.annotations = CelebAAnnotations(self.root)
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._split("train", self.train_transform)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._eval_set("valid", self.val_pairs)
        if stage in (None, "test") and self.test_set is None:
            self.test_set = self._eval_set("test", self.test_pairs)

    @property
    def num_identities(self) -> int:
        if self.annotations is None:
            self.setup("fit")
        return int(self.annotations.identities.max()) + 1

    def attribute_frequencies(self) -> torch.Tensor:
        """Positive rate per attribute on the training split (40 floats)."""
        if self.train_set is None:
            self.setup("fit")
        return self.train_set.attribute_frequencies()

    def train_dataloader(self):
        if self.identity_batches is None:
            return self.loader(self.train_set, train=True)
        num_replicas, rank = self._replicas()
        sampler = IdentityBatchSampler(self.train_set.identities, num_replicas=num_replicas, rank=rank,
                                       **self.identity_batches)
        return self.loader(self.train_set, train=True, batch_sampler=sampler)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False)
