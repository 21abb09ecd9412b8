"""lrface.generators: format detection, the restricted NVlabs unpickler, the NVlabs → rosinality key map."""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch

from lrface.generators import (
    UnsafeCheckpointError,
    generator_config,
    load_generator,
    load_network_pickle,
    nvlabs_to_rosinality,
    stub_state_dict,
)
from lrface.nets.stylegan2 import StyleGAN2Generator

TINY = {4: 16, 8: 16, 16: 12, 32: 8}


def tiny_generator(seed: int = 0) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    g = StyleGAN2Generator(32, style_dim=24, n_mlp=3, channels=TINY)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith(("noise.weight", "bias")):
                p.normal_(0, 0.3)
    return g.eval()


# ---------------------------------------------------------------- fake NVlabs modules (exist only while pickling)
def fake_nvlabs_modules(marker: str) -> dict[str, types.ModuleType]:
    """``torch_utils.persistence`` and ``dnnlib.util`` look-alikes. Like the real ``_reconstruct_persistent_obj``, the
    fake one executes the embedded ``module_src``; in these tests that source writes ``marker``."""
    torch_utils = types.ModuleType("torch_utils")
    persistence = types.ModuleType("torch_utils.persistence")
    dnnlib = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        exec(compile(meta["module_src"], "<embedded>", "exec"), {})  # noqa: S102 - the hazard under test
        return meta["class_name"]

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    torch_utils.persistence = persistence
    dnnlib.util = util
    return {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib, "dnnlib.util": util}


class Persistent:
    """Pickles exactly as an NVlabs ``@persistent_class`` module: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, modules, class_name, params=None, buffers=None, children=None, **attrs):
        self.modules, self.class_name = modules, class_name
        self.state = {"training": False, "_parameters": OrderedDict((k, torch.nn.Parameter(v, requires_grad=False))
                                                                    for k, v in (params or {}).items()),
                      "_buffers": OrderedDict(buffers or {}), "_non_persistent_buffers_set": set(),
                      "_modules": OrderedDict(children or {}), "_forward_hooks": OrderedDict(), **attrs}

    def __reduce__(self):
        meta = {"type": "class", "version": 6, "module_src": self.modules["src"], "class_name": self.class_name,
                "state": self.state}
        return self.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


def rosinality_to_nvlabs_tree(g: StyleGAN2Generator, mods: dict, conv_clamp: float | None = None) -> Persistent:
    """A stylegan2-ada-style ``G_ema`` module tree (§11.3 names and shapes) holding ``g``'s weights."""
    sd = {k: v.detach().clone() for k, v in g.state_dict().items()}
    ed = mods["dnnlib.util"].EasyDict
    filt = sd["convs.0.conv.blur.kernel"] / 4

    def fc(prefix, lr, **kw):
        return Persistent(mods, "FullyConnectedLayer", {"weight": sd[f"{prefix}.weight"], "bias": sd[f"{prefix}.bias"]},
                          weight_gain=np.float64(lr / np.sqrt(sd[f"{prefix}.weight"].shape[1])), bias_gain=lr, **kw)

    def layer(src, noise_j, resolution):
        return Persistent(mods, "SynthesisLayer",
                          {"weight": sd[f"{src}.conv.weight"][0], "bias": sd[f"{src}.activate.bias"],
                           "noise_strength": sd[f"{src}.noise.weight"].reshape(())},
                          {"resample_filter": filt.clone(),
                           "noise_const": sd[f"noises.noise_{noise_j}"].reshape(resolution, resolution)},
                          {"affine": fc(f"{src}.conv.modulation", 1.0)}, resolution=resolution)

    def torgb(src):
        return Persistent(mods, "ToRGBLayer", {"weight": sd[f"{src}.conv.weight"][0],
                                               "bias": sd[f"{src}.bias"].reshape(3)},
                          children={"affine": fc(f"{src}.conv.modulation", 1.0)})

    mapping = Persistent(mods, "MappingNetwork", buffers={"w_avg": torch.randn(24)},
                         children={f"fc{i}": fc(f"style.{i + 1}", 0.01) for i in range(3)})
    blocks = {"b4": Persistent(mods, "SynthesisBlock", {"const": sd["input.input"][0]}, {"resample_filter": filt},
                               {"conv1": layer("conv1", 0, 4), "torgb": torgb("to_rgb1")})}
    for k, r in enumerate((8, 16, 32)):
        blocks[f"b{r}"] = Persistent(mods, "SynthesisBlock", buffers={"resample_filter": filt.clone()},
                                     children={"conv0": layer(f"convs.{2 * k}", 2 * k + 1, r),
                                               "conv1": layer(f"convs.{2 * k + 1}", 2 * k + 2, r),
                                               "torgb": torgb(f"to_rgbs.{k}")})
    synthesis = Persistent(mods, "SynthesisNetwork", children=blocks)
    kwargs = ed(z_dim=24, c_dim=0, w_dim=24, img_resolution=32, img_channels=3,
                mapping_kwargs=ed(num_layers=3), synthesis_kwargs=ed(channel_base=512, channel_max=16, conv_clamp=conv_clamp,
                                                                     architecture="skip"))
    return Persistent(mods, "Generator", children={"mapping": mapping, "synthesis": synthesis},
                      _init_args=(), _init_kwargs=kwargs)


@pytest.fixture()
def nvlabs_pickle(tmp_path, monkeypatch):
    """(path, source generator, marker path) of a hand-built stylegan2-ada-style network pickle."""
    return make_nvlabs_pickle(tmp_path, monkeypatch)


def make_nvlabs_pickle(tmp_path, monkeypatch, conv_clamp=None):
    marker = tmp_path / "embedded_source_ran"
    g = tiny_generator()
    with monkeypatch.context() as m:
        mods = fake_nvlabs_modules(str(marker))
        for name, mod in mods.items():
            m.setitem(sys.modules, name, mod)
        mods["src"] = f"open({str(marker)!r}, 'w').write('pwned')"
        ed = mods["dnnlib.util"].EasyDict
        data = {"G": rosinality_to_nvlabs_tree(g, mods, conv_clamp), "D": None,
                "G_ema": rosinality_to_nvlabs_tree(g, mods, conv_clamp),
                "training_set_kwargs": ed(resolution=32), "augment_pipe": None}
        path = tmp_path / "network-snapshot-000000.pkl"
        path.write_bytes(pickle.dumps(data, protocol=4))
        # the fake is faithful: a plain pickle.load runs the embedded source
        pickle.loads(path.read_bytes())
        assert marker.exists()
        marker.unlink()
    return path, g, marker


def test_nvlabs_pickle_loads_without_running_embedded_code(nvlabs_pickle, monkeypatch):
    path, g, marker = nvlabs_pickle
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    data = load_network_pickle(path)
    state = stub_state_dict(data["G_ema"])
    assert data["G_ema"].class_name == "Generator" and data["training_set_kwargs"]["resolution"] == 32
    assert state["synthesis.b8.conv0.weight"].shape == (16, 16, 3, 3)
    assert state["synthesis.b32.conv1.noise_const"].shape == (32, 32)
    assert state["synthesis.b4.torgb.bias"].shape == (3,) and state["synthesis.b4.conv1.noise_strength"].shape == ()
    # mapping 3 fc + w_avg; b4: const, filter, conv1 (7), torgb (4); b8..b32: filter, conv0 (7), conv1 (7), torgb (4)
    assert len(state) == 3 * 2 + 1 + (2 + 7 + 4) + 3 * (1 + 7 + 7 + 4)
    gen = load_generator(path)
    assert not marker.exists()
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    assert isinstance(gen, StyleGAN2Generator) and gen.channels == TINY and gen.n_latent == 8 and gen.n_mlp == 3
    for k, v in g.state_dict().items():
        assert torch.equal(gen.state_dict()[k], v), k
    assert torch.equal(gen.latent_avg, state["mapping.w_avg"])
    torch.manual_seed(5)
    z = torch.randn(2, 24)
    w_plus = g.mapping(z).unsqueeze(1).repeat(1, g.n_latent, 1)
    with torch.no_grad():
        assert torch.equal(gen.synthesis(w_plus), g.synthesis(w_plus))
    # even when the modules ARE importable the loader never resolves them, so the source still does not run
    mods = fake_nvlabs_modules(str(marker))
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    load_generator(path)
    assert not marker.exists()


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "system_ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil(marker)}))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_generator(path)
    assert not marker.exists()
    # hidden inside an otherwise allowed container (an OrderedDict in a module state)
    path.write_bytes(pickle.dumps(OrderedDict(G_ema=[np.float64(1.0), {"x": Evil(marker)}])))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_network_pickle(path)
    assert not marker.exists()
    # torch's own storage hook (_load_from_bytes) would run a full torch.load on its bytes: those are checked too
    payload = pickle.dumps(Evil(marker), protocol=2)

    class Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (payload,)

    path.write_bytes(pickle.dumps({"G_ema": Storage()}))
    with pytest.raises(UnsafeCheckpointError):
        load_network_pickle(path)
    assert not marker.exists()


def test_malicious_torch_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "system_ran"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": Evil(marker)}, path)
    with pytest.raises(UnsafeCheckpointError):
        load_generator(path)
    assert not marker.exists()


def test_rosinality_checkpoint_strict_load(tmp_path):
    g = tiny_generator(1)
    avg = g.mean_latent(256)[0]
    path = tmp_path / "stylegan2-tiny.pt"
    # train.py-style file: also stores its argparse Namespace
    torch.save({"g_ema": g.state_dict(), "latent_avg": avg, "args": argparse.Namespace(size=32)}, path)
    gen = load_generator(path)
    assert isinstance(gen, StyleGAN2Generator) and gen.size == 32 and gen.style_dim == 24
    assert not gen.training and not any(p.requires_grad for p in gen.parameters())
    assert torch.equal(gen.latent_avg, avg)
    w_plus = torch.randn(1, g.n_latent, 24)
    with torch.no_grad():
        assert torch.equal(gen.synthesis(w_plus), g.synthesis(w_plus))
    bad = dict(g.state_dict())
    bad["convs.0.conv.weight"] = bad["convs.0.conv.weight"][:, :, :5]
    torch.save({"g_ema": bad}, path)
    with pytest.raises(RuntimeError):
        load_generator(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="g_ema"):
        load_generator(path)


def test_config_inference_official_sizes():
    for size, cm in ((1024, 2), (256, 1), (256, 2)):
        with torch.device("meta"):
            sd = StyleGAN2Generator(size, channel_multiplier=cm).state_dict()
        assert generator_config(sd) == {"size": size, "style_dim": 512, "n_mlp": 8, "channel_multiplier": cm}


def test_nvlabs_key_map_rejects_unknown_keys():
    g = tiny_generator()
    mods = fake_nvlabs_modules("/nonexistent")
    mods["src"] = ""
    tree = rosinality_to_nvlabs_tree(g, mods)

    def to_stub(p):
        from lrface.generators import PersistentStub
        st = dict(p.state)
        st["_modules"] = OrderedDict((k, to_stub(v)) for k, v in st["_modules"].items())
        return PersistentStub(p.class_name, st)

    state = stub_state_dict(to_stub(tree))
    assert set(nvlabs_to_rosinality(state)) == set(g.state_dict())
    state["synthesis.b8.skip.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="skip"):
        nvlabs_to_rosinality(state)


def test_pulse_pair_detection(tmp_path, monkeypatch):
    syn = {"blocks.4x4.const": torch.randn(1, 4, 4, 4), "blocks.8x8.conv1.weight": torch.randn(4, 4, 3, 3)}
    mapping = {"dense0.weight": torch.randn(4, 4)}
    torch.save(syn, tmp_path / "6b943ee69b8491ac40e8e9ced6175659_synthesis.pt")
    torch.save(mapping, tmp_path / "6b943ee69b8491ac40e8e9ced6175659_mapping.pt")
    monkeypatch.setitem(sys.modules, "lrface.nets.stylegan1", None)  # as if the module did not exist
    with pytest.raises(NotImplementedError, match="stylegan1"):
        load_generator(tmp_path)

    built = {}

    class FakeStyleGAN1(torch.nn.Module):
        def __init__(self, resolution=1024):
            super().__init__()
            built["resolution"] = resolution
            self.synthesis = torch.nn.ParameterDict({"x": torch.nn.Parameter(torch.zeros(1))})
            self.mapping = torch.nn.ParameterDict({"x": torch.nn.Parameter(torch.zeros(1))})
            self.synthesis.load_state_dict = lambda sd, strict: built.update(syn=sd, syn_strict=strict)
            self.mapping.load_state_dict = lambda sd, strict: built.update(map=sd, map_strict=strict)

    fake = types.ModuleType("lrface.nets.stylegan1")
    fake.StyleGAN1Generator = FakeStyleGAN1
    monkeypatch.setitem(sys.modules, "lrface.nets.stylegan1", fake)
    for target in (tmp_path, tmp_path / "6b943ee69b8491ac40e8e9ced6175659_synthesis.pt"):
        built.clear()
        gen = load_generator(target)
        assert isinstance(gen, FakeStyleGAN1) and built["resolution"] == 8
        assert built["syn_strict"] and built["map_strict"]
        assert torch.equal(built["syn"]["blocks.4x4.const"], syn["blocks.4x4.const"])
        assert torch.equal(built["map"]["dense0.weight"], mapping["dense0.weight"])


# ---------------------------------------------------------------- stylegan2-ada conventions, written independently
def ada_upfirdn(x, f, up, pads, gain):
    """NVlabs ``upfirdn2d`` for a separable 1-D filter f (sum 1): zero-insert, pad, convolve, × gain."""
    from lrface.nets.stylegan2 import upfirdn2d

    return upfirdn2d(x, torch.outer(f, f) * gain, up=up, pad=pads)


def ada_layer(state, p, x, w, up, clamp=None):
    weight, styles = state[f"{p}.weight"], torch.nn.functional.linear(w, state[f"{p}.affine.weight"] / np.sqrt(
        w.shape[1]), state[f"{p}.affine.bias"])
    b = x.shape[0]
    ww = weight[None] * styles[:, None, :, None, None]
    dcoefs = (ww.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    x = x * styles[:, :, None, None]
    kw = weight.shape[-1]
    f = state[f"{p}.resample_filter"].sum(0)  # 1-D taps of the separable, sum-1 filter
    pad = kw // 2
    if up:
        # conv2d_resample: padding grows by the filter, shrinks by the transposed conv's own extent
        px0, px1 = pad + (len(f) + up - 1) // 2 - (kw - 1), pad + (len(f) - up) // 2 - (kw - up)
        y = torch.stack([torch.nn.functional.conv_transpose2d(x[i:i + 1], weight.transpose(0, 1), stride=2)[0]
                         for i in range(b)])
        y = ada_upfirdn(y, f, 1, (px0, px1), up ** 2)
    else:
        y = torch.stack([torch.nn.functional.conv2d(x[i:i + 1], weight, padding=pad)[0] for i in range(b)])
    y = y * dcoefs[:, :, None, None]
    y = y + state[f"{p}.noise_const"] * state[f"{p}.noise_strength"]
    y = torch.nn.functional.leaky_relu(y + state[f"{p}.bias"][None, :, None, None], 0.2) * np.sqrt(2)
    return y if clamp is None else y.clamp(-clamp, clamp)


def ada_torgb(state, p, x, w, clamp=None):
    weight = state[f"{p}.weight"]
    styles = torch.nn.functional.linear(w, state[f"{p}.affine.weight"] / np.sqrt(w.shape[1]),
                                        state[f"{p}.affine.bias"]) / np.sqrt(weight.shape[1] * weight.shape[2] ** 2)
    y = torch.nn.functional.conv2d(x * styles[:, :, None, None], weight) + state[f"{p}.bias"][None, :, None, None]
    return y if clamp is None else y.clamp(-clamp, clamp)


def ada_generator(state, z, clamp=None):
    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    i = 0
    while f"mapping.fc{i}.weight" in state:
        wt, bs = state[f"mapping.fc{i}.weight"], state[f"mapping.fc{i}.bias"]
        x = torch.nn.functional.leaky_relu(x @ (wt * 0.01 / np.sqrt(wt.shape[1])).t() + bs * 0.01, 0.2) * np.sqrt(2)
        i += 1
    ws = x
    h = state["synthesis.b4.const"][None].repeat(z.shape[0], 1, 1, 1)
    h = ada_layer(state, "synthesis.b4.conv1", h, ws, 0, clamp)
    img = ada_torgb(state, "synthesis.b4.torgb", h, ws, clamp)
    r = 8
    while f"synthesis.b{r}.conv0.weight" in state:
        h = ada_layer(state, f"synthesis.b{r}.conv0", h, ws, 2, clamp)
        h = ada_layer(state, f"synthesis.b{r}.conv1", h, ws, 0, clamp)
        f = state[f"synthesis.b{r}.resample_filter"].sum(0)
        img = ada_upfirdn(img, f, 2, ((len(f) + 1) // 2, (len(f) - 2) // 2), 4) + ada_torgb(
            state, f"synthesis.b{r}.torgb", h, ws, clamp)
        r *= 2
    return img


@pytest.mark.parametrize("conv_clamp", [None, 0.5])
def test_nvlabs_mapping_matches_an_ada_style_forward(tmp_path, monkeypatch, conv_clamp):
    """The converted generator renders what stylegan2-ada's own conventions give for the same NVlabs tensors
    (with a ``conv_clamp`` small enough to be active in the second case)."""
    path, _, _ = make_nvlabs_pickle(tmp_path, monkeypatch, conv_clamp)
    state = stub_state_dict(load_network_pickle(path)["G_ema"])
    gen = load_generator(path)
    assert gen.conv_clamp == conv_clamp
    torch.manual_seed(7)
    z = torch.randn(2, 24)
    with torch.no_grad():
        ref = ada_generator(state, z, conv_clamp)
        got = gen.synthesis(gen.mapping(z))
        unclamped = ada_generator(state, z)
    assert ref.shape == got.shape == (2, 3, 32, 32)
    assert ref.abs().mean() > 0.05
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    if conv_clamp is not None:
        assert (ref - unclamped).abs().max() > 0.1  # the clamp really changed the image


def test_pulse_pair_with_the_real_stylegan1(tmp_path):
    stylegan1 = pytest.importorskip("lrface.nets.stylegan1")
    if not hasattr(stylegan1.StyleGAN1Generator, "from_state_dicts"):
        pytest.skip("lrface.nets.stylegan1 has no from_state_dicts yet")
    torch.manual_seed(0)
    g = stylegan1.StyleGAN1Generator(resolution=32, fmap_base=64, fmap_max=16).eval()
    torch.save(g.synthesis.state_dict(), tmp_path / "synthesis.pt")
    torch.save(g.mapping.state_dict(), tmp_path / "mapping.pt")
    gen = load_generator(tmp_path / "synthesis.pt")
    assert type(gen) is stylegan1.StyleGAN1Generator and not gen.training
    z = torch.randn(2, 512)
    noise = [torch.randn(1, *s[1:]) for s in g.noise_shapes()]
    with torch.no_grad():
        w = g.mapping(z)
        assert torch.equal(gen.mapping(z), w)
        w_plus = w[:, None].expand(-1, g.n_latent, -1)
        assert torch.equal(gen.synthesis(w_plus, noise), g.synthesis(w_plus, noise))
    (tmp_path / "mapping.pt").unlink()
    with pytest.warns(UserWarning, match="mapping"):
        load_generator(tmp_path)
