"""InsightFace ``.bin`` verification sets (LFW, CFP-FP, AgeDB-30, ...), read without executing pickled code.

A ``.bin`` is a pickle of ``(bins, issame_list)`` (``reference/datasets.md`` §3.10): ``bins`` holds 2·P encoded images
(pair i = ``bins[2i]``, ``bins[2i+1]``), either raw JPEG/PNG byte strings (``lfw2pack.py``, Python 2) or numpy uint8
arrays from ``cv2.imencode`` (``build_eval_pack.py``); ``issame_list`` holds P bools. The files come from strangers, so
they are read by :class:`RestrictedUnpickler`, which resolves only the numpy globals needed to rebuild an array.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from datamodules.errors import DataFormatError
from datamodules.image_io import decode_image
from lrface.io import atomic_write_bytes


class UnsafePickleError(DataFormatError):
    """A pickle asked for a global outside the allow-list; nothing from it was executed."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles written by Python 3 carry bytes as _codecs.encode(str, 'latin1'). Only that one codec is
    # honoured: other registered codecs (zlib, bz2, ...) would let a file run a decompressor.
    if encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x writers / numpy 2.x writers
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar  # numpy bool scalars in some issame lists
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` returns only allow-listed numpy reconstruction globals.

    Args:
        file: binary file object.
        source: file name for errors.
    """

    def __init__(self, file, *, source: str, **kwargs):
        super().__init__(file, **kwargs)
        self.source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(self.source, f"pickle refers to the global {module}.{name}, which is not "
                                    "allowed; nothing was executed",
                                    expected="only numpy array reconstruction globals "
                                    "(numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(self.source, f"pickle uses persistent id {pid!r}", expected="no persistent ids")


def _as_bytes(item, source: str, index: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()  # cv2.imencode output: an N×1 (or flat) uint8 array of the encoded stream
    if isinstance(item, str):  # a Python 2 str read with encoding='latin1' elsewhere; latin1 maps bytes 1:1
        return item.encode("latin1")
    raise DataFormatError(source, f"element of type {type(item).__name__} in bins", record=index,
                          expected="encoded JPEG/PNG bytes or a numpy uint8 array")


def load_bin_encoded(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """``.bin`` → ``(encoded images: 2P byte strings, issame: P bools)`` without decoding the images."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "missing verification .bin file", expected="an insightface .bin pickle")
    with open(path, "rb") as f:
        try:
            # encoding='bytes': the sets were pickled by Python 2, whose str held the JPEG bytes
            obj = RestrictedUnpickler(f, source=str(path), encoding="bytes").load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a format error of this file
            raise DataFormatError(path, f"not a readable pickle ({type(exc).__name__}: {exc})",
                                  expected="a pickle of (bins, issame_list)") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataFormatError(path, f"pickle holds a {type(obj).__name__}", expected="a 2-tuple (bins, issame_list)")
    bins, issame = obj
    if not isinstance(bins, (list, tuple, np.ndarray)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise DataFormatError(path, "bins or issame_list is not a sequence", expected="(list, list)")
    if len(bins) != 2 * len(issame):
        raise DataFormatError(path, f"{len(bins)} images for {len(issame)} pairs",
                              expected=f"2 * len(issame_list) = {2 * len(issame)} images")
    encoded = [_as_bytes(item, str(path), i) for i, item in enumerate(bins)]
    try:
        same = np.array([bool(v) for v in issame], dtype=bool)
    except (TypeError, ValueError):
        raise DataFormatError(path, "issame_list holds non-boolean values", expected="P bools") from None
    return encoded, same


def load_bin(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """``.bin`` → ``(images, issame)``.

    Returns:
        images: 2P H×W×3 uint8 **RGB** arrays (pair i is ``images[2i]``, ``images[2i+1]``).
        issame: bool array of shape (P,).
    """
    encoded, issame = load_bin_encoded(path)
    images = [decode_image(data, str(path), record=i) for i, data in enumerate(encoded)]
    return images, issame


def write_bin(path: str | Path, encoded_images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a ``.bin`` set as a numpy-free pickle of ``(list of bytes, list of bool)``, atomically.

    Args:
        path: destination.
        encoded_images: 2P encoded JPEG/PNG byte strings (numpy uint8 arrays are converted to bytes).
        issame: P bools.
    """
    path = Path(path)
    bins = [bytes(x.tobytes() if isinstance(x, np.ndarray) else x) for x in encoded_images]
    same = [bool(v) for v in issame]
    if len(bins) != 2 * len(same):
        raise ValueError(f"{len(bins)} images for {len(same)} pairs; need exactly 2 per pair")
    buf = io.BytesIO()
    pickle.dump((bins, same), buf, protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write_bytes(path, buf.getvalue())
