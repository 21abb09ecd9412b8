"""The lookalike set of the seed paper (§3.3, Alg. 1–2): (i_GT, i, i') triples that train F with L_siam.

Written by ``callbacks.lookalike.LookalikeRefresh`` before each meta-epoch, read here. On disk, under ``root``:

- ``index.jsonl``: one JSON object per lookalike, rewritten atomically after every addition (the set only grows)::

    {"id": str, "meta_epoch": int, "identity": int, "gt": "images/<id>_gt.png", "i": "images/<id>_i.png",
     "i_prime": "images/<id>_iprime.png" | null, "gt_prime": "images/..png" | null, "alpha_thr": float,
     "seed": int, "downscale_loss": float, "L_sim": float}

- ``images/<id>_{gt,i,iprime}.png``: RGB uint8 PNGs at the generator's resolution in the FFHQ framing
  (:func:`lrface.align.ffhq_template_np`), written before the index line that names them.

i_GT is a CelebA training image, i the PULSE + L_sim(i_LR) upscale of its 32×32 thumbnail with the F of that
meta-epoch, i' the same for another image i'_GT of the same identity (absent when the identity had one image or its
search was rejected). Items are warped to F's ArcFace crop with the similarity that takes the FFHQ template onto
the ArcFace template (the fixed alignment the search itself uses, :class:`lrface.align.FixedAlignment`).

Before the first generation the set is empty: :class:`LookalikeDataModule`'s train loader then has no batches and
``MultiTaskDataModule`` leaves the member out of that epoch's batches (the module then skips L_siam, as Alg. 2's
first meta-epoch does). :meth:`LookalikeDataset.refresh` re-reads the index; ``train_dataloader()`` calls it, so a
Trainer with ``reload_dataloaders_every_n_epochs: 1`` picks up every new generation at the next epoch.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import FaceDataModule, worker_init_fn
from datamodules.errors import CorruptLog, DataFormatError, check_on_corrupt, handle_corrupt, skip_collate
from datamodules.image_io import read_image, to_tensor
from datamodules.transforms import resize_uint8
from lrface.align import align_face_np, ffhq_template_np

INDEX_FILE = "index.jsonl"
LOOKALIKES_DIR = "lookalikes"  # <run dir>/lookalikes: where LookalikeRefresh writes by default

# key → (accepted types, may be null). JSON booleans are Python ints: they are refused explicitly.
_REQUIRED = {"id": ((str,), False), "meta_epoch": ((int,), False), "identity": ((int,), False),
             "gt": ((str,), False), "i": ((str,), False), "i_prime": ((str,), True)}
_OPTIONAL = {"gt_prime": ((str,), True), "alpha_thr": ((int, float), False), "seed": ((int,), False),
             "downscale_loss": ((int, float), False), "L_sim": ((int, float), False)}
_TYPE_NAMES = {(str,): "a string", (int,): "an integer", (int, float): "a finite number"}
_EXPECTED_LINE = ('a JSON object {"id": str, "meta_epoch": int, "identity": int, "gt": path, "i": path, '
                  '"i_prime": path | null, ...} with image paths relative to the set folder')


def _check_record(path: Path, line_no: int, record: Any) -> dict:
    if not isinstance(record, dict):
        raise DataFormatError(path, f"a JSON {type(record).__name__}, not an object", line=line_no,
                              expected=_EXPECTED_LINE)
    for required, spec in ((True, _REQUIRED), (False, _OPTIONAL)):
        for key, (types, nullable) in spec.items():
            if key not in record:
                if required:
                    raise DataFormatError(path, f"missing key {key!r}", line=line_no, expected=_EXPECTED_LINE)
                continue
            value = record[key]
            if value is None and nullable:
                continue
            ok = isinstance(value, types) and not isinstance(value, bool)
            if ok and isinstance(value, float) and not math.isfinite(value):
                ok = False
            if not ok:
                raise DataFormatError(path, f"{key!r} is {value!r}", line=line_no,
                                      expected=f"{key!r}: {_TYPE_NAMES[types]}{' or null' if nullable else ''}")
    for key in ("gt", "i", "i_prime", "gt_prime"):
        value = record.get(key)
        if value is None:
            continue
        rel = PurePosixPath(value)
        if not value or rel.is_absolute() or ".." in rel.parts:
            raise DataFormatError(path, f"{key!r} path {value!r} leaves the set folder", line=line_no,
                                  expected="a relative path such as images/<id>_gt.png")
    if record["identity"] < 0:
        raise DataFormatError(path, f"negative identity {record['identity']}", line=line_no,
                              expected="a 0-based CelebA identity")
    return record


def read_lookalike_index(path: str | Path) -> list[dict]:
    """Parse ``index.jsonl``: a list of records (blank lines are ignored); a missing file is an empty set.

    Raises:
        DataFormatError: a line that is not a JSON object with the contract's keys and types, a path that leaves the
            folder, or a repeated ``id`` (the message names the line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"not UTF-8 text ({exc.reason})", offset=exc.start,
                              expected="JSON lines") from None
    records, seen = [], {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, f"not JSON ({exc.msg} at column {exc.colno})", line=line_no,
                                  expected=_EXPECTED_LINE) from None
        record = _check_record(path, line_no, record)
        if record["id"] in seen:
            raise DataFormatError(path, f"duplicate id {record['id']!r} (first on line {seen[record['id']]})",
                                  line=line_no, expected="one line per lookalike id")
        seen[record["id"]] = line_no
        records.append(record)
    return records


class LookalikeDataset(Dataset):
    """The lookalike triples as ArcFace-aligned images.

    Args:
        root: the set folder (``index.jsonl`` + ``images/``). A missing folder or index is an empty set.
        image_size: side of the ArcFace crop fed to F (112 for the paper's IResNets).
        align: ``"ffhq"`` (default): the images are in the generator's FFHQ framing and are warped onto the ArcFace
            template; ``None``: they are already ArcFace crops and are only resized.
        on_corrupt: ``"error"`` | ``"skip"`` for unreadable images (skipped items are ``None``). A malformed index
            line always raises.

    Items: ``image_gt``, ``image_i``, ``image_i_prime`` (3×S×S float in [0, 1]; zeros when the record has no i'),
    ``has_i_prime`` (bool), ``identity`` (int64), ``meta_epoch`` (int), ``index``.
    """

    def __init__(self, root: str | Path, image_size: int = 112, align: str | None = "ffhq",
                 on_corrupt: str = "error"):
        if align not in ("ffhq", None):
            raise ValueError(f"align must be 'ffhq' or None, got {align!r}")
        self.root, self.image_size, self.align = Path(root), int(image_size), align
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.corrupt_log = CorruptLog(f"lookalike/{self.root.name}")
        self.records: list[dict] = []
        self._stamp: tuple[int, int, int] | None = None
        self.refresh()

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    def refresh(self) -> int:
        """Re-read ``index.jsonl`` if it changed since the last read (in place: loaders built on this dataset see the
        new records at their next iteration in the main process). Returns the number of records."""
        try:
            st = os.stat(self.index_path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp or stamp is None:
            self.records = read_lookalike_index(self.index_path)
            self._stamp = stamp
        return len(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, rel: str, index: int) -> np.ndarray:
        path = self.root / rel
        image = read_image(path)
        h, w = image.shape[:2]
        if self.align == "ffhq":
            if h != w:
                raise DataFormatError(path, f"a {w}×{h} image", record=index,
                                      expected="a square generator output in the FFHQ framing")
            image, _ = align_face_np(image, ffhq_template_np(w), self.image_size)
        elif (h, w) != (self.image_size, self.image_size):
            image = resize_uint8(image, self.image_size)
        return image

    def __getitem__(self, index: int) -> dict | None:
        record = self.records[index]
        try:
            gt, i = self._image(record["gt"], index), self._image(record["i"], index)
            has_prime = record["i_prime"] is not None
            i_prime = self._image(record["i_prime"], index) if has_prime else np.zeros_like(i)
        except DataFormatError as err:
            handle_corrupt(self.on_corrupt, err, self.corrupt_log)
            return None
        return {
            "image_gt": to_tensor(gt),
            "image_i": to_tensor(i),
            "image_i_prime": to_tensor(i_prime),
            "has_i_prime": has_prime,
            "identity": torch.tensor(int(record["identity"]), dtype=torch.int64),
            "meta_epoch": int(record["meta_epoch"]),
            "index": index,
        }


class LookalikeDataModule(FaceDataModule):
    """The lookalike member of the F_ours ``MultiTaskDataModule`` (sub-batch b2 of Alg. 1).

    Args:
        root: the set folder; None → ``<trainer.default_root_dir>/lookalikes`` (the run directory, where
            ``LookalikeRefresh`` writes by default), resolved at ``setup``.
        batch_size: lookalikes per step (each costs up to four F forwards: i_GT, i, i', flip(i)).
        image_size, align: as :class:`LookalikeDataset`.
        num_workers, pin_memory, on_corrupt: see :class:`FaceDataModule`.

    ``train_dataloader()`` re-reads the index first; it keeps the last incomplete batch (a set smaller than the batch
    still trains) and never keeps workers alive between epochs (a worker's copy of the dataset would miss the records
    added since it started). Empty set → a loader of length 0.
    """

    def __init__(self, root: str | None = None, batch_size: int = 16, image_size: int = 112,
                 align: str | None = "ffhq", num_workers: int = 0, pin_memory: bool = False,
                 on_corrupt: str = "error"):
        super().__init__(batch_size, num_workers, pin_memory, on_corrupt)
        self.root = None if root is None else Path(root)
        self.image_size, self.align = image_size, align
        self.dataset: LookalikeDataset | None = None

    def _resolve_root(self) -> Path:
        if self.root is None:
            trainer = getattr(self, "trainer", None)
            if trainer is None:
                raise ValueError("LookalikeDataModule(root=None) needs a Trainer (the set lives in its run directory); "
                                 "pass root=")
            self.root = Path(trainer.default_root_dir) / LOOKALIKES_DIR
        return self.root

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = LookalikeDataset(self._resolve_root(), image_size=self.image_size, align=self.align,
                                            on_corrupt=self.on_corrupt)

    def refresh(self) -> int:
        """Re-read the set from disk (after a generation); returns its size."""
        if self.dataset is None:
            self.setup("fit")
        return self.dataset.refresh()

    def train_dataloader(self) -> DataLoader:
        n = self.refresh()
        # RandomSampler refuses an empty dataset; an empty set gets a plain loader of length 0
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=n > 0, drop_last=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=False,
                          worker_init_fn=worker_init_fn, collate_fn=skip_collate)
