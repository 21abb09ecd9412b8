"""The independent judges of the seed paper's re-identification tables: a race classifier (Table 2, §4.2) and an
attribute detector (Table 3, §4.3) that score the upscaled faces.

§4.2 scores a generated face by "an off the shelf race classifier", §4.3 by "an external attribute detection
algorithm". Independence is the point: the generation losses L_sim, L_race and L_att all read the feature extractor
F (and its heads C_R / C_A), so a judge built on F would reward F's own blind spots — a face that fools F into "Black"
would also be scored "Black". A :class:`FaceJudge` is a separate timm network trained on its own (or FairFace's
official ResNet-34), sharing no weights with F.

``FaceJudge("resnet34", task="race")`` has exactly the layout of FairFace's official
``res34_fair_align_multi_7_20190809.pt``: a torchvision ResNet-34 (timm's ResNet parameter names equal torchvision's)
whose ``fc`` has 18 outputs — 7 race (:data:`lrface.labels.RACE_NAMES` order), 2 gender (Male, Female), 9 age
(0-2 … 70+) — so that file loads with ``strict=True``. The input pipeline is the one of FairFace's ``predict.py``:
RGB in [0, 1], resized to 224, ImageNet mean / std.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrface.labels import CELEBA_ATTRIBUTES, RACE_NAMES

__all__ = ["FaceJudge", "JUDGE_TASKS", "IMAGENET_MEAN", "IMAGENET_STD", "RACE_SLICE", "GENDER_SLICE", "AGE_SLICE"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: FairFace's official 18-output head: logits[:, 0:7] race, [7:9] gender, [9:18] age.
RACE_SLICE, GENDER_SLICE, AGE_SLICE = slice(0, len(RACE_NAMES)), slice(7, 9), slice(9, 18)
#: default output count per task
JUDGE_TASKS = {"race": 18, "attributes": len(CELEBA_ATTRIBUTES)}

_FORBIDDEN = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


class FaceJudge(nn.Module):
    """A classifier of faces that never shares the feature extractor F: a timm model on ImageNet-normalised RGB.

    Args:
        arch: timm architecture (``resnet34`` = FairFace's official judge; ``resnet18``, ``resnet10t`` for CPUs).
        task: ``"race"`` (FairFace 7 race + 2 gender + 9 age outputs) or ``"attributes"`` (CelebA's 40 attributes,
            :data:`lrface.labels.CELEBA_ATTRIBUTES` order, one logit each).
        num_outputs: logits per image; default 18 (race) / 40 (attributes). A race judge needs ≥ 7 (only the race
            slice is then meaningful if < 18).
        input_size: square side the network sees (FairFace's predict.py: 224); inputs of another size are resized.
        **timm_kwargs: forwarded to ``timm.create_model`` (e.g. ``drop_rate``); pretrained / checkpoint options are
            refused (no downloads, ever).

    Attributes:
        net: the timm model. ``judge.net.state_dict()`` has torchvision's ResNet key names (an official FairFace
            ``.pt`` loads into ``judge.net``); ``judge.state_dict()`` is the same under ``net.`` (the ImageNet
            mean / std are non-persistent buffers).
    """

    def __init__(self, arch: str = "resnet34", task: str = "race", num_outputs: int | None = None,
                 input_size: int = 224, **timm_kwargs):
        super().__init__()
        if task not in JUDGE_TASKS:
            raise ValueError(f"task must be one of {tuple(JUDGE_TASKS)}, got {task!r}")
        refused = [k for k in _FORBIDDEN if k in timm_kwargs]
        if refused:
            raise ValueError(f"FaceJudge never loads pretrained weights through timm; remove {refused}")
        num_outputs = JUDGE_TASKS[task] if num_outputs is None else int(num_outputs)
        if task == "race" and num_outputs < RACE_SLICE.stop:
            raise ValueError(f"a race judge needs at least {RACE_SLICE.stop} outputs, got {num_outputs}")
        if task == "attributes" and num_outputs != JUDGE_TASKS["attributes"]:
            raise ValueError(f"an attribute judge has {JUDGE_TASKS['attributes']} outputs, got {num_outputs}")
        self.arch, self.task, self.num_outputs, self.input_size = arch, task, num_outputs, int(input_size)
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_outputs, **timm_kwargs)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        """B×3×H×W RGB in [0, 1] → B×3×input_size×input_size ImageNet-normalised (bilinear, antialiased resize)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected B×3×H×W RGB images, got {tuple(images.shape)}")
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        """B×3×H×W RGB in [0, 1] (any H, W) → B×num_outputs raw logits."""
        return self.net(self.preprocess(images))

    def _need(self, task: str, outputs: int = 0) -> None:
        if self.task != task:
            raise ValueError(f"this FaceJudge was built for task {self.task!r}, not {task!r}")
        if self.num_outputs < outputs:
            raise ValueError(f"this FaceJudge has {self.num_outputs} outputs; gender / age need FairFace's 18")

    def race_logits(self, images: Tensor) -> Tensor:
        """B×3×H×W → B×7 race logits (:data:`lrface.labels.RACE_NAMES` order)."""
        self._need("race")
        return self(images)[:, RACE_SLICE]

    def gender_logits(self, images: Tensor) -> Tensor:
        """B×3×H×W → B×2 gender logits (Male, Female)."""
        self._need("race", GENDER_SLICE.stop)
        return self(images)[:, GENDER_SLICE]

    def age_logits(self, images: Tensor) -> Tensor:
        """B×3×H×W → B×9 age-group logits (0-2, 3-9, …, 70+)."""
        self._need("race", AGE_SLICE.stop)
        return self(images)[:, AGE_SLICE]

    def attribute_logits(self, images: Tensor) -> Tensor:
        """B×3×H×W → B×40 attribute logits (CelebA order; > 0 means present)."""
        self._need("attributes")
        return self(images)

    @torch.no_grad()
    def predict_race(self, images: Tensor) -> Tensor:
        """B×3×H×W → B int64 race indices (Table 2's re-identification compares them with the source race)."""
        return self.race_logits(images).argmax(dim=1)

    @torch.no_grad()
    def predict_attributes(self, images: Tensor) -> Tensor:
        """B×3×H×W → B×40 int64 0/1 (logit > 0), CelebA order (Table 3 reads five of them)."""
        return (self.attribute_logits(images) > 0).long()
