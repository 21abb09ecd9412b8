"""YuNet (Wu et al., "YuNet: A Tiny Millisecond-level Face Detector", 2023) through the ``yuface`` package: an
independent face detector with five landmarks, trained on WIDER FACE, its weights compiled into libfacedetection.

``yuface.detect`` takes a BGR uint8 image and returns integer boxes ``(x, y, w, h)``, confidences in percent and
landmarks in the order image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner —
the order of MTCNN and of the ArcFace template (:mod:`lrface.align`). Landmarks are whole pixels of the image the
network saw. The network is meant for images up to 960 px a side, so a larger image is first shrunk (area
averaging) to fit and the results are scaled back: landmarks then carry the shrink factor's quantisation.
"""
from __future__ import annotations

import numpy as np

from lrface.judges.dlib_faces import as_rgb_uint8

__all__ = ["YUNET_INSTALL", "YuNetFaces"]

YUNET_INSTALL = "pip install 'yuface==2023.5.1'   (or pip install -e '.[judges]')"
_MAX_SIDE = 960  # yuface warns above this and its anchors are tuned for it


class YuNetFaces:
    """Faces and five landmarks from YuNet.

    Args:
        threshold: minimum confidence in [0, 1] (yuface's default 0.5).
        max_side: images with a longer side are shrunk to it before detection.

    Raises:
        ImportError: ``yuface`` is not installed; the message gives the pip command.
    """

    def __init__(self, threshold: float = 0.5, max_side: int = _MAX_SIDE):
        try:
            from yuface import c_detect
        except ImportError:
            raise ImportError(f"the YuNet landmark source needs yuface; install it with: {YUNET_INSTALL}") from None
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a confidence in [0, 1], got {threshold}")
        self._detect = c_detect
        self.threshold = float(threshold)
        self.max_side = int(max_side)

    def detect(self, image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One H×W×3 uint8 RGB image → ``(boxes N×4 float64 (x1, y1, x2, y2), scores N in [0, 1], landmarks N×5×2
        float64 (x, y))`` in the image's pixels, most confident first (N may be 0)."""
        image = as_rgb_uint8(image, "YuNetFaces.detect image")
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        seen = image
        if scale < 1.0:
            from PIL import Image

            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            seen = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        # per-axis factors: the rounded size is not exactly scale × the original
        back = np.array([image.shape[1] / seen.shape[1], image.shape[0] / seen.shape[0]])
        raw = np.asarray(self._detect(np.ascontiguousarray(seen[..., ::-1])), dtype=np.float64).reshape(-1, 16)
        raw = raw[raw[:, 0] > self.threshold * 100.0]
        raw = raw[np.argsort(-raw[:, 0], kind="stable")]
        xywh = raw[:, 1:5]
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).reshape(-1, 2, 2) * back
        landmarks = raw[:, 5:15].reshape(-1, 5, 2) * back
        return boxes.reshape(-1, 4), raw[:, 0] / 100.0, landmarks
