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


def load_sample(path: str | Path, *, image_size, transform, on_corrupt: str, corrupt_log):
    """The per-item image path shared by the datasets: read → resize to ``image_size`` (None = native) →
    augment → tensor. Returns ``(3×H×W float tensor, native (H, W))``, or ``None`` when the image is bad and
    ``on_corrupt="skip"`` (counted and logged by ``corrupt_log``)."""
    from datamodules.errors import handle_corrupt
    from datamodules.transforms import apply_transform, resize_uint8

    try:
        image = read_image(path)
    except DataFormatError as err:
        handle_corrupt(on_corrupt, err, corrupt_log)
        return None
    native = image.shape[:2]
    if image_size is not None:
        image = resize_uint8(image, image_size)
    image, _ = apply_transform(transform, image)
    return to_tensor(image), native
