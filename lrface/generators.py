"""Loading pretrained face generators: PULSE's StyleGAN1 ``.pt`` pair, rosinality StyleGAN2 ``.pt`` checkpoints,
NVlabs stylegan2-ada-pytorch ``.pkl`` network pickles and DCGAN ``netG_state_dict`` files (``gan-face-generate``).

NVlabs pickles embed the full source of their network classes and a plain ``pickle.load`` would execute it. They are
read here by a restricted unpickler that resolves only an allow-list of globals (torch tensor rebuilders, numpy
scalars/arrays, ``OrderedDict``, ``EasyDict``); the persistence hook ``_reconstruct_persistent_obj`` is replaced by a
stub that only records the class name and the module ``__dict__``. Anything else raises ``UnsafeCheckpointError``.
"""
from __future__ import annotations

import argparse
import collections
import io
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from lrface.nets.stylegan2 import StyleGAN2Generator, default_channels


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint needs a global (class or function) outside the allow-list, so it is refused unexecuted."""


class PersistentStub:
    """Stands in for a ``@persistence.persistent_class`` object: its class name and its ``__dict__``, nothing run.

    Attributes:
        class_name: the pickled ``class_name`` (e.g. ``Generator``, ``SynthesisLayer``).
        state: the module ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ``_init_kwargs``, ...).
    """

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name})"


def _reconstruct_persistent_stub(meta: dict) -> PersistentStub:
    # meta['module_src'] (the network source code) is deliberately dropped, never compiled or executed
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafeCheckpointError(f"unexpected persistent object metadata: {type(meta).__name__}")
    state = meta.get("state") or {}
    return PersistentStub(str(meta.get("class_name")), state if isinstance(state, dict) else {})


class EasyDict(dict):
    """Plain dict standing in for ``dnnlib.util.EasyDict`` (attribute access included, no code from the pickle)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _load_storage_from_bytes(data: bytes):
    # torch's own _load_from_bytes runs a full (unrestricted) torch.load on these bytes: use the weights-only loader
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(f"embedded tensor storage refused by the weights-only loader: {exc}") from None


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_stub,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("dnnlib", "EasyDict"): EasyDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    if hasattr(torch._utils, "_rebuild_parameter_with_state"):
        allowed[("torch._utils", "_rebuild_parameter_with_state")] = torch._utils._rebuild_parameter_with_state
    # numpy 1 pickles name numpy.core.multiarray, numpy 2 numpy._core.multiarray; same functions
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the globals an NVlabs stylegan2-ada network pickle needs."""

    def __init__(self, file, source: str | os.PathLike = "<pickle>"):
        super().__init__(file)
        self.source = str(source)
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            pass
        hint = ""
        if module.startswith("dnnlib.tflib"):
            hint = " (a TensorFlow-era pickle: convert it with stylegan2-ada-pytorch's legacy.py first)"
        raise UnsafeCheckpointError(f"{self.source}: refusing to load global {module}.{name}{hint}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self.source}: unexpected persistent id {type(pid).__name__} in a network pickle")


def load_network_pickle(path: str | os.PathLike) -> dict:
    """Reads an NVlabs stylegan2-ada ``.pkl`` safely: a dict whose networks (``G``, ``D``, ``G_ema``) are
    ``PersistentStub``s. Raises ``UnsafeCheckpointError`` on any global outside the allow-list."""
    with open(path, "rb") as f:
        data = RestrictedUnpickler(f, source=path).load()
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a dict of networks, got {type(data).__name__}")
    return data


def stub_state_dict(stub: PersistentStub, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flattens a ``PersistentStub`` tree into the dotted ``state_dict`` the real module would return.

    Persistent buffers only (``_non_persistent_buffers_set`` is honoured); ``None`` entries are skipped.
    """
    state = stub.state
    out: dict[str, torch.Tensor] = {}
    for name, t in (state.get("_parameters") or {}).items():
        if t is not None:
            out[prefix + name] = t.detach() if isinstance(t, torch.nn.Parameter) else t
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, t in (state.get("_buffers") or {}).items():
        if t is not None and name not in skip:
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentStub):
            raise TypeError(f"submodule {prefix + name} is a {type(child).__name__}, expected a persistent module")
        out.update(stub_state_dict(child, prefix + name + "."))
    return out


def nvlabs_to_rosinality(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps a stylegan2-ada ``Generator`` state_dict to a rosinality / ``StyleGAN2Generator`` state_dict.

    ``mapping.fc{i}`` → ``style.{i+1}``; ``synthesis.b4.const`` (C,4,4) → ``input.input`` (1,C,4,4);
    ``b4.conv1`` → ``conv1``; ``b{8·2^k}.conv0/conv1`` → ``convs.{2k}/{2k+1}``; ``torgb`` → ``to_rgb1`` / ``to_rgbs.k``;
    conv weights (O,I,k,k) gain a leading 1; ``affine`` → ``conv.modulation``; ``noise_strength`` () → ``noise.weight``
    (1,); layer ``bias`` → ``activate.bias``; ToRGB ``bias`` (3,) → (1,3,1,1); ``noise_const`` (R,R) →
    ``noises.noise_j`` (1,1,R,R); ``resample_filter`` (sum 1) ×4 → ``blur.kernel`` / ``upsample.kernel``.
    Both implementations use an unflipped transposed convolution for the up-conv and equal weight/lr scalings, so the
    tensors carry over unchanged. ``mapping.w_avg`` is not part of the result (see ``load_generator``).
    """
    if any(k.startswith("mapping.embed") for k in state):
        raise ValueError("class-conditional generator (mapping.embed): not supported by StyleGAN2Generator")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise KeyError(f"NVlabs state_dict has no {key}")
        used.add(key)
        return state[key]

    fc = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    for i in fc:
        out[f"style.{i + 1}.weight"] = take(f"mapping.fc{i}.weight")
        out[f"style.{i + 1}.bias"] = take(f"mapping.fc{i}.bias")
    if "mapping.w_avg" in state:
        used.add("mapping.w_avg")

    res = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"synthesis\.b(\d+)\.torgb\.weight", k)))
    if not res or res[0] != 4:
        raise KeyError("NVlabs state_dict has no synthesis.b4 block")

    def layer(src: str, dst: str, noise_index: int, up: bool) -> None:
        out[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        if up:
            out[f"{dst}.conv.blur.kernel"] = _kernel(take(f"{src}.resample_filter"), src)
        elif f"{src}.resample_filter" in state:
            used.add(f"{src}.resample_filter")
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.noise.weight"] = take(f"{src}.noise_strength").reshape(1)
        out[f"{dst}.activate.bias"] = take(f"{src}.bias")
        noise = take(f"{src}.noise_const")
        out[f"noises.noise_{noise_index}"] = noise.reshape(1, 1, *noise.shape[-2:])

    def torgb(src: str, dst: str, upsample_filter: torch.Tensor | None) -> None:
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(1, 3, 1, 1)
        if upsample_filter is not None:
            out[f"{dst}.upsample.kernel"] = upsample_filter
        out[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")

    out["input.input"] = take("synthesis.b4.const").unsqueeze(0)
    layer("synthesis.b4.conv1", "conv1", 0, up=False)
    torgb("synthesis.b4.torgb", "to_rgb1", None)
    if "synthesis.b4.resample_filter" in state:
        used.add("synthesis.b4.resample_filter")
    for k, r in enumerate(res[1:]):
        if r != 8 * 2 ** k:
            raise KeyError(f"NVlabs synthesis blocks are not consecutive powers of two: {res}")
        block = f"synthesis.b{r}"
        layer(f"{block}.conv0", f"convs.{2 * k}", 2 * k + 1, up=True)
        layer(f"{block}.conv1", f"convs.{2 * k + 1}", 2 * k + 2, up=False)
        torgb(f"{block}.torgb", f"to_rgbs.{k}", _kernel(take(f"{block}.resample_filter"), block))
    unused = sorted(set(state) - used)
    if unused:
        raise KeyError(f"NVlabs keys with no rosinality counterpart (unsupported architecture?): {unused[:8]}")
    return out


def _kernel(resample_filter: torch.Tensor, where: str) -> torch.Tensor:
    if tuple(resample_filter.shape) != (4, 4):
        raise ValueError(f"{where}.resample_filter has shape {tuple(resample_filter.shape)}, only 4×4 is supported")
    # NVlabs stores the filter normalised to sum 1 and applies the up² gain at run time; rosinality bakes it in
    return resample_filter * 4


def generator_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``StyleGAN2Generator`` constructor kwargs (size, style_dim, n_mlp, channels / channel_multiplier) inferred from
    a rosinality state_dict's keys and shapes."""
    n_mlp = sum(1 for k in state if re.fullmatch(r"style\.\d+\.weight", k))
    if n_mlp == 0 or "input.input" not in state:
        raise KeyError("not a rosinality StyleGAN2 generator state_dict (no style.* / input.input)")
    style_dim = state["style.1.weight"].shape[1]
    n_rgbs = sum(1 for k in state if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
    size = 4 * 2 ** n_rgbs
    channels = {4: state["input.input"].shape[1]}
    for k in range(n_rgbs):
        channels[8 * 2 ** k] = state[f"to_rgbs.{k}.conv.weight"].shape[2]
    config: dict[str, Any] = {"size": size, "style_dim": style_dim, "n_mlp": n_mlp}
    for cm in (2, 1, 4):
        default = default_channels(cm)
        if all(default.get(r) == c for r, c in channels.items()):
            config["channel_multiplier"] = cm
            break
    else:
        config["channels"] = channels
    return config


def _rosinality_generator(state: dict[str, torch.Tensor], lr_mlp: float = 0.01, conv_clamp: float | None = None
                          ) -> StyleGAN2Generator:
    gen = StyleGAN2Generator(**generator_config(state), lr_mlp=lr_mlp, conv_clamp=conv_clamp)
    gen.load_state_dict(state, strict=True)
    return gen


def _load_torch(path: Path) -> Any:
    try:
        # rosinality's train.py also stores its argparse Namespace: harmless, so allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(f"{path}: refused by the weights-only loader: {exc}") from None


def _pulse_pair(path: Path) -> tuple[Path, Path | None] | None:
    if path.is_dir():
        syn = sorted(path.glob("*synthesis.pt"))
        if not syn:
            return None
        path = syn[0]
    if not path.name.endswith("synthesis.pt"):
        return None
    stem = path.name[: -len("synthesis.pt")]
    for cand in (path.with_name(stem + "mapping.pt"), path.with_name("mapping.pt")):
        if cand.exists():
            return path, cand
    return path, None


def _load_pulse(synthesis: Path, mapping: Path | None) -> torch.nn.Module:
    try:
        from lrface.nets.stylegan1 import StyleGAN1Generator
    except ImportError as exc:
        raise NotImplementedError(f"{synthesis}: PULSE StyleGAN1 weights need lrface.nets.stylegan1 ({exc})") from None
    state = _load_torch(synthesis)
    res = [int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)x\1\.", k))]
    if not res:
        raise KeyError(f"{synthesis}: not a PULSE G_synthesis state_dict (no blocks.RxR.* keys)")
    mapping_state = _load_torch(mapping) if mapping is not None else None
    if hasattr(StyleGAN1Generator, "from_state_dicts"):  # also infers the channel counts of non-official nets
        gen = StyleGAN1Generator.from_state_dicts(mapping_state, state, resolution=max(res))
    else:
        gen = StyleGAN1Generator(resolution=max(res))
        gen.synthesis.load_state_dict(state, strict=True)
        if mapping_state is not None:
            gen.mapping.load_state_dict(mapping_state, strict=True)
    if mapping is None:
        warnings.warn(f"{synthesis}: no mapping.pt beside it; the mapping network keeps random weights "
                      "(PULSE only needs it to compute gaussian_fit.pt)", stacklevel=3)
    return gen


def load_generator(path: str | os.PathLike) -> torch.nn.Module:
    """Builds a generator from a checkpoint, detecting its format.

    - PULSE StyleGAN1: a directory holding ``*synthesis.pt`` (+ ``*mapping.pt``), or the ``synthesis.pt`` path →
      ``lrface.nets.stylegan1.StyleGAN1Generator``.
    - rosinality StyleGAN2 ``.pt``: a dict with ``g_ema`` (loaded ``weights_only=True``; size, channels and depth
      inferred from the keys) → ``StyleGAN2Generator``; ``latent_avg`` is kept as the ``latent_avg`` buffer, and
      our own checkpoints' ``face_template`` (5×2 landmark pixels of the training framing) as ``face_template``.
    - NVlabs stylegan2-ada ``.pkl``: ``G_ema`` read with ``RestrictedUnpickler`` and mapped by
      ``nvlabs_to_rosinality`` → ``StyleGAN2Generator`` with ``latent_avg`` = ``mapping.w_avg`` and the pickle's
      ``conv_clamp``, ``lr_multiplier`` (the layers run in float32 as NVlabs does on CPU).
    - DCGAN: a dict with ``netG_state_dict`` (``gan_face_generate/weights.tar``, the PyTorch DCGAN tutorial's
      layout; loaded ``weights_only=True``, sizes inferred from the shapes) → ``lrface.nets.dcgan.DCGANGenerator``
      with the ArcFace template as ``face_template`` (DigiFace-1M, its training set, is published ArcFace-aligned).
    - a name of :data:`lrface.weights.PACKAGED_GENERATORS` (``"gan-face-generate"``): that file of the installed
      package.

    Returns:
        the generator in eval mode on CPU with ``requires_grad`` off.

    Raises:
        UnsafeCheckpointError: the file needs code outside the allow-lists to load.
    """
    from lrface.weights import resolve_generator_path  # lrface.weights re-exports this module's names

    path = resolve_generator_path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    pair = _pulse_pair(path)
    if pair is not None:
        gen = _load_pulse(*pair)
    elif path.is_dir():
        raise ValueError(f"{path}: a directory without a PULSE *synthesis.pt")
    elif path.suffix.lower() in (".pkl", ".pickle") and not zipfile.is_zipfile(path):
        gen = _load_nvlabs(path)
    else:
        obj = _load_torch(path)
        if isinstance(obj, dict) and "netG_state_dict" in obj:
            return _dcgan_generator(obj["netG_state_dict"], path).eval().requires_grad_(False)
        if not isinstance(obj, dict) or "g_ema" not in obj:
            keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path}: expected a rosinality checkpoint with 'g_ema' or a DCGAN checkpoint with "
                             f"'netG_state_dict', got {keys}")
        gen = _rosinality_generator(obj["g_ema"])
        if isinstance(obj.get("latent_avg"), torch.Tensor):
            gen.latent_avg = obj["latent_avg"].detach().reshape(-1).float()
        template = obj.get("face_template")
        if isinstance(template, torch.Tensor):
            if template.shape != (5, 2):
                raise ValueError(f"{path}: face_template must be 5×2 landmark pixels, got {tuple(template.shape)}")
            gen.face_template = template.detach().float()
    gen.eval().requires_grad_(False)
    return gen


def _load_nvlabs(path: Path) -> StyleGAN2Generator:
    data = load_network_pickle(path)
    g = data.get("G_ema")
    if not isinstance(g, PersistentStub):
        raise TypeError(f"{path}: no G_ema network in the pickle (keys {list(data)[:8]})")
    kwargs = g.state.get("_init_kwargs") or {}
    syn_kwargs = kwargs.get("synthesis_kwargs") or {}
    if syn_kwargs.get("architecture", "skip") != "skip":
        raise ValueError(f"{path}: synthesis architecture {syn_kwargs['architecture']!r}, only 'skip' is supported")
    conv_clamp = syn_kwargs.get("conv_clamp")
    state = stub_state_dict(g)
    lr_mlp = float((kwargs.get("mapping_kwargs") or {}).get("lr_multiplier", 0.01))
    gen = _rosinality_generator(nvlabs_to_rosinality(state), lr_mlp=lr_mlp,
                                conv_clamp=None if conv_clamp is None else float(conv_clamp))
    if "mapping.w_avg" in state:
        gen.latent_avg = state["mapping.w_avg"].detach().float().clone()
    return gen


def _dcgan_generator(state: Any, path: Path) -> torch.nn.Module:
    from lrface.align import arcface_template
    from lrface.nets.dcgan import DCGANGenerator

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: 'netG_state_dict' must map names to tensors, got {type(state).__name__}")
    try:
        config = DCGANGenerator.config_from_state_dict(state)
    except KeyError as exc:
        raise ValueError(f"{path}: 'netG_state_dict' is {exc.args[0]}; keys {list(state)[:6]}") from None
    gen = DCGANGenerator(**config, face_template=arcface_template(config["resolution"]))
    try:
        gen.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: 'netG_state_dict' does not fit DCGANGenerator({config}): {exc}") from None
    return gen
