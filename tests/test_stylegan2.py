"""StyleGAN2Generator: rosinality key layout, pure-torch upfirdn2d, synthesis protocol."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrface.nets.stylegan2 import StyleGAN2Generator, make_kernel, upfirdn2d

TINY = {4: 16, 8: 16, 16: 12, 32: 8, 64: 8}


def reference_keys(size: int, cm: int = 2) -> list[tuple[str, tuple[int, ...]]]:
    """rosinality Generator's state_dict (names, shapes, order) written out from pulse_stylegan.md §10."""
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
    log_size = int(math.log2(size))
    keys: list[tuple[str, tuple[int, ...]]] = []
    for i in range(1, 9):
        keys += [(f"style.{i}.weight", (512, 512)), (f"style.{i}.bias", (512,))]
    keys.append(("input.input", (1, 512, 4, 4)))

    def styled(prefix, cin, cout, up):
        out = [(f"{prefix}.conv.weight", (1, cout, cin, 3, 3))]
        if up:
            out.append((f"{prefix}.conv.blur.kernel", (4, 4)))
        return out + [(f"{prefix}.conv.modulation.weight", (cin, 512)), (f"{prefix}.conv.modulation.bias", (cin,)),
                      (f"{prefix}.noise.weight", (1,)), (f"{prefix}.activate.bias", (cout,))]

    def rgb(prefix, c, up):
        out = [(f"{prefix}.bias", (1, 3, 1, 1))]
        if up:
            out.append((f"{prefix}.upsample.kernel", (4, 4)))
        return out + [(f"{prefix}.conv.weight", (1, 3, c, 1, 1)), (f"{prefix}.conv.modulation.weight", (c, 512)),
                      (f"{prefix}.conv.modulation.bias", (c,))]

    keys += styled("conv1", 512, 512, False) + rgb("to_rgb1", 512, False)
    cin = 512
    for k, i in enumerate(range(3, log_size + 1)):
        cout = ch[2 ** i]
        keys += styled(f"convs.{2 * k}", cin, cout, True) + styled(f"convs.{2 * k + 1}", cout, cout, False)
        cin = cout
    for k, i in enumerate(range(3, log_size + 1)):
        keys += rgb(f"to_rgbs.{k}", ch[2 ** i], True)
    for j in range((log_size - 2) * 2 + 1):
        r = 2 ** ((j + 5) // 2)
        keys.append((f"noises.noise_{j}", (1, 1, r, r)))
    return keys


@pytest.mark.parametrize("size,n_keys,n_numbers", [(1024, 171, 33_166_492), (256, 135, None)])
def test_state_dict_matches_rosinality(size, n_keys, n_numbers):
    with torch.device("meta"):
        g = StyleGAN2Generator(size)
    got = [(k, tuple(v.shape)) for k, v in g.state_dict().items()]
    assert got == reference_keys(size)
    assert len(got) == n_keys
    if n_numbers is not None:
        assert sum(math.prod(s) for _, s in got) == n_numbers
    assert g.n_latent == int(math.log2(size)) * 2 - 2 and g.style_dim == 512
    assert len(g.noise_shapes()) == (int(math.log2(size)) - 2) * 2 + 1
    assert g.noise_shapes()[:4] == [(1, 1, 4, 4), (1, 1, 8, 8), (1, 1, 8, 8), (1, 1, 16, 16)]


def naive_upfirdn_1axis(x: np.ndarray, f: np.ndarray, up: int, pad0: int, pad1: int) -> np.ndarray:
    """Zero-insertion upsampling, full linear convolution with f, then the window that padding selects (last axis)."""
    n = x.shape[-1]
    u = np.zeros(x.shape[:-1] + (n * up,))
    u[..., ::up] = x
    k = len(f)
    full = np.zeros(x.shape[:-1] + (n * up + k - 1,))
    for t in range(full.shape[-1]):
        for m in range(n * up):
            if 0 <= t - m < k:
                full[..., t] += u[..., m] * f[t - m]
    n_out = n * up + pad0 + pad1 - k + 1
    out = np.zeros(x.shape[:-1] + (n_out,))
    for o in range(n_out):
        t = o + k - 1 - pad0
        if 0 <= t < full.shape[-1]:
            out[..., o] = full[..., t]
    return out


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 5, 0.5)])
def test_upfirdn2d_upsample_matches_naive_loop(taps):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    f1 = np.asarray(taps, dtype=np.float64)
    f1 = f1 / f1.sum() * 2  # separable: outer product of two of these gives the ×4 (up²) gain rosinality bakes in
    kernel = torch.from_numpy(np.outer(f1, f1))
    got = upfirdn2d(x, kernel, up=2, pad=(2, 1)).numpy()
    ref = naive_upfirdn_1axis(x.numpy(), f1, 2, 2, 1)  # along W
    ref = naive_upfirdn_1axis(ref.swapaxes(-1, -2), f1, 2, 2, 1).swapaxes(-1, -2)  # along H
    assert got.shape == (2, 3, 10, 12)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    if taps == (1, 3, 3, 1):
        # a constant image stays constant away from the borders (gain 4 exactly compensates the zero insertion)
        ones = upfirdn2d(torch.ones(1, 1, 6, 6, dtype=torch.float64), make_kernel(taps).double() * 4, up=2, pad=(2, 1))
        assert torch.allclose(ones[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8, dtype=torch.float64))


def test_upfirdn2d_blur_down_and_crop():
    x = torch.arange(36, dtype=torch.float64).reshape(1, 1, 6, 6)
    k = torch.zeros(3, 3, dtype=torch.float64)
    k[0, 0] = 1.0  # true convolution with pad 1: y[n] = Σ_t x[n + 1 - t]·k[t], so an impulse at t=0 gives x[n + 1]
    y = upfirdn2d(x, k, pad=(1, 1))
    assert torch.equal(y[0, 0, :-1, :-1], x[0, 0, 1:, 1:]) and y[0, 0, -1].abs().sum() == 0
    k = torch.zeros(3, 3, dtype=torch.float64)
    k[2, 2] = 1.0  # ... and at t=2 gives x[n - 1] (a correlation would shift the other way)
    y = upfirdn2d(x, k, pad=(1, 1))
    assert torch.equal(y[0, 0, 1:, 1:], x[0, 0, :-1, :-1]) and y[0, 0, 0].abs().sum() == 0
    y = upfirdn2d(x, torch.ones(1, 1, dtype=torch.float64), down=2, pad=(-1, 0))
    assert torch.equal(y[0, 0], x[0, 0, 1::2, 1::2])


def tiny_generator(seed: int = 0) -> StyleGAN2Generator:
    torch.manual_seed(seed)
    g = StyleGAN2Generator(64, style_dim=32, n_mlp=2, channels=TINY)
    # non-zero noise strengths and biases, so noise and bias paths matter in the checks below
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith(("noise.weight", "bias")):
                p.normal_(0, 0.3)
    return g


def test_small_forward_determinism_and_gradients():
    g = tiny_generator()
    assert g.n_latent == 10 and len(g.noise_shapes()) == 9
    torch.manual_seed(1)
    w = g.mapping(torch.randn(2, 32))
    assert w.shape == (2, 32)
    w_plus = w.unsqueeze(1).repeat(1, g.n_latent, 1).detach().requires_grad_(True)
    noise = [torch.randn(2, *s[1:], requires_grad=True) for s in g.noise_shapes()]
    img = g.synthesis(w_plus, noise=noise)
    assert img.shape == (2, 3, 64, 64)
    assert torch.isfinite(img).all() and 0.05 < img.std().item() < 20
    assert torch.equal(img, g.synthesis(w_plus, noise=noise))
    other = [n.detach().clone() for n in noise]
    other[4] = torch.randn_like(other[4])
    assert not torch.allclose(img, g.synthesis(w_plus, noise=other))
    # None uses the stored noise buffers
    stored = [getattr(g.noises, f"noise_{i}") for i in range(g.num_layers)]
    assert torch.equal(g.synthesis(w_plus), g.synthesis(w_plus, noise=stored))
    img.square().mean().backward()
    assert w_plus.grad is not None and w_plus.grad.abs().sum() > 0
    assert w_plus.grad[:, -1].abs().sum() > 0  # the last ToRGB uses the last latent
    for n in noise:
        assert n.grad is not None and n.grad.abs().sum() > 0


def test_modulation_and_demodulation():
    g = tiny_generator()
    conv = g.convs[1].conv  # 3×3, no upsampling, demodulated
    style = torch.randn(3, 32)
    s = conv.modulation(style)
    w = conv.scale * conv.weight[0] * s[:, None, :, None, None]  # B×O×I×3×3
    w = w / torch.sqrt(w.square().sum((2, 3, 4), keepdim=True) + 1e-8)
    x = torch.randn(3, conv.in_channel, 8, 8)
    ref = torch.stack([torch.nn.functional.conv2d(x[i:i + 1], w[i], padding=1)[0] for i in range(3)])
    assert torch.allclose(conv(x, style), ref, atol=1e-5)


def test_strict_save_load_round_trip(tmp_path):
    g = tiny_generator(0)
    path = tmp_path / "g.pt"
    torch.save(g.state_dict(), path)
    h = StyleGAN2Generator(64, style_dim=32, n_mlp=2, channels=TINY)
    h.load_state_dict(torch.load(path, weights_only=True), strict=True)
    w_plus = torch.randn(1, g.n_latent, 32)
    assert torch.equal(g.synthesis(w_plus), h.synthesis(w_plus))
    with pytest.raises(RuntimeError):
        StyleGAN2Generator(64, style_dim=32, n_mlp=3, channels=TINY).load_state_dict(g.state_dict(), strict=True)


def test_mean_latent_and_truncation():
    g = tiny_generator()
    torch.manual_seed(3)
    m = g.mean_latent(4096)
    assert m.shape == (1, 32)
    torch.manual_seed(3)
    assert torch.allclose(m, g.mapping(torch.randn(4096, 32)).mean(0, keepdim=True))
    g.latent_avg = m[0]
    z = torch.randn(1, 32)
    assert torch.allclose(g(z, truncation=0.0), g.synthesis(m), atol=1e-6)


@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
def test_unfused_modconv_equals_the_grouped_kernel_form(upsample: bool, demodulate: bool) -> None:
    from lrface.nets.stylegan2 import ModulatedConv2d

    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, 8, demodulate=demodulate, upsample=upsample)
    x = torch.randn(3, 6, 8, 8, requires_grad=True)
    style = torch.randn(3, 8)
    conv.fused = True
    fused = conv(x, style)
    (gx_fused,) = torch.autograd.grad(fused.square().sum(), x)
    conv.fused = False
    unfused = conv(x, style)
    (gx_unfused,) = torch.autograd.grad(unfused.square().sum(), x)
    assert unfused.shape == fused.shape == (3, 5, 16 if upsample else 8, 16 if upsample else 8)
    torch.testing.assert_close(unfused, fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_unfused, gx_fused, rtol=1e-4, atol=1e-5)
