"""Decoding encoded images (JPEG / PNG bytes or files) into RGB uint8 arrays with errors that name the source."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datamodules.errors import DataFormatError


def decode_image(data: bytes, source: str, *, record=None) -> np.ndarray:
    """Encoded bytes → H×W×3 uint8 RGB. A truncated or corrupt stream raises :class:`DataFormatError`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # forces a full decode so truncation is caught here, not in a worker later
            return np.array(im.convert("RGB"))  # writable: torch.from_numpy warns on read-only arrays
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataFormatError(source, f"corrupt or truncated image ({exc})", record=record,
                              expected="a complete JPEG/PNG stream") from None


def read_image(path: str | Path) -> np.ndarray:
    """Image file → H×W×3 uint8 RGB; a missing file or corrupt stream raises :class:`DataFormatError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(path, "missing image file", expected="an existing JPEG/PNG file") from None
    return decode_image(data, str(path))


def to_tensor(image: np.ndarray):
    """H×W×3 uint8 → float32 3×H×W in [0, 1] (the dataset item convention; nets normalise themselves)."""
    import torch

    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
