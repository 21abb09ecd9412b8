"""PULSE's StyleGAN1 generator: state_dict layout, building blocks, noise protocol, save/load."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lrface.nets import stylegan1
from lrface.nets.stylegan1 import BlurLayer, MyConv2d, MyLinear, StyleGAN1Generator, StyleMod, load_pulse, upscale2d


def _expected_synthesis_keys_1024() -> dict[str, tuple[int, ...]]:
    """The 100-key layout of PULSE's synthesis.pt, written out from reference/pulse_stylegan.md §1.2."""
    keys: dict[str, tuple[int, ...]] = {"torgb.weight": (3, 16, 1, 1), "torgb.bias": (3,)}
    b = "blocks.4x4."
    keys.update(
        {
            b + "const": (1, 512, 4, 4),
            b + "bias": (512,),
            b + "epi1.noise.weight": (512,),
            b + "epi1.style_mod.lin.weight": (1024, 512),
            b + "epi1.style_mod.lin.bias": (1024,),
            b + "conv.weight": (512, 512, 3, 3),
            b + "conv.bias": (512,),
            b + "epi2.noise.weight": (512,),
            b + "epi2.style_mod.lin.weight": (1024, 512),
            b + "epi2.style_mod.lin.bias": (1024,),
        }
    )
    table = {
        8: (512, 512),
        16: (512, 512),
        32: (512, 512),
        64: (512, 256),
        128: (256, 128),
        256: (128, 64),
        512: (64, 32),
        1024: (32, 16),
    }
    for r, (cin, cout) in table.items():
        b = f"blocks.{r}x{r}."
        keys.update(
            {
                b + "conv0_up.weight": (cout, cin, 3, 3),
                b + "conv0_up.bias": (cout,),
                b + "conv0_up.intermediate.kernel": (1, 1, 3, 3),
                b + "epi1.noise.weight": (cout,),
                b + "epi1.style_mod.lin.weight": (2 * cout, 512),
                b + "epi1.style_mod.lin.bias": (2 * cout,),
                b + "conv1.weight": (cout, cout, 3, 3),
                b + "conv1.bias": (cout,),
                b + "epi2.noise.weight": (cout,),
                b + "epi2.style_mod.lin.weight": (2 * cout, 512),
                b + "epi2.style_mod.lin.bias": (2 * cout,),
            }
        )
    return keys


def test_state_dict_layout_at_1024_matches_pulse():
    with torch.device("meta"):
        gen = StyleGAN1Generator(1024)
    sd = gen.synthesis.state_dict()
    expected = _expected_synthesis_keys_1024()
    assert list(sd) == list(expected)  # order too: torgb first, then blocks 4x4 … 1024x1024
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert len(sd) == 100
    assert sum(v.numel() for v in sd.values()) == 24_110_843

    msd = gen.mapping.state_dict()
    assert list(msd) == [f"dense{i}.{p}" for i in range(8) for p in ("weight", "bias")]
    assert all(tuple(v.shape) == ((512, 512) if k.endswith("weight") else (512,)) for k, v in msd.items())
    assert sum(v.numel() for v in msd.values()) == 2_101_248

    assert gen.n_latent == 18 and gen.style_dim == 512
    assert gen.noise_shapes() == [
        (1, 1, r, r) for r in (4, 4, 8, 8, 16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 512, 512, 1024, 1024)
    ]
    assert set(gen.state_dict()) == {"mapping." + k for k in msd} | {"synthesis." + k for k in sd}


def test_official_channels_at_64():
    with torch.device("meta"):
        gen = StyleGAN1Generator(64)
    sd = gen.synthesis.state_dict()
    assert gen.n_latent == 10 == 2 * int(math.log2(64)) - 2
    assert tuple(sd["blocks.64x64.conv0_up.weight"].shape) == (256, 512, 3, 3)
    assert tuple(sd["torgb.weight"].shape) == (3, 256, 1, 1)
    assert len(sd) == 2 + 10 + 4 * 11


def _tiny(resolution: int = 64, seed: int = 0) -> StyleGAN1Generator:
    torch.manual_seed(seed)
    gen = StyleGAN1Generator(resolution, fmap_base=128, fmap_max=32)
    with torch.no_grad():
        # noise weights and biases start at 0; make them non-zero so noise and biases matter in the tests
        for name, p in gen.named_parameters():
            if name.endswith(("noise.weight", ".bias")):
                p.normal_(0, 0.5)
    return gen


def _noise(gen: StyleGAN1Generator, batch: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((batch, *s[1:]), generator=g) for s in gen.noise_shapes()]


def test_tiny_forward_deterministic_shape_and_gradients():
    gen = _tiny(64)
    w = torch.randn(2, gen.n_latent, 512, requires_grad=True)
    noise = [n.requires_grad_() for n in _noise(gen, 2)]
    img = gen.synthesis(w, noise)
    assert img.shape == (2, 3, 64, 64)
    assert torch.isfinite(img).all() and img.std() > 1e-3
    assert torch.equal(img, gen.synthesis(w, noise=noise))  # the keyword of the generator protocol
    img.square().mean().backward()
    # every W+ row and every noise map is used
    assert (w.grad.abs().sum(dim=(0, 2)) > 0).all()
    assert all(n.grad is not None and n.grad.abs().sum() > 0 for n in noise)

    # 1×1×r×r maps broadcast over the batch
    shared = [n[:1].detach() for n in noise]
    out = gen.synthesis(w.detach(), shared)
    assert torch.allclose(out[1], gen.synthesis(w.detach()[1:], shared)[0], atol=1e-4, rtol=1e-4)


def test_w_plus_rows_feed_their_blocks():
    gen = _tiny(32)
    noise = _noise(gen, 1)
    w = torch.randn(1, gen.n_latent, 512)
    seen = []
    hook = gen.synthesis.blocks["16x16"].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    base = gen.synthesis(w, noise)
    w2 = w.clone()
    w2[:, 4] = torch.randn(512)  # row 4 is the first style of block 16x16 (block i takes rows 2i, 2i+1)
    mixed = gen.synthesis(w2, noise)
    hook.remove()
    assert torch.equal(seen[0], seen[1])  # the blocks before are untouched
    assert not torch.allclose(base, mixed)

    # the whole-generator forward broadcasts one w to every row
    z = torch.randn(1, 512)
    assert torch.allclose(gen(z, noise), gen.synthesis(gen.mapping(z)[:, None].expand(-1, gen.n_latent, -1), noise))


def test_noise_protocol():
    gen = _tiny(16)
    w = torch.randn(1, gen.n_latent, 512)
    # no noise anywhere: fresh randn on every call
    assert not torch.allclose(gen.synthesis(w), gen.synthesis(w))
    # a layer's .noise attribute is used when nothing is passed; it is not part of the state_dict
    noise = _noise(gen, 1)
    layers = [m for m in gen.synthesis.modules() if isinstance(m, stylegan1.NoiseLayer)]
    assert len(layers) == gen.n_latent
    for layer, n in zip(layers, noise, strict=True):
        layer.noise = n
    assert torch.equal(gen.synthesis(w), gen.synthesis(w, noise))
    assert len(gen.synthesis.state_dict()) == 2 + 10 + 11 * 2
    # explicit noise wins over the attribute; None entries fall back to it
    other = _noise(gen, 1, seed=5)
    assert not torch.allclose(gen.synthesis(w, other), gen.synthesis(w, noise))
    assert torch.equal(gen.synthesis(w, [None] * gen.n_latent), gen.synthesis(w, noise))
    # zero noise = noise weights 0
    zeros = [torch.zeros(s) for s in gen.noise_shapes()]
    img = gen.synthesis(w, zeros)
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
    assert torch.allclose(img, gen.synthesis(w, other), atol=1e-6)

    with pytest.raises(ValueError, match="noise maps"):
        gen.synthesis(w, noise[:-1])
    with pytest.raises(ValueError, match="W\\+"):
        gen.synthesis(w[:, :-1], noise)


def test_save_load_strict_round_trip(tmp_path):
    gen = _tiny(64, seed=3)
    torch.save(gen.mapping.state_dict(), tmp_path / "mapping.pt")
    torch.save(gen.synthesis.state_dict(), tmp_path / "synthesis.pt")
    loaded = load_pulse(tmp_path / "mapping.pt", tmp_path / "synthesis.pt")
    assert (loaded.synthesis.resolution, loaded.n_latent) == (64, 10)
    z = torch.randn(2, 512)
    noise = _noise(gen, 2)
    w = gen.mapping(z)
    assert torch.equal(loaded.mapping(z), w)
    w_plus = w[:, None].expand(-1, gen.n_latent, -1)
    assert torch.equal(loaded.synthesis(w_plus, noise), gen.synthesis(w_plus, noise))

    # synthesis only (PULSE needs mapping.pt only to recompute gaussian_fit.pt)
    assert load_pulse(None, tmp_path / "synthesis.pt").synthesis.resolution == 64

    # strict: a missing or an extra key fails
    sd = gen.synthesis.state_dict()
    sd.pop("blocks.8x8.conv0_up.intermediate.kernel")
    with pytest.raises(RuntimeError, match="intermediate.kernel"):
        StyleGAN1Generator.from_state_dicts(None, sd)
    sd = dict(gen.mapping.state_dict(), extra=torch.zeros(1))
    with pytest.raises(RuntimeError, match="extra"):
        StyleGAN1Generator.from_state_dicts(sd, gen.synthesis.state_dict())


def test_fused_upscale_conv_equals_nearest_upscale_and_flipped_conv():
    torch.manual_seed(0)
    conv = MyConv2d(4, 3, 3, use_wscale=True, intermediate=BlurLayer(), upscale=True)
    with torch.no_grad():
        conv.bias.normal_()
    w = conv.weight * conv.w_mul
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16

    def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        y = F.conv2d(up, weight, padding=1)
        y = F.conv2d(y, kernel.expand(3, 1, 3, 3), padding=1, groups=3)
        return y + conv.bias.view(1, -1, 1, 1)

    x = torch.randn(2, 4, 64, 64)  # → 128×128: fused transposed conv (PULSE blocks 128…1024)
    assert torch.allclose(conv(x), reference(x, w.flip(2, 3)), atol=1e-5)
    assert not torch.allclose(conv(x), reference(x, w), atol=1e-3)
    x = torch.randn(2, 4, 32, 32)  # → 64×64: nearest upscale then conv (blocks 8…64)
    assert torch.allclose(conv(x), reference(x, w), atol=1e-5)


def test_generator_at_128_uses_the_fused_path_once(monkeypatch):
    calls = []
    real = F.conv_transpose2d

    def counting(x, *args, **kwargs):
        calls.append(tuple(x.shape[2:]))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(F, "conv_transpose2d", counting)
    gen = _tiny(128)
    img = gen.synthesis(torch.randn(1, gen.n_latent, 512), _noise(gen, 1))
    assert img.shape == (1, 3, 128, 128) and torch.isfinite(img).all()
    assert calls == [(64, 64)]
    calls.clear()
    _tiny(64).synthesis(torch.randn(1, 10, 512))
    assert calls == []


def test_building_blocks_against_formulas():
    # blur: [1,2,1] ⊗ [1,2,1] / 16, depthwise, zero padding
    blur = BlurLayer()
    assert torch.equal(blur.kernel, torch.tensor([[[[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]]]) / 16)
    x = torch.zeros(1, 2, 5, 5)
    x[0, 1, 0, 0] = 16.0
    y = blur(x)
    assert y[0, 0].abs().sum() == 0
    assert torch.equal(y[0, 1, :2, :2], torch.tensor([[4.0, 2], [2, 1]]))
    assert y[0, 1].sum() == 9.0  # taps falling outside the image are lost

    # equalized lr with lr multiplier: W · sqrt(2)/sqrt(fan_in) · lrmul, bias · lrmul
    lin = MyLinear(512, 7, gain=math.sqrt(2), use_wscale=True, lrmul=0.01)
    with torch.no_grad():
        lin.bias.normal_()
    x = torch.randn(3, 512)
    expected = x @ (lin.weight * math.sqrt(2) / math.sqrt(512) * 0.01).T + lin.bias * 0.01
    assert torch.allclose(lin(x), expected, atol=1e-6)
    conv = MyConv2d(5, 2, 3, gain=1.0, use_wscale=True)
    assert conv.w_mul == pytest.approx(1 / math.sqrt(45))

    # mapping: pixel norm then 8 × lrelu0.2(dense)
    gen = _tiny(16)
    z = torch.randn(4, 512)
    h = z / torch.sqrt(z.square().mean(1, keepdim=True) + 1e-8)
    for i in range(8):
        d = getattr(gen.mapping, f"dense{i}")
        h = F.leaky_relu(h @ (d.weight * d.w_mul).T + d.bias * d.b_mul, 0.2)
    assert gen.mapping(z).shape == (4, 512)
    assert torch.allclose(gen.mapping(z), h, atol=1e-5)

    # AdaIN style modulation: x · (s0 + 1) + s1
    sm = StyleMod(512, 3, use_wscale=True)
    x, lat = torch.randn(2, 3, 4, 4), torch.randn(2, 512)
    s = lat @ (sm.lin.weight * sm.lin.w_mul).T + sm.lin.bias
    assert torch.allclose(sm(x, lat), x * (s[:, :3, None, None] + 1) + s[:, 3:, None, None], atol=1e-5)

    # nearest upscale by repetition
    x = torch.randn(1, 2, 3, 4)
    assert torch.equal(upscale2d(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))


def _reference_synthesis(sd: dict[str, torch.Tensor], w: torch.Tensor, noise: list[torch.Tensor]) -> torch.Tensor:
    """StyleGAN1 synthesis written out as formulas on a PULSE state_dict (independent of the modules)."""

    def conv(x: torch.Tensor, key: str, gain: float = math.sqrt(2), flip: bool = False) -> torch.Tensor:
        weight = sd[key] * gain / math.sqrt(sd[key][0].numel())
        return F.conv2d(x, weight.flip(2, 3) if flip else weight, padding=weight.shape[-1] // 2)

    def epi(x: torch.Tensor, prefix: str, style_in: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(x + sd[prefix + "noise.weight"].view(1, -1, 1, 1) * n, 0.2)
        x = (x - x.mean((2, 3), keepdim=True)) / torch.sqrt(x.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
        s = style_in @ (sd[prefix + "style_mod.lin.weight"] / math.sqrt(style_in.shape[1])).T
        s = s + sd[prefix + "style_mod.lin.bias"]
        c = x.shape[1]
        return x * (s[:, :c, None, None] + 1) + s[:, c:, None, None]

    x = sd["blocks.4x4.const"] + sd["blocks.4x4.bias"].view(1, -1, 1, 1)
    x = epi(x.expand(w.shape[0], -1, -1, -1), "blocks.4x4.epi1.", w[:, 0], noise[0])
    x = conv(x, "blocks.4x4.conv.weight") + sd["blocks.4x4.conv.bias"].view(1, -1, 1, 1)
    x = epi(x, "blocks.4x4.epi2.", w[:, 1], noise[1])
    blur = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    n_blocks = w.shape[1] // 2
    for i in range(1, n_blocks):
        r = 2 ** (i + 2)
        p = f"blocks.{r}x{r}."
        x = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
        x = conv(x, p + "conv0_up.weight", flip=r >= 128)
        x = F.conv2d(x, blur.expand(x.shape[1], 1, 3, 3), padding=1, groups=x.shape[1])
        x = epi(x + sd[p + "conv0_up.bias"].view(1, -1, 1, 1), p + "epi1.", w[:, 2 * i], noise[2 * i])
        x = conv(x, p + "conv1.weight") + sd[p + "conv1.bias"].view(1, -1, 1, 1)
        x = epi(x, p + "epi2.", w[:, 2 * i + 1], noise[2 * i + 1])
    return conv(x, "torgb.weight", gain=1.0) + sd["torgb.bias"].view(1, -1, 1, 1)


@pytest.mark.parametrize("resolution", [64, 128])
def test_synthesis_equals_formulas(resolution):
    gen = _tiny(resolution, seed=7)
    w = torch.randn(2, gen.n_latent, 512)
    noise = _noise(gen, 2)
    with torch.no_grad():
        out = gen.synthesis(w, noise)
        ref = _reference_synthesis(gen.synthesis.state_dict(), w, noise)
    assert out.shape == ref.shape == (2, 3, resolution, resolution)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
