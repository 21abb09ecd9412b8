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


def backbone_state_dict(path: str | os.PathLike) -> dict:
    """The backbone weights in a checkpoint file, as a plain state_dict with official key names.

    Accepts an official insightface ``backbone.pth`` / ``model.pt`` (a plain state_dict), one saved from a DDP-wrapped
    model (``module.`` prefix), and a Lightning checkpoint of ours (``state_dict`` with ``backbone.`` prefix). Loaded
    with ``weights_only=True``: a file that needs pickled code to load is refused.
    """
    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # weights_only refuses arbitrary pickles: say so instead of a bare UnpicklingError
        raise ValueError(f"{path}: not a plain weights checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = {k[len("backbone."):]: v for k, v in obj["state_dict"].items() if k.startswith("backbone.")}
        if not obj:
            raise ValueError(f"{path}: a Lightning checkpoint without backbone.* weights")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict of tensors, got {type(obj).__name__}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_backbone(name: str, weights: str | os.PathLike | None = None, **kwargs):
    """An IResNet (``r18`` ... ``r200``, also spelled ``iresnet50``) with ``weights`` loaded strictly.

    ``kwargs`` go to the constructor (``num_features``, ``widths``, ...); the defaults give the official shapes.
    """
    from lrface.nets.iresnet import get_model

    model = get_model(name.replace("iresnet", "r"), **kwargs)
    if weights is not None:
        model.load_state_dict(backbone_state_dict(weights), strict=True)
    return model.eval()


# Generator checkpoints (PULSE .pt pair, rosinality .pt, NVlabs stylegan2-ada .pkl) live in lrface.generators; these
# names are the public API.
from lrface.generators import UnsafeCheckpointError, load_generator  # noqa: E402,F401
