"""``lrface data pack``: an image folder ``src/<identity>/*.jpg|png`` → an InsightFace ``train.rec/.idx/property``.

Identities are the sub-folders sorted by name (0-based labels in that order). JPEG files are stored byte for byte
unless resizing is needed; other formats (and resized images) are re-encoded as JPEG. Every image is fully decoded
once, so a corrupt file stops the packing with an error naming it instead of ending up in the ``.rec``.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from datamodules.formats.recordio import write_insightface_rec
from datamodules.image_io import decode_image, read_image
from datamodules.transforms import resize_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """H×W×3 uint8 RGB → JPEG bytes (4:2:0, as cv2.imencode writes by default)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def pack_image_folder(src_dir: str | Path, out_dir: str | Path, quality: int = 95,
                      image_size: int | tuple[int, int] | None = None) -> dict:
    """Pack ``src_dir/<identity>/*`` into ``out_dir/{train.rec, train.idx, property}`` (InsightFace meta layout).

    Args:
        src_dir: one sub-folder per identity holding ``.jpg`` / ``.jpeg`` / ``.png`` files.
        out_dir: destination folder.
        quality: JPEG quality for re-encoded images.
        image_size: resize every image to this (int or (H, W)); None keeps native sizes and writes the first image's
            size to ``property``.

    Returns:
        summary: ``num_images``, ``num_classes``, ``image_size``, ``copied`` (JPEGs stored as-is), ``reencoded``,
        ``ignored_files`` (non-image files, not packed), ``empty_identities``, ``native_sizes`` (size → count),
        ``identities`` (folder names in label order), ``out_dir``.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir}: not a folder")
    identities = sorted(p.name for p in src_dir.iterdir() if p.is_dir())
    if not identities:
        raise FileNotFoundError(f"{src_dir}: no identity sub-folders (expected src/<identity>/*.jpg)")
    if image_size is None:
        size = None
    else:
        size = (int(image_size),) * 2 if np.ndim(image_size) == 0 else tuple(int(v) for v in image_size)
    stats = {"copied": 0, "reencoded": 0, "ignored_files": [], "empty_identities": [], "native_sizes": Counter()}

    def samples() -> Iterator[tuple[int, bytes]]:
        for label, name in enumerate(identities):
            files = sorted(p for p in (src_dir / name).iterdir() if p.is_file())
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            stats["ignored_files"] += [str(p) for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
            if not images:
                stats["empty_identities"].append(name)
            for path in images:
                data = path.read_bytes()
                image = decode_image(data, str(path))  # full decode: a corrupt file raises, naming it
                stats["native_sizes"][image.shape[:2]] += 1
                if _is_jpeg(data) and (size is None or image.shape[:2] == size):
                    stats["copied"] += 1
                else:
                    data = encode_jpeg(resize_uint8(image, size) if size else image, quality)
                    stats["reencoded"] += 1
                yield label, data

    property_size = size
    if property_size is None:  # native size: that of the first image (MS1M-style folders are uniformly 112×112)
        first = next((p for name in identities for p in sorted((src_dir / name).iterdir())
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), None)
        property_size = read_image(first).shape[:2] if first is not None else (112, 112)
    result = write_insightface_rec(out_dir, samples(), num_classes=len(identities), image_size=property_size)
    return {
        "out_dir": str(out_dir),
        "num_images": result["num_images"],
        "num_classes": result["num_classes"],
        "image_size": tuple(int(v) for v in result["image_size"]),
        "copied": stats["copied"],
        "reencoded": stats["reencoded"],
        "ignored_files": stats["ignored_files"],
        "empty_identities": stats["empty_identities"],
        "native_sizes": {f"{h}x{w}": n for (h, w), n in sorted(stats["native_sizes"].items())},
        "identities": identities,
    }


def main(argv: list[str] | None = None) -> int:
    """``lrface data pack SRC DST [--quality Q] [--size N]``."""
    parser = argparse.ArgumentParser(prog="lrface data pack", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="image folder: src/<identity>/*.jpg|png")
    parser.add_argument("dst", help="output folder for train.rec, train.idx, property")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of re-encoded images (default 95)")
    parser.add_argument("--size", type=int, default=None, help="resize to N×N (default: keep native size)")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error("--quality must be in 1..100")
    summary = pack_image_folder(args.src, args.dst, quality=args.quality, image_size=args.size)
    shown = dict(summary)
    shown["identities"] = len(summary["identities"])
    shown["ignored_files"] = len(summary["ignored_files"])
    print(json.dumps(shown, indent=2))
    if summary["ignored_files"]:
        print(f"warning: {len(summary['ignored_files'])} non-image file(s) not packed, e.g. "
              f"{summary['ignored_files'][0]}", file=sys.stderr)
    if summary["empty_identities"]:
        print(f"warning: {len(summary['empty_identities'])} identity folder(s) without images keep their label: "
              f"{summary['empty_identities'][:5]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
