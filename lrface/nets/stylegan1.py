"""StyleGAN1 generator (Karras et al., "A Style-Based Generator Architecture for Generative Adversarial Networks",
CVPR 2019) laid out exactly like PULSE's ``stylegan.py`` (Menon et al., CVPR 2020), itself the lernapparat PyTorch port
of NVIDIA's TensorFlow StyleGAN.

Module names, parameter and buffer shapes equal PULSE's, so its ``mapping.pt`` (16 keys) and ``synthesis.pt``
(100 keys at 1024, blur kernels included) load with ``strict=True`` and give the same images.

- :class:`G_mapping`: z (B×512) → w (B×512). Pixel norm, then 8 equalized-lr dense layers (lr multiplier 0.01) each
  followed by LeakyReLU(0.2). As in PULSE (not lernapparat) it returns B×512, not a broadcast B×18×512.
- :class:`G_synthesis`: W+ (B×n_latent×512) and a list of ``n_latent`` noise maps → raw RGB B×3×R×R, roughly in
  [-1, 1] and **not clamped** (PULSE maps it to [0, 1] with ``(x + 1) / 2`` in its loop and clamps only for saving).
- :class:`StyleGAN1Generator`: both, plus the generator protocol of the project (``n_latent``, ``style_dim``,
  ``mapping``, ``synthesis``, ``noise_shapes``).

Noise semantics (lernapparat / PULSE): a noise map passed explicitly is used as is (B×1×r×r or 1×1×r×r, shared over
channels). Where none is passed (``noise=None`` or a ``None`` entry), the layer uses its ``.noise`` attribute if one was
set (a plain attribute, not a buffer, so never in the state_dict), otherwise it draws fresh ``randn`` on every call.

``fmap_base`` / ``fmap_max`` exist only to build tiny networks for tests; their defaults give the official shapes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BlurLayer",
    "GSynthesisBlock",
    "G_mapping",
    "G_synthesis",
    "InputBlock",
    "LayerEpilogue",
    "MyConv2d",
    "MyLinear",
    "NoiseLayer",
    "PixelNormLayer",
    "StyleGAN1Generator",
    "StyleMod",
    "Upscale2d",
    "load_pulse",
    "upscale2d",
]

#: Resolution of the input of ``conv0_up`` times 2 from which the fused transposed-conv upscale is used (as TF/PULSE).
FUSED_MIN_RESOLUTION = 128


class MyLinear(nn.Module):
    """Dense layer with equalized learning rate.

    With ``use_wscale`` the weight is stored ~N(0, 1/lrmul²) and scaled at run time by
    ``w_mul = gain · fan_in^-0.5 · lrmul``; the bias is stored unscaled and multiplied by ``b_mul = lrmul``.

    Args:
        input_size: fan-in.
        output_size: number of outputs.
        gain: He gain (sqrt(2) before lrelu, 1 before linear outputs).
        use_wscale: equalized learning rate.
        lrmul: learning-rate multiplier (0.01 in the mapping network).
        bias: with bias.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        gain: float = 2**0.5,
        use_wscale: bool = False,
        lrmul: float = 1.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        he_std = gain * input_size**-0.5
        if use_wscale:
            init_std = 1.0 / lrmul
            self.w_mul = he_std * lrmul
        else:
            init_std = he_std / lrmul
            self.w_mul = lrmul
        self.weight = nn.Parameter(torch.randn(output_size, input_size) * init_std)
        if bias:
            self.bias = nn.Parameter(torch.zeros(output_size))
            self.b_mul = lrmul
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×in → B×out."""
        bias = self.bias * self.b_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.w_mul, bias)


def upscale2d(x: torch.Tensor, factor: int = 2, gain: float = 1.0) -> torch.Tensor:
    """Nearest-neighbour upsampling by repetition: B×C×H×W → B×C×(factor·H)×(factor·W)."""
    if gain != 1:
        x = x * gain
    if factor != 1:
        b, c, h, w = x.shape
        x = x.view(b, c, h, 1, w, 1).expand(-1, -1, -1, factor, -1, factor).reshape(b, c, h * factor, w * factor)
    return x


class Upscale2d(nn.Module):
    """Module form of :func:`upscale2d` (no parameters)."""

    def __init__(self, factor: int = 2, gain: float = 1.0) -> None:
        super().__init__()
        self.factor = factor
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W → B×C×(f·H)×(f·W)."""
        return upscale2d(x, self.factor, self.gain)


class BlurLayer(nn.Module):
    """Depthwise 3×3 blur with kernel [1,2,1] ⊗ [1,2,1] / 16 (registered buffer ``kernel`` (1,1,3,3), in the
    state_dict), zero padding 1, stride 1."""

    def __init__(self, kernel: Sequence[float] = (1, 2, 1), normalize: bool = True, stride: int = 1) -> None:
        super().__init__()
        k = torch.tensor(list(kernel), dtype=torch.float32)
        k = k[:, None] * k[None, :]
        if normalize:
            k = k / k.sum()
        self.register_buffer("kernel", k[None, None])
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×C×H×W → B×C×H×W (stride 1)."""
        kernel = self.kernel.to(x.dtype).expand(x.size(1), -1, -1, -1)
        return F.conv2d(x, kernel, stride=self.stride, padding=(self.kernel.size(2) - 1) // 2, groups=x.size(1))


class MyConv2d(nn.Module):
    """Conv layer with equalized learning rate, optional 2× upscale and optional intermediate (blur) module.

    Upscale: when the upscaled map is at least 128×128 the upscale and the conv are **fused** into one
    ``conv_transpose2d`` (stride 2) with a 4×4 kernel made from the 3×3 one (TF StyleGAN's ``upscale2d_conv2d``);
    below that, nearest 2× upscale then the 3×3 conv. PyTorch's ``conv_transpose2d`` is the adjoint of correlation, so
    the fused path equals nearest upscale + conv with the *spatially flipped* kernel (PULSE's weights are stored in that
    convention). The intermediate module runs after the conv and the bias is added after it.

    Args:
        input_channels: Cin.
        output_channels: Cout.
        kernel_size: k (odd; padding k//2).
        gain: He gain.
        use_wscale: equalized learning rate.
        lrmul: learning-rate multiplier.
        bias: with bias.
        intermediate: module applied between conv and bias (the blur in ``conv0_up``), or None.
        upscale: upscale 2× before/with the conv.
    """

    def __init__(
        self,
        input_channels: int,
        output_channels: int,
        kernel_size: int,
        gain: float = 2**0.5,
        use_wscale: bool = False,
        lrmul: float = 1.0,
        bias: bool = True,
        intermediate: nn.Module | None = None,
        upscale: bool = False,
    ) -> None:
        super().__init__()
        self.upscale = Upscale2d() if upscale else None
        he_std = gain * (input_channels * kernel_size**2) ** -0.5
        self.kernel_size = kernel_size
        if use_wscale:
            init_std = 1.0 / lrmul
            self.w_mul = he_std * lrmul
        else:
            init_std = he_std / lrmul
            self.w_mul = lrmul
        self.weight = nn.Parameter(torch.randn(output_channels, input_channels, kernel_size, kernel_size) * init_std)
        if bias:
            self.bias = nn.Parameter(torch.zeros(output_channels))
            self.b_mul = lrmul
        else:
            self.bias = None
        self.intermediate = intermediate

    def fused_kernel(self) -> torch.Tensor:
        """The 4×4 ``conv_transpose2d`` kernel (Cin, Cout, 4, 4) of the fused upscale path: the scaled 3×3 kernel
        zero-padded to 5×5 and its four shifted 4×4 windows summed."""
        w = (self.weight * self.w_mul).permute(1, 0, 2, 3)
        w = F.pad(w, (1, 1, 1, 1))
        return w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×Cin×H×W → B×Cout×H'×W' (H' = 2H with upscale)."""
        bias = self.bias * self.b_mul if self.bias is not None else None
        if self.upscale is not None and min(x.shape[2:]) * 2 >= FUSED_MIN_RESOLUTION:
            w = self.fused_kernel()
            x = F.conv_transpose2d(x, w, stride=2, padding=(w.size(-1) - 1) // 2)
        else:
            if self.upscale is not None:
                x = self.upscale(x)
            if self.intermediate is None:
                return F.conv2d(x, self.weight * self.w_mul, bias, padding=self.kernel_size // 2)
            x = F.conv2d(x, self.weight * self.w_mul, None, padding=self.kernel_size // 2)
        if self.intermediate is not None:
            x = self.intermediate(x)
        if bias is not None:
            x = x + bias.view(1, -1, 1, 1)
        return x


class NoiseLayer(nn.Module):
    """Per-channel scaled noise: ``x + weight.view(1,C,1,1) · noise``, noise B×1×H×W shared over channels.

    ``weight`` (C,) starts at 0. Without an explicit noise the ``.noise`` attribute (plain attribute, not a buffer)
    is used if set, else fresh ``randn`` per call.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))
        self.noise: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """B×C×H×W (+ noise B×1×H×W or 1×1×H×W) → B×C×H×W."""
        if noise is None:
            noise = self.noise
        if noise is None:
            noise = torch.randn(x.size(0), 1, x.size(2), x.size(3), device=x.device, dtype=x.dtype)
        return x + self.weight.view(1, -1, 1, 1) * noise


class StyleMod(nn.Module):
    """AdaIN style modulation: ``x · (s₀ + 1) + s₁`` with ``(s₀, s₁) = lin(w)`` reshaped to B×2×C×1×1."""

    def __init__(self, latent_size: int, channels: int, use_wscale: bool) -> None:
        super().__init__()
        self.lin = MyLinear(latent_size, channels * 2, gain=1.0, use_wscale=use_wscale)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """x B×C×H×W, latent B×512 → B×C×H×W."""
        style = self.lin(latent).view(-1, 2, x.size(1), 1, 1)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class PixelNormLayer(nn.Module):
    """``x / sqrt(mean(x², dim=1) + eps)``."""

    def __init__(self, epsilon: float = 1e-8) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×C(×…) → same shape."""
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + self.epsilon)


class LayerEpilogue(nn.Module):
    """What follows every synthesis conv: noise → LeakyReLU(0.2) → instance norm → style modulation.

    Module names (``noise``, ``top_epi``, ``style_mod``) as PULSE; only ``noise.weight`` and ``style_mod.lin.*`` hold
    parameters. ``nn.InstanceNorm2d`` uses eps 1e-5 as PULSE (TF used 1e-8).
    """

    def __init__(
        self,
        channels: int,
        dlatent_size: int,
        use_wscale: bool = True,
        use_noise: bool = True,
        use_pixel_norm: bool = False,
        use_instance_norm: bool = True,
        use_styles: bool = True,
        activation_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.noise = NoiseLayer(channels) if use_noise else None
        layers: list[tuple[str, nn.Module]] = [("activation", activation_layer or nn.LeakyReLU(0.2))]
        if use_pixel_norm:
            layers.append(("pixel_norm", PixelNormLayer()))
        if use_instance_norm:
            layers.append(("instance_norm", nn.InstanceNorm2d(channels)))
        self.top_epi = nn.Sequential(OrderedDict(layers))
        self.style_mod = StyleMod(dlatent_size, channels, use_wscale=use_wscale) if use_styles else None

    def forward(
        self, x: torch.Tensor, dlatents_in_slice: torch.Tensor | None = None, noise_in_slice: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x B×C×H×W, dlatent B×512, noise B×1×H×W or None → B×C×H×W."""
        if self.noise is not None:
            x = self.noise(x, noise=noise_in_slice)
        x = self.top_epi(x)
        if self.style_mod is not None:
            x = self.style_mod(x, dlatents_in_slice)
        return x


class InputBlock(nn.Module):
    """4×4 block: learned constant (1,C,4,4) + bias → ``epi1`` → 3×3 ``conv`` → ``epi2``."""

    def __init__(
        self,
        nf: int,
        dlatent_size: int,
        gain: float,
        use_wscale: bool,
        use_noise: bool,
        use_pixel_norm: bool,
        use_instance_norm: bool,
        use_styles: bool,
    ) -> None:
        super().__init__()
        self.nf = nf
        self.const = nn.Parameter(torch.ones(1, nf, 4, 4))
        self.bias = nn.Parameter(torch.ones(nf))
        epi = {
            "use_wscale": use_wscale,
            "use_noise": use_noise,
            "use_pixel_norm": use_pixel_norm,
            "use_instance_norm": use_instance_norm,
            "use_styles": use_styles,
        }
        self.epi1 = LayerEpilogue(nf, dlatent_size, **epi)
        self.conv = MyConv2d(nf, nf, 3, gain=gain, use_wscale=use_wscale)
        self.epi2 = LayerEpilogue(nf, dlatent_size, **epi)

    def forward(self, dlatents_in_range: torch.Tensor, noise_in_range: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """dlatents B×2×512, two noise maps → B×C×4×4."""
        x = self.const.expand(dlatents_in_range.size(0), -1, -1, -1)
        x = x + self.bias.view(1, -1, 1, 1)
        x = self.epi1(x, dlatents_in_range[:, 0], noise_in_range[0])
        x = self.conv(x)
        return self.epi2(x, dlatents_in_range[:, 1], noise_in_range[1])


class GSynthesisBlock(nn.Module):
    """R×R block (R ≥ 8): ``conv0_up`` (2× upscale, 3×3 conv, blur, bias) → ``epi1`` → 3×3 ``conv1`` → ``epi2``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        blur_filter: Sequence[float] | None,
        dlatent_size: int,
        gain: float,
        use_wscale: bool,
        use_noise: bool,
        use_pixel_norm: bool,
        use_instance_norm: bool,
        use_styles: bool,
    ) -> None:
        super().__init__()
        blur = BlurLayer(blur_filter) if blur_filter else None
        self.conv0_up = MyConv2d(
            in_channels, out_channels, 3, gain=gain, use_wscale=use_wscale, intermediate=blur, upscale=True
        )
        epi = {
            "use_wscale": use_wscale,
            "use_noise": use_noise,
            "use_pixel_norm": use_pixel_norm,
            "use_instance_norm": use_instance_norm,
            "use_styles": use_styles,
        }
        self.epi1 = LayerEpilogue(out_channels, dlatent_size, **epi)
        self.conv1 = MyConv2d(out_channels, out_channels, 3, gain=gain, use_wscale=use_wscale)
        self.epi2 = LayerEpilogue(out_channels, dlatent_size, **epi)

    def forward(
        self, x: torch.Tensor, dlatents_in_range: torch.Tensor, noise_in_range: Sequence[torch.Tensor | None]
    ) -> torch.Tensor:
        """x B×Cin×R/2×R/2, dlatents B×2×512, two noise maps → B×Cout×R×R."""
        x = self.conv0_up(x)
        x = self.epi1(x, dlatents_in_range[:, 0], noise_in_range[0])
        x = self.conv1(x)
        return self.epi2(x, dlatents_in_range[:, 1], noise_in_range[1])


class G_mapping(nn.Sequential):
    """StyleGAN1 mapping network as PULSE: ``pixel_norm``, then ``dense0..7`` (MyLinear 512→512, gain sqrt(2),
    lrmul 0.01, equalized lr) each followed by ``denseK_act`` (LeakyReLU(0.2)). z B×512 → w B×512.

    Keys: ``dense{0..7}.weight`` (512,512) and ``.bias`` (512,): 16 keys, 2,101,248 numbers.
    """

    def __init__(
        self,
        latent_size: int = 512,
        dlatent_size: int = 512,
        mapping_layers: int = 8,
        use_wscale: bool = True,
        lrmul: float = 0.01,
    ) -> None:
        layers: list[tuple[str, nn.Module]] = [("pixel_norm", PixelNormLayer())]
        for i in range(mapping_layers):
            fan_in = latent_size if i == 0 else dlatent_size
            layers.append(
                (f"dense{i}", MyLinear(fan_in, dlatent_size, gain=2**0.5, lrmul=lrmul, use_wscale=use_wscale))
            )
            layers.append((f"dense{i}_act", nn.LeakyReLU(0.2)))
        super().__init__(OrderedDict(layers))


class G_synthesis(nn.Module):
    """StyleGAN1 synthesis network as PULSE's ``G_synthesis``.

    Channels per resolution ``2^r``: ``nf(r - 1)`` with ``nf(stage) = min(int(fmap_base / 2^(stage·fmap_decay)),
    fmap_max)`` (official: 512 up to 32×32, 256, 128, 64, 32, 16 at 64…1024). ``torgb`` (1×1 conv, gain 1) only at
    the final resolution; registered before ``blocks`` so its keys come first, as in PULSE's state_dict.

    Args:
        dlatent_size: style dimension (512).
        num_channels: output channels (3).
        resolution: output resolution, a power of two ≥ 8 (PULSE: 1024).
        fmap_base, fmap_decay, fmap_max: channel rule (official 8192, 1.0, 512).
        use_styles, const_input_layer, use_noise, use_pixel_norm, use_instance_norm: as TF StyleGAN (official
            defaults; only ``const_input_layer=True`` is supported).
        use_wscale: equalized learning rate.
        blur_filter: the separable blur taps ([1, 2, 1]); None or empty disables the blur.
    """

    def __init__(
        self,
        dlatent_size: int = 512,
        num_channels: int = 3,
        resolution: int = 1024,
        fmap_base: int = 8192,
        fmap_decay: float = 1.0,
        fmap_max: int = 512,
        use_styles: bool = True,
        const_input_layer: bool = True,
        use_noise: bool = True,
        use_wscale: bool = True,
        use_pixel_norm: bool = False,
        use_instance_norm: bool = True,
        blur_filter: Sequence[float] | None = (1, 2, 1),
    ) -> None:
        super().__init__()
        resolution_log2 = round(math.log2(resolution))
        if 2**resolution_log2 != resolution or resolution < 8:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        if not const_input_layer:
            raise ValueError("only const_input_layer=True (PULSE / official StyleGAN1) is supported")
        self.resolution = resolution
        self.dlatent_size = dlatent_size
        self.num_layers = resolution_log2 * 2 - 2

        def nf(stage: int) -> int:
            return min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max)

        gain = 2**0.5
        common = {
            "use_wscale": use_wscale,
            "use_noise": use_noise,
            "use_pixel_norm": use_pixel_norm,
            "use_instance_norm": use_instance_norm,
            "use_styles": use_styles,
        }
        blocks: list[tuple[str, nn.Module]] = []
        last_channels = 0
        for res in range(2, resolution_log2 + 1):
            channels = nf(res - 1)
            name = f"{2**res}x{2**res}"
            if res == 2:
                blocks.append((name, InputBlock(channels, dlatent_size, gain, **common)))
            else:
                blocks.append(
                    (name, GSynthesisBlock(last_channels, channels, blur_filter, dlatent_size, gain, **common))
                )
            last_channels = channels
        # blocks are initialised before torgb (same RNG order as PULSE) but registered after it (same key order)
        self.torgb = MyConv2d(last_channels, num_channels, kernel_size=1, gain=1.0, use_wscale=use_wscale)
        self.blocks = nn.ModuleDict(OrderedDict(blocks))

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shapes (1, 1, r, r) of the ``num_layers`` noise maps in PULSE's order: 4, 4, 8, 8, …, R, R."""
        return [(1, 1, 2 ** (i // 2 + 2), 2 ** (i // 2 + 2)) for i in range(self.num_layers)]

    def forward(self, dlatents_in: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Synthesise images from W+.

        Args:
            dlatents_in: W+ B×num_layers×512 (18 at 1024); block i uses rows 2i and 2i+1.
            noise: ``num_layers`` maps, map i B×1×r×r or 1×1×r×r with r = 2^(i//2+2), or None entries / None
                (then each layer's ``.noise`` attribute, else fresh randn; see the module docstring).

        Returns:
            Raw RGB B×3×R×R, roughly in [-1, 1], not clamped.
        """
        if dlatents_in.dim() != 3 or dlatents_in.shape[1:] != (self.num_layers, self.dlatent_size):
            raise ValueError(
                f"expected W+ of shape B×{self.num_layers}×{self.dlatent_size}, got {tuple(dlatents_in.shape)}"
            )
        if noise is None:
            noise = [None] * self.num_layers
        elif len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise maps, got {len(noise)}")
        x = None
        for i, block in enumerate(self.blocks.values()):
            w = dlatents_in[:, 2 * i : 2 * i + 2]
            n = noise[2 * i : 2 * i + 2]
            x = block(w, n) if i == 0 else block(x, w, n)
        return self.torgb(x)


class StyleGAN1Generator(nn.Module):
    """PULSE's StyleGAN1 generator (mapping + synthesis) with the project's generator protocol.

    ``state_dict`` keys are ``mapping.*`` and ``synthesis.*``; the submodules load PULSE's ``mapping.pt`` and
    ``synthesis.pt`` strictly (:meth:`from_state_dicts`, :func:`load_pulse`).

    Args:
        resolution: output resolution, a power of two (64–1024 intended; PULSE uses 1024).
        fmap_base, fmap_max: channel rule of :class:`G_synthesis`; change only for tiny test networks.
        style_dim: z / w dimension (512).
    """

    def __init__(
        self, resolution: int = 1024, fmap_base: int = 8192, fmap_max: int = 512, style_dim: int = 512
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.style_dim = style_dim
        self.mapping = G_mapping(style_dim, style_dim)
        self.synthesis = G_synthesis(
            dlatent_size=style_dim, resolution=resolution, fmap_base=fmap_base, fmap_max=fmap_max
        )
        self.n_latent = self.synthesis.num_layers

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """(1, 1, r, r) per synthesis layer in PULSE's order (4, 4, 8, 8, …, R, R)."""
        return self.synthesis.noise_shapes()

    def forward(self, z: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """z B×512 → mapping → the same w on all ``n_latent`` rows → raw RGB B×3×R×R (no truncation)."""
        w = self.mapping(z)
        return self.synthesis(w[:, None].expand(-1, self.n_latent, -1), noise)

    @classmethod
    def from_state_dicts(
        cls,
        mapping_sd: dict[str, torch.Tensor] | None,
        synthesis_sd: dict[str, torch.Tensor],
        resolution: int | None = None,
    ) -> StyleGAN1Generator:
        """Build a generator from PULSE state_dicts, loaded with ``strict=True``.

        Args:
            mapping_sd: ``mapping.pt`` content (16 keys) or None (mapping left randomly initialised; PULSE needs it
                only to recompute ``gaussian_fit.pt``).
            synthesis_sd: ``synthesis.pt`` content (100 keys at 1024).
            resolution: output resolution; None infers it from ``torgb.weight`` and the ``blocks.RxR`` keys.

        Returns:
            The generator with both state_dicts loaded.
        """
        if resolution is None:
            sizes = [int(k.split(".")[1].split("x")[0]) for k in synthesis_sd if k.startswith("blocks.")]
            if not sizes:
                raise ValueError("synthesis state_dict has no 'blocks.RxR.*' keys; not a PULSE synthesis.pt")
            resolution = max(sizes)
        fmap_base, fmap_max = _infer_fmaps(synthesis_sd, resolution)
        style_dim = synthesis_sd["blocks.4x4.epi1.style_mod.lin.weight"].shape[1]
        gen = cls(resolution=resolution, fmap_base=fmap_base, fmap_max=fmap_max, style_dim=style_dim)
        if mapping_sd is not None:
            gen.mapping.load_state_dict(mapping_sd, strict=True)
        gen.synthesis.load_state_dict(synthesis_sd, strict=True)
        return gen


def _infer_fmaps(synthesis_sd: dict[str, torch.Tensor], resolution: int) -> tuple[int, int]:
    """(fmap_base, fmap_max) reproducing the channel counts of a synthesis state_dict (official → 8192, 512)."""
    fmap_max = synthesis_sd["blocks.4x4.const"].shape[1]
    last = synthesis_sd["torgb.weight"].shape[1]
    stage = round(math.log2(resolution)) - 1
    # any mismatch with the nf() rule at intermediate blocks surfaces in the strict load_state_dict that follows
    return last * 2**stage, fmap_max


def load_pulse(
    mapping_path: str | Path | None, synthesis_path: str | Path, map_location: str | torch.device = "cpu"
) -> StyleGAN1Generator:
    """Load PULSE's ``mapping.pt`` (optional) and ``synthesis.pt`` (``torch.load(weights_only=True)``, strict).

    Args:
        mapping_path: path of ``mapping.pt`` or None.
        synthesis_path: path of ``synthesis.pt``.
        map_location: where to load the tensors.

    Returns:
        A :class:`StyleGAN1Generator` in eval mode.
    """
    mapping_sd = torch.load(mapping_path, map_location=map_location, weights_only=True) if mapping_path else None
    synthesis_sd = torch.load(synthesis_path, map_location=map_location, weights_only=True)
    return StyleGAN1Generator.from_state_dicts(mapping_sd, synthesis_sd).eval()
