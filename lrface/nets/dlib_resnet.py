"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch, read from the ``.dat``.

The network is the ``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp`` — by dlib's description a
ResNet-34 with a few layers removed and half the filters, trained with dlib's ``loss_metric`` on about 3 million
faces, 99.38% on LFW; 5.61 M parameters. Spatial sizes on the right:

    input_rgb_image_sized<150>      x = (pixel − channel mean) / 256, RGB, 150×150
    con<32,7,7,2,2> affine relu max_pool<3,3,2,2>                         150 → 72 → 35
    alevel4: 3 × ares<32>                                                 35
    alevel3: ares_down<64>,  3 × ares<64>                                 17
    alevel2: ares_down<128>, 2 × ares<128>                                8
    alevel1: ares_down<256>, 2 × ares<256>                                4 (branches 3 and 4: see below)
    alevel0: ares_down<256>                                               2 (branches 1 and 2)
    avg_pool_everything, fc_no_bias<128>                                  → 128-d descriptor

``ares<N>`` = relu(x + affine(con3×3(relu(affine(con3×3(x)))))); ``ares_down<N>`` = the same with the first
convolution at stride 2 and the shortcut ``avg_pool<2,2,2,2>(x)``. dlib's strided convolutions and pools have no
padding (``padding = stride != 1 ? 0 : size/2``), so the two branches of a down block can differ in size (8 → 3 by
the convolutions, 4 by the pooled shortcut): dlib's ``add_prev`` then returns the larger shape and adds the two with
zeros past each one's end (trailing channels, rows, columns). ``affine`` layers are batch normalisation folded into a
per-channel scale and shift (``gamma``, ``beta``), as dlib stores them in this file. The descriptor is the fc output
itself, not normalised: ``face_recognition_model_v1.compute_face_descriptor`` returns exactly that (with
``num_jitters`` ≤ 1), and two faces are the same person when the Euclidean distance is below 0.6 (the
``loss_metric`` threshold stored in the file).

The ``.dat`` is read by :func:`load_dlib_face_resnet` with :class:`lrface.nets.dlib_dat.DatReader`, never through
dlib. dlib writes a network outermost layer first, each layer's wrapper version before its sub-network, and each
layer's own data after it: the file holds the loss layer, then one version number per layer down to the input, the
input layer, then the layers' data from the input upwards (``dlib/dnn/core.h``, ``add_layer`` serialisation).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrface.nets.dlib_dat import DatReader

__all__ = ["DlibFaceResNet", "load_dlib_face_resnet", "ANET_STAGES", "CHIP_SIZE"]

CHIP_SIZE = 150
# (width, residual blocks, first one down-sampling) from the input upwards: alevel4 … alevel0.
ANET_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class Affine(nn.Module):
    """dlib's ``affine_`` in CONV mode: y = x · gamma[c] + beta[c] (a folded batch norm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[:, None, None] + self.beta[:, None, None]


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: B×C×H×W of the larger of each dim, each input zero past its own end."""
    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def grow(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(shape):
            return t
        return F.pad(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))

    return grow(a) + grow(b)


class ResidualBlock(nn.Module):
    """``ares<N>`` (``down=False``) or ``ares_down<N>`` (``down=True``): B×C_in×H×W → B×N×H'×W'."""

    def __init__(self, in_channels: int, channels: int, down: bool):
        super().__init__()
        self.down = bool(down)
        stride = 2 if down else 1
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=0 if down else 1)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.affine2 = Affine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(torch.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return torch.relu(add_padded(y, shortcut))


class DlibFaceResNet(nn.Module):
    """dlib's face-recognition ResNet: B×3×150×150 RGB in [0, 1] → B×128 descriptors (dlib's units, not normalised).

    Args:
        stages: (width, blocks, first block down-samples) from the input upwards; the default is dlib's ``anet_type``.
        descriptor_dim: the fc_no_bias output size.
        mean: the input layer's per-channel pixel means (0..255 units), overwritten by the ``.dat`` file's.

    Inputs in [0, 1] are taken to 0..255 pixel units, then normalised as dlib's ``input_rgb_image_sized``:
    (pixel − mean[c]) / 256. Any other input size runs too (the pooling at the end is global), but only 150×150
    aligned chips (``dlib.get_face_chip(image, shape, 150, 0.25)``) give dlib's descriptors.
    """

    def __init__(self, stages=ANET_STAGES, descriptor_dim: int = 128, mean=(122.782, 117.001, 104.298)):
        super().__init__()
        self.stages = tuple(tuple(s) for s in stages)
        stem_width = self.stages[0][0]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.conv1 = nn.Conv2d(3, stem_width, 7, stride=2, padding=0)
        self.affine1 = Affine(stem_width)
        blocks, width = [], stem_width
        for channels, count, down in self.stages:
            for i in range(count):
                blocks.append(ResidualBlock(width, channels, down and i == 0))
                width = channels
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(width, descriptor_dim, bias=False)
        self.num_features = descriptor_dim

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [0, 1] → dlib's network input (pixel − mean) / 256."""
        return (images * 255.0 - self.mean[:, None, None]) / 256.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected B×3×H×W RGB images in [0, 1], got {tuple(images.shape)}")
        x = self.normalise(images)
        x = F.max_pool2d(torch.relu(self.affine1(self.conv1(x))), 3, 2)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


def chip_to_tensor(chips: np.ndarray) -> torch.Tensor:
    """uint8 chips H×W×3 or N×H×W×3 (RGB, as ``dlib.get_face_chip`` returns) → N×3×H×W float in [0, 1]."""
    arr = np.asarray(chips)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB chips H×W×3 or N×H×W×3, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0


# --- reading dlib's .dat ------------------------------------------------------------------------------------------

def _anet_layers(stages) -> list[tuple[str, str]]:
    """(kind, parameter prefix) of every layer, from the input upwards, as dlib nests ``anet_type``.

    Kinds: ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``, ``fc`` (computational layers with
    data in the file) and ``tag`` / ``skip`` (wrappers with only a version number).
    """
    layers = [("con", "conv1"), ("affine", "affine1"), ("relu", ""), ("max_pool", "")]
    index = 0
    for _, count, down in stages:
        for i in range(count):
            p = f"blocks.{index}"
            body = [("tag", ""), ("con", f"{p}.conv1"), ("affine", f"{p}.affine1"), ("relu", ""),
                    ("con", f"{p}.conv2"), ("affine", f"{p}.affine2")]
            if down and i == 0:  # add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<…, tag1<SUBNET>>>>>>
                body += [("tag", ""), ("skip", ""), ("avg_pool", p)]
            layers += body + [("add_prev", ""), ("relu", "")]
            index += 1
    return layers + [("avg_pool_everything", ""), ("fc", "fc")]


def _read_add_layer_state(r: DatReader, version: int, bottom: bool, where: str) -> None:
    """The bookkeeping dlib's ``add_layer`` writes after a layer's data (flags and runtime tensors)."""
    for flag in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        r.boolean(f"{where} {flag}")
    r.skip_tensor(f"{where} x_grad")
    r.skip_tensor(f"{where} cached_output")
    if bottom:
        r.skip_tensor(f"{where} grad_final")
        if version >= 3:
            r.integer(f"{where} sample_expansion_factor")
    elif version == 2:
        r.skip_tensor(f"{where} params_grad")


def _check(r: DatReader, at: int, what: str, found, expected) -> None:
    if tuple(found) != tuple(expected):
        raise r.error(f"{what}: found {tuple(found)}, expected {tuple(expected)} (dlib's anet_type)", at)


def _read_con(r: DatReader, where: str, module: nn.Conv2d, state: dict, prefix: str) -> None:
    r.expect_string("con_4", f"{where} (a con_ layer)")
    at = r.pos
    params = r.tensor(f"{where} params").reshape(-1)
    out_c, in_c, kh, kw = module.weight.shape
    geometry = [r.integer(f"{where} {n}") for n in ("num_filters", "nr", "nc", "stride_y", "stride_x",
                                                     "padding_y", "padding_x")]
    _check(r, at, f"{where} num_filters, nr, nc, strides, paddings", geometry,
           (out_c, kh, kw, *module.stride, *module.padding))
    filters, biases = r.alias_tensor(f"{where} filters"), r.alias_tensor(f"{where} biases")
    _check(r, at, f"{where} filter shape", filters, (out_c, in_c, kh, kw))
    _check(r, at, f"{where} bias shape", biases, (1, out_c, 1, 1))
    if params.size != out_c * in_c * kh * kw + out_c:
        raise r.error(f"{where}: {params.size} parameters, expected {out_c * in_c * kh * kw + out_c} for "
                      f"{out_c}×{in_c}×{kh}×{kw} filters + {out_c} biases", at)
    for name in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        r.floating(f"{where} {name}_multiplier")
    n = out_c * in_c * kh * kw
    state[f"{prefix}.weight"] = torch.from_numpy(params[:n].reshape(out_c, in_c, kh, kw).copy())
    state[f"{prefix}.bias"] = torch.from_numpy(params[n:].copy())


def _read_affine(r: DatReader, where: str, channels: int, state: dict, prefix: str) -> None:
    at = r.pos
    tag = r.string(f"{where} (an affine_ layer)")
    if tag in ("bn_con2", "bn_fc2"):
        raise r.error(f"{where}: holds an unfolded batch-norm layer {tag!r}; this reader expects the affine_ "
                      "layers dlib's face-recognition model stores", at)
    if tag not in ("affine_", "affine_2"):
        raise r.error(f"found {tag!r}, expected 'affine_' while reading {where}", at)
    params = r.tensor(f"{where} params").reshape(-1)
    gamma, beta = r.alias_tensor(f"{where} gamma"), r.alias_tensor(f"{where} beta")
    _check(r, at, f"{where} gamma / beta shapes", (gamma, beta), ((1, channels, 1, 1), (1, channels, 1, 1)))
    mode = r.integer(f"{where} mode")
    if mode != 0:  # dlib's layer_mode: CONV_MODE = 0 (per channel), FC_MODE = 1 (per element)
        raise r.error(f"{where}: affine mode {mode}, expected 0 (CONV_MODE, one scale per channel)", at)
    if tag == "affine_2":
        r.boolean(f"{where} disabled")
    if params.size != 2 * channels:
        raise r.error(f"{where}: {params.size} parameters, expected {2 * channels} (gamma, beta)", at)
    state[f"{prefix}.gamma"] = torch.from_numpy(params[:channels].copy())
    state[f"{prefix}.beta"] = torch.from_numpy(params[channels:].copy())


def _read_pool(r: DatReader, where: str, tag: str, expected: tuple) -> None:
    r.expect_string(tag, f"{where} (a {tag[:-2]} layer)")
    at = r.pos
    geometry = [r.integer(f"{where} {n}") for n in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")]
    _check(r, at, f"{where} window, strides, paddings", geometry, expected)


def _read_fc(r: DatReader, where: str, module: nn.Linear, state: dict) -> None:
    r.expect_string("fc_2", f"{where} (an fc_ layer)")
    at = r.pos
    outputs, inputs = r.integer(f"{where} num_outputs"), r.integer(f"{where} num_inputs")
    _check(r, at, f"{where} num_outputs, num_inputs", (outputs, inputs), (module.out_features, module.in_features))
    params = r.tensor(f"{where} params").reshape(-1)
    weights, _ = r.alias_tensor(f"{where} weights"), r.alias_tensor(f"{where} biases")
    _check(r, at, f"{where} weight shape", weights, (inputs, outputs, 1, 1))
    mode = r.integer(f"{where} bias_mode")
    if mode != 1 or params.size != inputs * outputs:  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        raise r.error(f"{where}: bias_mode {mode} with {params.size} parameters, expected fc_no_bias (mode 1) with "
                      f"{inputs}×{outputs} weights", at)
    for name in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        r.floating(f"{where} {name}_multiplier")
    # dlib computes output = input · W with W stored num_inputs × num_outputs, row-major.
    state["fc.weight"] = torch.from_numpy(params.reshape(inputs, outputs).T.copy())


def load_dlib_face_resnet(path: str | os.PathLike, stages=ANET_STAGES) -> DlibFaceResNet:
    """Reads ``dlib_face_recognition_resnet_model_v1.dat`` (or a file of the same ``anet_type``) into a
    :class:`DlibFaceResNet`, in eval mode.

    Args:
        path: the ``.dat`` file, e.g. ``face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat``
            of the ``face-recognition-models`` package.
        stages: the network's (width, blocks, down) stages; the default is dlib's.

    Raises:
        FileNotFoundError: no such file.
        lrface.nets.dlib_dat.DlibDatError: the file is truncated, corrupt or another architecture; the message names
            the file, the byte offset and the layer it was reading.
    """
    path = Path(path)
    r = DatReader(path)
    net = DlibFaceResNet(stages)
    modules = dict(net.named_modules())
    layers = _anet_layers(net.stages)

    r.version((1,), "the loss layer (add_loss_layer)")
    r.expect_string(("loss_metric_", "loss_metric_2"), "the loss layer (expected dlib's loss_metric)")
    margin = r.floating("loss_metric margin")
    threshold = r.floating("loss_metric distance_threshold")

    versions = []
    for depth, (kind, _) in enumerate(reversed(layers)):
        where = f"layer {len(layers) - depth} from the input ({kind})"
        if kind in ("tag", "skip"):
            versions.append(r.version((1,), f"{where}, add_{kind}_layer"))
        elif depth == len(layers) - 1:
            versions.append(r.version((2, 3), f"{where}, add_layer over the input layer"))
        else:
            versions.append(r.version((1, 2), f"{where}, add_layer"))
    versions.reverse()

    r.expect_string("input_rgb_image_sized", "the input layer")
    mean = [r.floating(f"input layer avg_{c}") for c in ("red", "green", "blue")]
    at = r.pos
    size = (r.integer("input layer NR"), r.integer("input layer NC"))
    _check(r, at, "input size NR, NC", size, (CHIP_SIZE, CHIP_SIZE))

    state = {"mean": torch.tensor(mean, dtype=torch.float32)}
    channels = net.stages[0][0]
    for number, ((kind, prefix), version) in enumerate(zip(layers, versions), start=1):
        where = f"layer {number} from the input ({kind}{' ' + prefix if prefix else ''})"
        if kind in ("tag", "skip"):
            continue
        if kind == "con":
            _read_con(r, where, modules[prefix], state, prefix)
            channels = modules[prefix].out_channels
        elif kind == "affine":
            _read_affine(r, where, channels, state, prefix)
        elif kind == "relu":
            r.expect_string("relu_", f"{where} (a relu_ layer)")
        elif kind == "add_prev":
            r.expect_string("add_prev_", f"{where} (an add_prev_ layer)")
        elif kind == "max_pool":
            _read_pool(r, where, "max_pool_2", (3, 3, 2, 2, 0, 0))
        elif kind == "avg_pool":
            _read_pool(r, where, "avg_pool_2", (2, 2, 2, 2, 0, 0))
        elif kind == "avg_pool_everything":
            _read_pool(r, where, "avg_pool_2", (0, 0, 1, 1, 0, 0))
        elif kind == "fc":
            _read_fc(r, where, modules[prefix], state)
        _read_add_layer_state(r, version, bottom=number == 1, where=where)
    if not r.at_end():
        raise r.error(f"{len(r.data) - r.pos} byte(s) left after the last layer; expected the end of the file")

    missing = sorted(set(net.state_dict()) - set(state))
    if missing:
        raise r.error(f"no data for {missing[:4]} after reading the whole file")
    net.load_state_dict(state, strict=True)
    net.loss_margin, net.distance_threshold = float(margin), float(threshold)
    net.source = str(path)
    return net.eval()
