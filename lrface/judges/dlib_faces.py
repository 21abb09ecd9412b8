"""Finding and aligning a face with dlib, as both package judges need: HOG detector + 5-point shape predictor.

A face is given to a judge as an image plus, optionally, where the face is:

- ``None``: dlib's frontal HOG detector runs and the largest face is taken (none found → ``ValueError``);
- a box ``(left, top, right, bottom)`` in pixels (inclusive, dlib's convention): the shape predictor runs in it;
- landmarks 5×2 ``(x, y)`` in the order dlib's ``shape_predictor_5_face_landmarks`` returns them (outer then inner
  corner of the eye on the image's right — the subject's left eye —, outer then inner corner of the other eye, base
  of the nose; as :meth:`DlibFaces.landmarks` gives them): used as they are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["as_rgb_uint8", "DlibFaces"]


def as_rgb_uint8(image, what: str = "image") -> np.ndarray:
    """A C-contiguous H×W×3 uint8 RGB array, or ``ValueError`` saying what was given and what is expected."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ValueError(f"{what}: expected an H×W×3 uint8 RGB array, got {arr.dtype} array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


class DlibFaces:
    """dlib's frontal face detector and a 5-point shape predictor.

    Args:
        predictor_path: ``shape_predictor_5_face_landmarks.dat``.
        upsample: how many times the detector doubles the image first (finds smaller faces, slower).
    """

    def __init__(self, predictor_path: str | Path, upsample: int = 1):
        import dlib

        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(predictor_path))
        self.upsample = int(upsample)

    def detect(self, image) -> np.ndarray:
        """N×4 boxes ``(left, top, right, bottom)``, largest first (ties in the detector's order)."""
        boxes = [(d.left(), d.top(), d.right(), d.bottom()) for d in self.detector(as_rgb_uint8(image), self.upsample)]
        boxes.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))
        return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)

    def shape(self, image, box_or_landmarks=None):
        """A ``dlib.full_object_detection`` of the face (see the module docstring for ``box_or_landmarks``)."""
        dlib = self._dlib
        image = as_rgb_uint8(image)
        if box_or_landmarks is None:
            boxes = self.detect(image)
            if not len(boxes):
                raise ValueError(f"no face found by dlib's detector in the {image.shape[1]}×{image.shape[0]} image "
                                 f"(upsample={self.upsample}); pass a box or landmarks")
            box_or_landmarks = boxes[0]
        given = np.asarray(box_or_landmarks, dtype=np.float64)
        if given.shape == (4,):
            left, top, right, bottom = (int(round(v)) for v in given)
            if right <= left or bottom <= top:
                raise ValueError(f"box {given.tolist()}: expected (left, top, right, bottom) with right > left and "
                                 "bottom > top")
            return self.predictor(image, dlib.rectangle(left, top, right, bottom))
        if given.shape == (5, 2):
            points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in given])
            left, top = given.min(0).astype(int)
            right, bottom = np.ceil(given.max(0)).astype(int)
            return dlib.full_object_detection(dlib.rectangle(int(left), int(top), int(right), int(bottom)), points)
        raise ValueError(f"box_or_landmarks: expected None, a box (4,) or dlib-order landmarks (5, 2), got shape "
                         f"{given.shape}")

    def landmarks(self, image, box=None) -> np.ndarray:
        """5×2 ``(x, y)`` landmarks in dlib's order."""
        shape = self.shape(image, box)
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=np.float64)

    def chip(self, image, box_or_landmarks=None, size: int = 150, padding: float = 0.25) -> np.ndarray:
        """``dlib.get_face_chip``: the face rotated upright and scaled to size×size×3 uint8."""
        image = as_rgb_uint8(image)
        return np.asarray(self._dlib.get_face_chip(image, self.shape(image, box_or_landmarks), size, padding))
