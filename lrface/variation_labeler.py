"""θ_A as a frozen labeller of URL's additional variations (seed 001, supp. B–C: gender, age, smiling).

URL mines variations that augmentation cannot synthesise with a small CNN θ_A (:class:`~lrface.nets.variation_cnn.
VariationCNN`) trained on CelebA attributes, then uses its binary predictions as the labels u_t of the decorrelation
loss. The CelebA attribute behind each variation (:data:`VARIATION_ATTRIBUTES`), and what label 1 means:

* ``gender`` ← ``Male``: 1 = male;
* ``age`` ← ``Young``, inverted: 1 = *not* Young, i.e. old (the variation is "present" when the face is old);
* ``smiling`` ← ``Smiling``: 1 = smiling.

:func:`load_variation_labeler` reads a Lightning checkpoint of ``lightning_modules.variation_labeler.
VariationLabelerModule`` with ``torch.load(weights_only=True)``: its ``hyper_parameters`` (plain values) say
``variations`` / ``widths`` / ``input_size``, its ``state_dict`` holds the net under ``labeler.net.``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from lrface.inference import to_model_range
from lrface.labels import CELEBA_ATTRIBUTES
from lrface.nets.variation_cnn import VariationCNN
from lrface.weights import load_weights_file

__all__ = ["INVERTED_VARIATIONS", "VARIATION_ATTRIBUTES", "VariationLabeler", "load_variation_labeler",
           "variation_targets"]

#: URL's additional variations → the CelebA attribute each is read from.
VARIATION_ATTRIBUTES = {"gender": "Male", "age": "Young", "smiling": "Smiling"}
#: Variations whose label is the attribute's negation (age: 1 = not Young = old).
INVERTED_VARIATIONS = frozenset({"age"})


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(n) for n in names)
    unknown = [n for n in names if n not in VARIATION_ATTRIBUTES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"variations must be distinct names from {tuple(VARIATION_ATTRIBUTES)}, got {names}")
    return names


def variation_targets(attributes: Tensor, names: Sequence[str]) -> Tensor:
    """CelebA attributes (B×40 floats 0/1, :data:`lrface.labels.CELEBA_ATTRIBUTES` order) → B×M variation labels."""
    names = _check_names(names)
    if attributes.dim() != 2 or attributes.shape[1] != len(CELEBA_ATTRIBUTES):
        raise ValueError(f"expected B×{len(CELEBA_ATTRIBUTES)} CelebA attributes, got {tuple(attributes.shape)}")
    cols = [CELEBA_ATTRIBUTES.index(VARIATION_ATTRIBUTES[n]) for n in names]
    target = attributes[:, cols].float()
    flip = torch.tensor([n in INVERTED_VARIATIONS for n in names], device=target.device)
    return torch.where(flip, 1.0 - target, target)


class VariationLabeler(nn.Module):
    """θ_A with its variation names: images in [0, 1] → one logit per variation.

    Args:
        net: a :class:`VariationCNN` with ``len(names)`` outputs.
        names: the variations, in logit order.
    """

    def __init__(self, net: VariationCNN, names: Sequence[str]):
        super().__init__()
        self.names = _check_names(names)
        if net.num_outputs != len(self.names):
            raise ValueError(f"the net has {net.num_outputs} outputs for {len(self.names)} variations {self.names}")
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        """B×3×H×W RGB in [0, 1] → B×M logits (M = ``len(names)``)."""
        return self.net(to_model_range(images))

    @torch.no_grad()
    def labels(self, images: Tensor) -> dict[str, Tensor]:
        """B×3×H×W in [0, 1] → ``{name: B float 0/1}`` (logit > 0)."""
        logits = self(images)
        return {name: (logits[:, i] > 0).float() for i, name in enumerate(self.names)}


def load_variation_labeler(path: str | os.PathLike) -> VariationLabeler:
    """A trained θ_A from a ``VariationLabelerModule`` checkpoint: eval mode, ``requires_grad=False``, on the CPU.

    Raises:
        ValueError: naming ``path`` when the file is not plain weights, is not such a checkpoint, or its tensors do
            not fit the network its hyper-parameters describe.
    """
    path = Path(path)
    obj = load_weights_file(path)
    what = ("a lightning_modules.variation_labeler.VariationLabelerModule checkpoint (hyper_parameters variations / "
            "widths / input_size, state_dict labeler.net.*)")
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise ValueError(f"{path}: not a Lightning checkpoint; expected {what}")
    hp = obj.get("hyper_parameters") or {}
    if not all(k in hp for k in ("variations", "widths", "input_size")):
        raise ValueError(f"{path}: hyper_parameters lack variations / widths / input_size; expected {what}")
    prefix = "labeler."
    state = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{path}: no labeler.* weights in the state_dict; expected {what}")
    names = _check_names(hp["variations"])
    labeler = VariationLabeler(VariationCNN(len(names), hp["widths"], hp["input_size"]), names)
    own = labeler.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{path}: does not fit VariationCNN(widths={labeler.net.widths}, "
                         f"input_size={labeler.net.input_size}, outputs={len(names)}): missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}, wrong shapes {shapes[:4]}")
    labeler.load_state_dict(state, strict=True)
    labeler.eval()
    labeler.requires_grad_(False)
    return labeler
