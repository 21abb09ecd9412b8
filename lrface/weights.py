"""Checkpoint loaders and converters, and the fetching of the pretrained parts that registry packages ship.

MTCNN's weights come from the ``facenet-pytorch`` wheel on PyPI. That package pins torch<2.3, so it is never
installed: the wheel is downloaded with ``pip download --no-deps`` and the three ``.pt`` files are read out of the zip.
Real photos for the package judges come the same way out of the ``face-recognition`` sdist (:func:`fetch_real_photos`).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from lrface.inference import to_model_range

MTCNN_WHEEL = "facenet-pytorch==2.6.0"
MTCNN_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
REAL_PHOTOS_SDIST = "face-recognition==1.3.0"
# The sdist's tests/test_images/ and who is in them (32bit.png is obama2.jpg saved as a 32-bit RGBA PNG).
REAL_PHOTOS = {"obama.jpg": "Barack Obama", "obama2.jpg": "Barack Obama", "obama3.jpg": "Barack Obama",
               "obama_partial_face.jpg": "Barack Obama", "obama_partial_face2.jpg": "Barack Obama",
               "32bit.png": "Barack Obama", "biden.jpg": "Joe Biden"}


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


def fetch_real_photos(dest: str | os.PathLike = "data/real_photos", sdist: str | os.PathLike | None = None) -> Path:
    """Extracts the 7 real photos of ``face_recognition-1.3.0/tests/test_images/`` (6 of Barack Obama, 1 of Joe Biden;
    official White House photographs, shipped in Adam Geitgey's MIT-licensed ``face-recognition`` sdist) into ``dest``
    and writes ``dest/PROVENANCE.txt`` (source, licence, identity and sha256 of every file).

    Args:
        dest: output directory; when PROVENANCE.txt is already there nothing is done.
        sdist: a local ``face_recognition-1.3.0.tar.gz``; by default it is downloaded from the package index with
            ``pip download --no-deps --no-binary :all:``.
    """
    dest = Path(dest)
    if (dest / "PROVENANCE.txt").is_file() and all((dest / f).is_file() for f in REAL_PHOTOS):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   REAL_PHOTOS_SDIST, "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(Path(tmp).glob("face_recognition-*.tar.gz"))
            if done.returncode != 0 or not found:
                raise RuntimeError(f"could not download the {REAL_PHOTOS_SDIST} sdist (needs the package index): "
                                   f"{done.stderr[-2000:]}")
            sdist = found[0]
        lines = [f"Real photos extracted from tests/test_images/ of the {REAL_PHOTOS_SDIST} source distribution",
                 f"(PyPI: pip download --no-deps --no-binary :all: {REAL_PHOTOS_SDIST}; file {Path(sdist).name}).",
                 "face_recognition is (c) 2017 Adam Geitgey, MIT License; the photos are official White House",
                 "photographs (their EXIF credits the White House). Used only as test images; never committed.",
                 "", "file\tidentity\tsha256"]
        with tarfile.open(sdist, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers()
                       if m.isfile() and Path(m.name).parent.as_posix().endswith("tests/test_images")}
            for name, who in REAL_PHOTOS.items():
                if name not in members:
                    raise RuntimeError(f"{sdist}: no tests/test_images/{name} in the sdist")
                data = tar.extractfile(members[name]).read()
                part = dest / f".{name}.part"
                part.write_bytes(data)
                os.replace(part, dest / name)
                lines.append(f"{name}\t{who}\t{hashlib.sha256(data).hexdigest()}")
        part = dest / ".PROVENANCE.txt.part"
        part.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(part, dest / "PROVENANCE.txt")
    return dest


#: Generators that registry packages ship, by name: (import name, file inside the package, the install command).
#: ``gan-face-generate``: Chien Liu's 64×64 DCGAN (nz 100, ngf 64) trained on Microsoft's DigiFace-1M; the package
#: is MIT, the DigiFace-1M data (hence these weights) are for non-commercial research only. Installed ``--no-deps``
#: (its wandb[media] pins are not needed: only ``weights.tar`` is read, never the package's modules).
PACKAGED_GENERATORS = {
    "gan-face-generate": ("gan_face_generate", "weights.tar",
                          "pip install --no-deps 'gan-face-generate==1.1.1'"),
}


def resolve_generator_path(name: str | os.PathLike) -> Path:
    """A generator path, or a name of :data:`PACKAGED_GENERATORS` → that file of the installed package.

    An existing file or folder of that name wins over the package. The package is located with
    ``importlib.util.find_spec`` (``lrface.judges.package_data``), so none of its code runs.

    Raises:
        ImportError: a packaged name whose package is not installed (the message gives the pip command).
    """
    path = Path(name)
    entry = PACKAGED_GENERATORS.get(str(name))
    if entry is None or path.exists():
        return path
    from lrface.judges.package_data import package_file

    return package_file(*entry)


def load_weights_file(path: Path):
    """``torch.load(weights_only=True)`` on the CPU; a file that is not plain weights raises ValueError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # weights_only refuses arbitrary pickles: say so instead of a bare UnpicklingError
        raise ValueError(f"{path}: not a plain weights checkpoint ({type(exc).__name__}: {exc})") from None


def backbone_state_dict(path: str | os.PathLike) -> dict:
    """The backbone weights in a checkpoint file, as a plain state_dict with official key names.

    Accepts an official insightface ``backbone.pth`` / ``model.pt`` (a plain state_dict), one saved from a DDP-wrapped
    model (``module.`` prefix), and a Lightning checkpoint of ours (``state_dict`` with ``backbone.`` prefix). Loaded
    with ``weights_only=True``: a file that needs pickled code to load is refused.
    """
    path = Path(path)
    return _backbone_weights(load_weights_file(path), path)


def _backbone_weights(obj, path: Path) -> dict:
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
    """An IResNet (``r18`` ... ``r200``, also spelled ``iresnet50``) with ``weights`` loaded strictly, or dlib's
    pretrained face ResNet (``dlib``: :class:`lrface.nets.dlib_backbone.DlibBackbone`; ``weights`` its ``.dat``, None
    the ``face-recognition-models`` package's).

    ``kwargs`` go to the constructor (``num_features``, ``widths``, ...); the defaults give the official shapes.
    """
    from lrface.nets.dlib_backbone import is_dlib_features

    if is_dlib_features(name):
        return _dlib_backbone(weights, name, **kwargs)
    from lrface.nets.iresnet import get_model

    model = get_model(name.replace("iresnet", "r"), **kwargs)
    if weights is not None:
        model.load_state_dict(backbone_state_dict(weights), strict=True)
    return model.eval()


def load_classifier_shards(paths: Sequence[str | os.PathLike]) -> torch.Tensor:
    """The C×D class centres of a Partial FC run saved one shard per rank (arcface_torch ``softmax_fc_gpu_{rank}.pt``:
    a tensor or ``{"weight": n_r×D}``), concatenated in the given (rank) order — ranks hold contiguous class ranges."""
    shards = []
    for p in paths:
        obj = load_weights_file(Path(p))
        weight = obj.get("weight") if isinstance(obj, dict) else obj
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"{p}: expected a classifier shard (an n×D tensor or {{'weight': n×D}}), got "
                             f"{type(weight).__name__}")
        shards.append(weight.float())
    if len({w.shape[1] for w in shards}) != 1:
        raise ValueError(f"classifier shards disagree on D: {[tuple(w.shape) for w in shards]} ({list(paths)})")
    return torch.cat(shards)


def load_recognition_trunk(path: str | os.PathLike,
                           classifier: str | os.PathLike | Sequence[str | os.PathLike] | None = None
                           ) -> tuple[dict, torch.Tensor | None]:
    """A trained recognition network and its classifier: BTNet's TNet and κ* (seed 004 Eq. 1).

    Args:
        path: our ``FeatureExtractorModule`` ``.ckpt`` (``backbone.*``; κ* = ``head.weight`` or the gathered
            ``partial_fc.weight``, C×D) or an insightface / BTNet ``backbone.pth`` / ``model.pt``.
        classifier: κ* from elsewhere: one file or the per-rank ``softmax_fc_gpu_{rank}.pt`` shards in rank order
            (:func:`load_classifier_shards`). Overrides the checkpoint's own head.

    Returns:
        (IResNet state dict, C×D fp32 class centres or None when neither source has them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such trunk checkpoint")
    obj = load_weights_file(path)
    weights = _backbone_weights(obj, path)
    kappa = None
    if classifier is not None:
        kappa = load_classifier_shards([classifier] if isinstance(classifier, (str, os.PathLike)) else classifier)
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
        kappa = next((state[k].float() for k in ("head.weight", "partial_fc.weight") if k in state), None)
    return weights, kappa


def load_btnet(path: str | os.PathLike, branches: dict[int, str | os.PathLike] | None = None,
               share: str = "bn"):
    """A BTNet (seed 004) for inference, in eval mode.

    Args:
        path: a ``BTNetModule`` ``.ckpt`` of ours (``btnet.*``: resolutions and sharing read from the keys), or — with
            ``branches`` — TNet's ``backbone.pth`` / ``model.pt`` (IResNet layout).
        branches: {r: the authors' per-resolution ``model.pt``} (a full IResNet each; BNet_r is read from it by
            :meth:`lrface.nets.btnet.BTNet.load_branch_network`).
        share: for ``branches``: ``"bn"`` checks the files' tail convolutions equal TNet's; ``"copy"`` keeps them.
    """
    from lrface.nets.btnet import BTNet, iresnet_from_state_dict

    path = Path(path)
    obj = load_weights_file(path)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if branches:
        model = BTNet.from_trunk(_backbone_weights(obj, path), sorted(int(r) for r in branches), share=share)
        for r, file in branches.items():
            model.load_branch_network(int(r), backbone_state_dict(file))
        return model.eval()
    if not isinstance(state, dict) or not any(k.startswith("btnet.") for k in state):
        raise ValueError(f"{path}: not a BTNetModule checkpoint (no btnet.* weights); for TNet + the authors' "
                         "per-resolution files pass branches={7: 'model_7.pt', ...}")
    weights = {k[len("btnet."):]: v for k, v in state.items() if k.startswith("btnet.")}
    resolutions = sorted({int(k.split(".")[1]) for k in weights if k.startswith("branches.")})
    share = "copy" if any(k.endswith(".specific.fc.weight") for k in weights) else "bn"
    trunk = iresnet_from_state_dict({k[len("trunk."):]: v for k, v in weights.items() if k.startswith("trunk.")})
    model = BTNet(trunk, resolutions, share=share)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: BTNet weights do not fit branches {resolutions} (share={share!r}): {exc}") from None
    return model.eval()


def _dlib_backbone(weights, what, input_size: int = 112, num_features: int | None = None, **unknown):
    from lrface.nets.dlib_backbone import DlibBackbone

    if unknown:
        raise ValueError(f"{what}: dlib's face ResNet takes only input_size (and num_features=128); got "
                         f"{sorted(unknown)}")
    if num_features not in (None, 128):
        raise ValueError(f"{what}: dlib's face ResNet gives 128-d descriptors, not num_features={num_features}")
    return DlibBackbone(weights, input_size=input_size).eval()


def feature_alpha_thr(F: nn.Module) -> float:
    """The α_thr (degrees) of L_sim that suits F when none is given: its backbone's ``same_person_angle`` (dlib:
    :data:`lrface.nets.dlib_backbone.SAME_PERSON_ANGLE`), else the official code's 65° (``ALPHA_THR``)."""
    from lrface.losses.identity import ALPHA_THR

    return float(getattr(getattr(F, "backbone", F), "same_person_angle", ALPHA_THR))


def feature_gamma_temp(F: nn.Module) -> float:
    """The γ_temp (degrees) of L_sim that suits F when none is given: its backbone's ``same_person_temp`` (dlib:
    :data:`lrface.nets.dlib_backbone.SAME_PERSON_TEMP`), else the official code's 10° (``GAMMA_TEMP``)."""
    from lrface.losses.identity import GAMMA_TEMP

    return float(getattr(getattr(F, "backbone", F), "same_person_temp", GAMMA_TEMP))


class FeatureNets(NamedTuple):
    """The seed paper's F, C_R, C_A (Eq. 4–8), ready for :class:`lrface.losses.identity.PulseConstraints`.

    Attributes:
        F: aligned faces B×3×h×w in [0, 1] → B×D embeddings (normalises to [-1, 1] and resizes to its input size
            itself; a :class:`FaceFeatures`).
        C_R: B×D → B×7 race logits (FairFace order), or None when the checkpoint has no race classifier.
        C_A: B×D → B×40 attribute logits (CelebA order), or None.
    """

    F: nn.Module
    C_R: nn.Module | None
    C_A: nn.Module | None


class FaceFeatures(nn.Module):
    """A recognition backbone behind the dataset convention: images in [0, 1] at any square size.

    Args:
        backbone: B×3×S×S in [-1, 1] → B×D (e.g. an IResNet).
        input_size: S; inputs of another size are resized bilinearly (differentiable, antialiased when shrinking).
    """

    def __init__(self, backbone: nn.Module, input_size: int = 112):
        super().__init__()
        self.backbone, self.input_size = backbone, int(input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×h×w in [0, 1] → B×D (not normalised), as ``FeatureExtractorModule.forward`` at S×S."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected B×3×h×w images, got {tuple(images.shape)}")
        if images.shape[-2:] != (self.input_size, self.input_size):
            shrink = min(images.shape[-2:]) > self.input_size
            images = nn.functional.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                               align_corners=False, antialias=shrink)
        return self.backbone(to_model_range(images))


_CLASSIFIERS = {"race_classifier": 7, "attribute_classifier": 40}


def _run_config_backbone(path: Path) -> dict | None:
    """``module.backbone`` of ``<run dir>/config.yaml`` when ``path`` is ``<run dir>/checkpoints/*.ckpt``."""
    config = path.parent.parent / "config.yaml"
    if path.parent.name != "checkpoints" or not config.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    except Exception as exc:
        raise ValueError(f"{config}: unreadable run config ({type(exc).__name__}: {exc})") from None
    node = (cfg.get("module") or {}).get("backbone") if isinstance(cfg, dict) else None
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"{config}: no module.backbone with a _target_ (needed to rebuild the backbone of {path})")
    return node


def _classifier(state: dict, name: str, dim: int, path: Path) -> nn.Linear | None:
    weight, bias = state.get(f"{name}.weight"), state.get(f"{name}.bias")
    if weight is None:
        return None
    expected = _CLASSIFIERS[name]
    if weight.dim() != 2 or weight.shape != (expected, dim) or bias is None or bias.shape != (expected,):
        raise ValueError(f"{path}: {name} must be Linear({dim} → {expected}) (weight {expected}×{dim}, bias "
                         f"{expected}); got weight {tuple(weight.shape)}, bias "
                         f"{None if bias is None else tuple(bias.shape)}")
    layer = nn.Linear(dim, expected)
    layer.load_state_dict({"weight": weight, "bias": bias})
    return layer


def load_feature_extractor(path: str | os.PathLike, backbone: str | None = None, **backbone_kwargs) -> FeatureNets:
    """F (+ C_R, C_A when present) from a checkpoint.

    - A Lightning ``.ckpt`` of ``FeatureExtractorModule`` (``state_dict`` with ``backbone.*``). The architecture is
      ``module.backbone`` of ``<run dir>/config.yaml`` when the file is ``<run dir>/checkpoints/*.ckpt``
      (``backbone_kwargs`` override its entries); an explicit ``backbone`` name replaces it. The classifiers come from
      ``race_classifier.{weight,bias}`` (D → 7) and ``attribute_classifier.{weight,bias}`` (D → 40) when present.
    - An insightface ``backbone.pth`` (plain or DDP ``module.`` state_dict): needs ``backbone`` (``r18`` … ``r200``).
    - ``"dlib"`` (or a dlib ``.dat`` file): dlib's face-recognition ResNet, trained on about 3 million real faces, as
      a pretrained F (:class:`lrface.nets.dlib_backbone.DlibBackbone`: 128-d, ArcFace crops in); no C_R / C_A.
      ``backbone_kwargs``: ``input_size`` only.

    Args:
        path: the checkpoint.
        backbone: IResNet name; ``backbone_kwargs`` go to its constructor (``num_features``, ``widths``,
            ``input_size``, ...).

    Returns:
        :class:`FeatureNets` in eval mode with ``requires_grad`` off (inference only; the search optimises latents).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not such a checkpoint, or its weights do not fit the architecture (message names it).
    """
    from lrface.config import instantiate
    from lrface.nets.dlib_backbone import DLIB_F_NAMES, is_dlib_features

    if is_dlib_features(path) or is_dlib_features(backbone):
        weights = None if str(path).lower() in DLIB_F_NAMES else path
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"{weights}: no such dlib face-recognition model (.dat)")
        net = _dlib_backbone(weights, path, **backbone_kwargs)
        nets = FeatureNets(FaceFeatures(net, net.input_size), None, None)
        nets.F.eval().requires_grad_(False)
        return nets
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such feature-extractor checkpoint")
    obj = load_weights_file(path)
    lightning = isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict)
    full_state = obj["state_dict"] if lightning else {}
    weights = _backbone_weights(obj, path)
    if backbone is not None:
        net = load_backbone(backbone, None, **backbone_kwargs)
        arch = f"{backbone} {backbone_kwargs or ''}".strip()
    else:
        node = _run_config_backbone(path) if lightning else None
        if node is None:
            raise ValueError(f"{path}: cannot tell the backbone architecture: "
                             + ("no <run dir>/config.yaml beside checkpoints/; " if lightning else
                                "a plain backbone state_dict; ")
                             + "pass backbone='r50' (and num_features / widths if not the official ones)")
        node = {**node, **backbone_kwargs}
        net = instantiate(node)
        arch = f"{node['_target_']}({', '.join(f'{k}={v}' for k, v in node.items() if k != '_target_')})"
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: backbone weights do not fit {arch}: {exc}") from None
    dim = getattr(net, "num_features", None)
    if dim is None:  # a backbone without the attribute: trust the classifiers' input width
        dim = next((full_state[f"{n}.weight"].shape[-1] for n in _CLASSIFIERS if f"{n}.weight" in full_state), 0)
    input_size = int(getattr(net, "input_size", backbone_kwargs.get("input_size", 112)))
    classifiers = (_classifier(full_state, name, int(dim), path) for name in _CLASSIFIERS)
    nets = FeatureNets(FaceFeatures(net, input_size), *classifiers)
    for m in nets:
        if m is not None:
            m.eval().requires_grad_(False)
    return nets


# Generator checkpoints (PULSE .pt pair, rosinality .pt, NVlabs stylegan2-ada .pkl) live in lrface.generators; these
# names are the public API.
from lrface.generators import UnsafeCheckpointError, load_generator  # noqa: E402,F401


def load_mrgan_generator(path: str | os.PathLike) -> nn.Module:
    """MR-GAN's generator (seed 002) in eval mode, frozen, from what ``MRGANModule`` writes.

    Args:
        path: ``<run dir>/mrgan_generator.pt`` (``{"config": MRGANGenerator kwargs, "state_dict"}``, written at the
            end of fit), or a Lightning ``<run dir>/checkpoints/*.ckpt`` (``generator.*`` keys; the architecture is
            ``module.generator`` of the run's ``config.yaml``).
    """
    from lrface.nets.mrgan import MRGANGenerator

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MR-GAN generator file")
    obj = load_weights_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict) and isinstance(obj.get("state_dict"), dict):
        config, state = obj["config"], obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        run_config = path.parent.parent / "config.yaml"
        if path.parent.name != "checkpoints" or not run_config.is_file():
            raise ValueError(f"{path}: a Lightning checkpoint needs its run's config.yaml at {run_config} to rebuild "
                             f"the generator; or pass the run's mrgan_generator.pt")
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(OmegaConf.load(run_config), resolve=True).get("module", {}).get("generator")
        if not isinstance(node, dict):
            raise ValueError(f"{run_config}: no module.generator")
        config = {k: v for k, v in node.items() if not k.startswith("_")}
        state = {k[len("generator."):]: v for k, v in obj["state_dict"].items() if k.startswith("generator.")}
        if not state:
            raise ValueError(f"{path}: no generator.* weights (not an MRGANModule checkpoint)")
    else:
        raise ValueError(f"{path}: expected an MR-GAN generator file ({{'config', 'state_dict'}}) or an MRGANModule "
                         f"checkpoint")
    generator = MRGANGenerator(**config)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit MRGANGenerator({config}): {exc}") from None
    return generator.eval().requires_grad_(False)


def load_frozen_recognition(path: str | os.PathLike) -> tuple[nn.Module, torch.Tensor | None]:
    """A trained IResNet (our ``.ckpt`` or an insightface ``backbone.pth``), eval mode, frozen, and its class centres
    (C×D, or None): RAN's pre-trained HR / LR models and MR-GAN's identity network (seed 002 Alg. 1–2)."""
    from lrface.nets.btnet import iresnet_from_state_dict

    weights, kappa = load_recognition_trunk(path)
    net = iresnet_from_state_dict(weights)
    net.load_state_dict(weights, strict=True)
    return net.eval().requires_grad_(False), kappa
