"""Checkpoint loaders and converters, and the fetching of the pretrained parts that registry packages ship.

MTCNN's weights come from the ``facenet-pytorch`` wheel on PyPI. That package pins torch<2.3, so it is never
installed: the wheel is downloaded with ``pip download --no-deps`` and the three ``.pt`` files are read out of the zip.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MTCNN_WHEEL = "facenet-pytorch==2.6.0"
MTCNN_FILES = ("pnet.pt", "rnet.pt", "onet.pt")


def fetch_mtcnn_weights(dest: str | os.PathLike = "weights/mtcnn", wheel: str | os.PathLike | None = None) -> Path:
    """Extracts ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` from the facenet-pytorch wheel into ``dest``.

    Args:
        dest: output directory; files already there are kept.
        wheel: a local ``facenet_pytorch-*.whl``; by default it is downloaded from the package index (no deps).
    """
    dest = Path(dest)
    if all((dest / f).exists() for f in MTCNN_FILES):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", MTCNN_WHEEL, "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob("facenet_pytorch-*.whl"))
            if done.returncode != 0 or not wheels:
                raise RuntimeError(f"could not download {MTCNN_WHEEL} (needs the package index): {done.stderr[-2000:]}")
            wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            for name in MTCNN_FILES:
                member = f"facenet_pytorch/data/{name}"
                try:
                    data = zf.read(member)
                except KeyError:
                    raise RuntimeError(f"{wheel}: no {member} in the wheel") from None
                part = dest / f".{name}.part"
                part.write_bytes(data)
                os.replace(part, dest / name)
    return dest
