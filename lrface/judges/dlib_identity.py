"""DlibIdentityJudge: dlib's face-recognition ResNet as an independent identity judge.

The network (``dlib_face_recognition_resnet_model_v1.dat``, shipped in the ``face-recognition-models`` package, CC0)
maps a 150×150 aligned face chip to a 128-d descriptor; two faces are judged the same person when the Euclidean
distance between their descriptors is below 0.6 (dlib's documented threshold, 99.38% on LFW). Faces are found and
aligned with dlib's HOG detector and 5-point shape predictor, the chip cut by ``dlib.get_face_chip(…, 150, 0.25)``
— what ``compute_face_descriptor(image, shape)`` does itself. :mod:`lrface.nets.dlib_resnet` is the same network in
PyTorch (``backend="torch"``), read from the same file, equal to dlib's descriptors to ~3e-7; with
:func:`lrface.dlib_chip.dlib_face_chips` (dlib's chip in PyTorch) gradients reach the image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lrface.judges.dlib_faces import DlibFaces, as_rgb_uint8
from lrface.judges.package_data import package_file

__all__ = ["DlibIdentityJudge", "dlib_model_file", "DLIB_INSTALL"]

DLIB_INSTALL = "pip install 'dlib-bin==20.0.1.post1' 'face-recognition-models==0.3.0'   (or pip install -e '.[judges]')"
THRESHOLD = 0.6


def dlib_model_file(name: str) -> Path:
    """``face_recognition_models/models/<name>`` of the installed package (without importing it)."""
    return package_file("face_recognition_models", f"models/{name}", DLIB_INSTALL)


def _require_dlib():
    try:
        import dlib
    except ImportError:
        raise ImportError(f"the dlib identity judge needs dlib; install it with: {DLIB_INSTALL}") from None
    return dlib


class DlibIdentityJudge:
    """Embeddings, distances and same / different verdicts from dlib's face-recognition ResNet.

    Args:
        upsample: times dlib's detector doubles the image before looking (1 finds faces down to ~40 px).
        backend: ``"dlib"`` (dlib-bin's own network) or ``"torch"`` (:class:`lrface.nets.dlib_resnet.DlibFaceResNet`
            read from the same ``.dat``; differentiable).
        models_dir: a directory holding the two ``.dat`` files instead of the installed package's.

    Raises:
        ImportError: dlib or ``face-recognition-models`` is not installed; the message gives the pip command.
    """

    threshold = THRESHOLD

    def __init__(self, upsample: int = 1, backend: str = "dlib", models_dir: str | Path | None = None):
        dlib = _require_dlib()
        if backend not in ("dlib", "torch"):
            raise ValueError(f"backend: expected 'dlib' or 'torch', got {backend!r}")

        def model(name: str) -> Path:
            if models_dir is None:
                return dlib_model_file(name)
            path = Path(models_dir) / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such dlib model file")
            return path

        self.faces = DlibFaces(model("shape_predictor_5_face_landmarks.dat"), upsample)
        self.model_path = model("dlib_face_recognition_resnet_model_v1.dat")
        self.backend = backend
        if backend == "dlib":
            self._net = dlib.face_recognition_model_v1(str(self.model_path))
        else:
            from lrface.nets.dlib_resnet import load_dlib_face_resnet

            self._net = load_dlib_face_resnet(self.model_path)

    def chip(self, image, box_or_landmarks=None) -> np.ndarray:
        """The 150×150×3 uint8 aligned chip the network sees (see :mod:`lrface.judges.dlib_faces` for the face)."""
        return self.faces.chip(image, box_or_landmarks, 150, 0.25)

    def embed_chips(self, chips) -> np.ndarray:
        """N×150×150×3 (or 150×150×3) uint8 aligned chips → N×128 float64 descriptors."""
        arr = np.asarray(chips)
        arr = arr[None] if arr.ndim == 3 else arr
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (150, 150, 3):
            raise ValueError(f"chips: expected uint8 150×150×3 or N×150×150×3 aligned faces, got {arr.dtype} "
                             f"{arr.shape}")
        if self.backend == "dlib":
            return np.array([np.array(self._net.compute_face_descriptor(np.ascontiguousarray(c))) for c in arr],
                            dtype=np.float64).reshape(-1, 128)
        import torch

        from lrface.nets.dlib_resnet import chip_to_tensor

        with torch.no_grad():
            return self._net(chip_to_tensor(arr)).double().numpy()

    def embed(self, image, box_or_landmarks=None) -> np.ndarray:
        """One face → its (128,) float64 descriptor.

        Args:
            image: H×W×3 uint8 RGB.
            box_or_landmarks: None (the largest face dlib finds), a box (left, top, right, bottom), or 5×2 landmarks
                in dlib's order.
        """
        image = as_rgb_uint8(image)
        return self.embed_chips(self.chip(image, box_or_landmarks))[0]

    @staticmethod
    def distance(a, b) -> np.ndarray:
        """Euclidean distance between descriptors (128,) or N×128 (row by row)."""
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape[-1:] != (128,) or b.shape[-1:] != (128,):
            raise ValueError(f"expected 128-d descriptors, got shapes {a.shape} and {b.shape}")
        return np.linalg.norm(a - b, axis=-1)

    def verdict(self, a, b) -> np.ndarray:
        """True where the two descriptors are judged the same person (distance < 0.6)."""
        return self.distance(a, b) < self.threshold
