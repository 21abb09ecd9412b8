"""MTCNN face detector (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded Convolutional
Networks", IEEE SPL 2016): P-Net proposals on an image pyramid, R-Net refinement, O-Net boxes + 5 landmarks.

``PNet``, ``RNet`` and ``ONet`` are laid out like facenet-pytorch's ports of the original Caffe models, so the
``pnet.pt`` / ``rnet.pt`` / ``onet.pt`` state_dicts shipped in the facenet-pytorch 2.6.0 wheel load with
``strict=True`` (``lrface weights mtcnn`` extracts them; the package itself is never installed or imported).

Inputs to every net are RGB, N×3×H×W, normalised as ``(x − 127.5) · 0.0078125``. Landmarks come in the order
left eye, right eye, nose, left mouth corner, right mouth corner, "left" meaning image-left.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

__all__ = ["MTCNN", "WEIGHT_FILES", "ONet", "PNet", "RNet"]

WEIGHT_FILES = {"pnet": "pnet.pt", "rnet": "rnet.pt", "onet": "onet.pt"}

#: Side of the square face crop each stage was trained on.
_PNET_CELL, _RNET_SIZE, _ONET_SIZE = 12, 24, 48
_PNET_STRIDE = 2


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    """N×C×H×W → N×(W·H·C): the dense weights were converted from Caffe/TF in W, H, C order."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, one 12×12 window per output cell (stride 2).

    ``forward(x N×3×H×W)`` → ``(reg N×4×h×w, prob N×2×h×w)`` with ``h = ceil((H − 2) / 2) − 4``; ``prob[:, 1]`` is
    the face probability, ``reg`` the (dx1, dy1, dx2, dy2) offsets in units of the window side.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement network on 24×24 crops: ``forward(x N×3×24×24)`` → ``(reg N×4, prob N×2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_caffe(x)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48×48 crops: ``forward(x N×3×48×48)`` → ``(reg N×4, landmarks N×10, prob N×2)``.

    ``landmarks`` are the 5 x's then the 5 y's, as fractions of the crop's width / height.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_caffe(x)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grows each x1,y1,x2,y2 box (N×4) to a square of side max(w, h) around the same centre."""
    wh = boxes[:, 2:4] - boxes[:, 0:2]
    side = wh.max(dim=1, keepdim=True).values
    x1y1 = boxes[:, 0:2] + 0.5 * wh - 0.5 * side
    return torch.cat([x1y1, x1y1 + side], dim=1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Applies (dx1, dy1, dx2, dy2) offsets (N×4, in units of the box side) to N×4 boxes."""
    wh = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
    return boxes + reg * wh


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """NMS where overlap = intersection / min(area): removes a small box nested in a bigger one, which IoU keeps.

    Returns the kept indices, highest score first.
    """
    order = torch.argsort(scores, descending=True)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        overlap = inter / torch.minimum(area[i], area[rest]).clamp(min=1e-12)
        order = rest[overlap <= threshold]
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


class MTCNN:
    """The three-stage MTCNN cascade with facenet-pytorch's pretrained weights.

    Args:
        weights_dir: directory holding ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (written by ``lrface weights mtcnn``,
            which ``make setup`` runs).
        min_face_size: smallest face side (pixels) searched for; sets the first pyramid scale ``12 / min_face_size``.
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        factor: pyramid scale step.
        device: torch device the nets run on.
        batch_size: crops per R-Net / O-Net forward pass (bounds memory on images with many candidates).
    """

    #: IoU thresholds of the standard cascade: P-Net per scale, P-Net across scales, R-Net; O-Net uses
    #: intersection-over-min at ``_NMS_ONET``.
    _NMS_PNET_SCALE, _NMS_PNET_ALL, _NMS_RNET, _NMS_ONET = 0.5, 0.7, 0.7, 0.7

    def __init__(
        self,
        weights_dir: str | os.PathLike = "weights/mtcnn",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> None:
        if min_face_size < _PNET_CELL:
            raise ValueError(f"min_face_size must be >= {_PNET_CELL}, got {min_face_size}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if len(thresholds) != 3:
            raise ValueError(f"thresholds must hold 3 values (P-Net, R-Net, O-Net), got {thresholds!r}")
        self.weights_dir = Path(weights_dir)
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet", self.pnet), ("rnet", self.rnet), ("onet", self.onet)):
            net.load_state_dict(self._load(name), strict=True)
            net.to(self.device).eval().requires_grad_(False)

    def _load(self, name: str) -> dict[str, torch.Tensor]:
        path = self.weights_dir / WEIGHT_FILES[name]
        if not path.is_file():
            raise FileNotFoundError(
                f"MTCNN weights {path} not found: run `lrface weights mtcnn --dest {self.weights_dir}` "
                f"(or `make setup`, which extracts them from the facenet-pytorch wheel into weights/mtcnn)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"{path}: expected a state_dict (dict of tensors), got {type(state).__name__}")
        return state

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales: from ``12 / min_face_size`` down by ``factor`` while the short side stays >= 12 px."""
        scale = _PNET_CELL / self.min_face_size
        short = min(height, width) * scale
        out = []
        while short >= _PNET_CELL:
            out.append(scale)
            scale *= self.factor
            short *= self.factor
        return out

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detects faces in one image.

        Args:
            image: H×W×3 uint8 RGB array.

        Returns:
            ``(boxes N×4 float32 x1,y1,x2,y2, probs N float32, landmarks N×5×2 float32 (x, y))`` in pixel coordinates of
            ``image``, sorted by decreasing probability; landmarks are left eye, right eye, nose, left mouth corner,
            right mouth corner (image-left first). N may be 0.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"MTCNN.detect expects an H×W×3 uint8 RGB array, got {image.dtype} {image.shape}")
        img = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        boxes, scores = self._stage_pnet(img)
        if boxes.shape[0]:
            boxes, scores = self._stage_rnet(img, boxes)
        landmarks = boxes.new_zeros((0, 5, 2))
        if boxes.shape[0]:
            boxes, scores, landmarks = self._stage_onet(img, boxes)
        return (
            boxes.cpu().numpy().astype(np.float32).reshape(-1, 4),
            scores.cpu().numpy().astype(np.float32).reshape(-1),
            landmarks.cpu().numpy().astype(np.float32).reshape(-1, 5, 2),
        )

    def _stage_pnet(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows of P-Net over the pyramid → square candidate boxes (M×4) and their P-Net scores (M)."""
        height, width = img.shape[2:]
        all_boxes, all_scores, all_reg = [], [], []
        for scale in self.scales(height, width):
            # +1 then int, like the reference implementations: the pyramid level never loses its last row/column.
            size = (int(height * scale + 1), int(width * scale + 1))
            reg, prob = self.pnet(_normalise(F.interpolate(img, size=size, mode="area")))
            face = prob[0, 1]
            ys, xs = torch.nonzero(face >= self.thresholds[0], as_tuple=True)
            if ys.numel() == 0:
                continue
            # Each output cell sees a 12×12 window at stride 2 of the resized image; map it back to the original.
            x1 = (_PNET_STRIDE * xs).float() / scale
            y1 = (_PNET_STRIDE * ys).float() / scale
            side = _PNET_CELL / scale
            cand = torch.stack([x1, y1, x1 + side, y1 + side], dim=1)
            score = face[ys, xs]
            keep = nms(cand, score, self._NMS_PNET_SCALE)
            all_boxes.append(cand[keep])
            all_scores.append(score[keep])
            all_reg.append(reg[0, :, ys, xs].T[keep])
        if not all_boxes:
            return img.new_zeros((0, 4)), img.new_zeros((0,))
        boxes, scores, reg = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_reg)
        keep = nms(boxes, scores, self._NMS_PNET_ALL)
        boxes = _square(_regress(boxes[keep], reg[keep]))
        return boxes, scores[keep]

    def _crops(self, img: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
        """Square crops (N×3×size×size, normalised) of the integer-rounded boxes; outside the image is black (0),
        as in the original MTCNN, so a face cut by the border keeps its proportions."""
        height, width = img.shape[2:]
        out = img.new_empty((boxes.shape[0], 3, size, size))
        for k, (x1, y1, x2, y2) in enumerate(torch.round(boxes).long().tolist()):
            x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
            canvas = img.new_zeros((1, 3, y2 - y1, x2 - x1))
            sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
            if sx2 > sx1 and sy2 > sy1:
                canvas[:, :, sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = img[:, :, sy1:sy2, sx1:sx2]
            out[k] = F.interpolate(canvas, size=(size, size), mode="area")[0]
        return _normalise(out)

    def _batched(self, net: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [net(crops[i : i + self.batch_size]) for i in range(0, crops.shape[0], self.batch_size)]
        return tuple(torch.cat(outs) for outs in zip(*parts))

    def _stage_rnet(self, img: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reg, prob = self._batched(self.rnet, self._crops(img, boxes, _RNET_SIZE))
        score = prob[:, 1]
        ok = score > self.thresholds[1]
        boxes, score, reg = boxes[ok], score[ok], reg[ok]
        keep = nms(boxes, score, self._NMS_RNET)
        return _square(_regress(boxes[keep], reg[keep])), score[keep]

    def _stage_onet(self, img: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reg, points, prob = self._batched(self.onet, self._crops(img, boxes, _ONET_SIZE))
        score = prob[:, 1]
        ok = score > self.thresholds[2]
        boxes, score, reg, points = boxes[ok], score[ok], reg[ok], points[ok]
        wh = boxes[:, 2:4] - boxes[:, 0:2]
        # Landmarks are fractions of the (square) O-Net input box, x's first then y's.
        landmarks = torch.stack(
            [boxes[:, None, 0] + wh[:, None, 0] * points[:, :5], boxes[:, None, 1] + wh[:, None, 1] * points[:, 5:]],
            dim=2,
        )
        boxes = _regress(boxes, reg)
        keep = _nms_min(boxes, score, self._NMS_ONET)
        return boxes[keep], score[keep], landmarks[keep]
