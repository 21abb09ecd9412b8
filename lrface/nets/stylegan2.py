"""StyleGAN2 generator (Karras et al., CVPR 2020) with the module layout of rosinality/stylegan2-pytorch.

The state_dict keys and shapes equal rosinality's ``Generator``, so a checkpoint's ``g_ema`` loads with
``strict=True``. Every op is plain PyTorch (upfirdn2d, fused bias + leaky ReLU): it runs on CPU and needs no compiled
extension.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LRELU_GAIN = math.sqrt(2.0)


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """A separable FIR kernel from 1-D taps (outer product), normalised to sum 1. Returns K×K."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
              ) -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with a 2-D FIR kernel, downsample (same maths as NVIDIA's op).

    Args:
        x: B×C×H×W.
        kernel: K×K FIR filter (true convolution, i.e. flipped before the correlation F.conv2d performs).
        up: upsampling factor (zeros inserted after each sample).
        down: downsampling factor (keep every ``down``-th sample).
        pad: (before, after) padding applied on both axes after upsampling; negative values crop.

    Returns:
        B×C×H'×W' with H' = (H·up + pad0 + pad1 − K) // down + 1.
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    k = torch.flip(kernel, (0, 1)).to(dtype=x.dtype, device=x.device)
    weight = k[None, None].expand(c, 1, *k.shape)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2, scale: float = LRELU_GAIN
                     ) -> torch.Tensor:
    """leaky_relu(x + bias)·sqrt(2), bias broadcast over dim 1 (rosinality's ``fused_leaky_relu``)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


class PixelNorm(nn.Module):
    """x / sqrt(mean(x² over dim 1) + 1e-8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    """Learned bias + leaky ReLU(0.2) with gain sqrt(2), optionally clamped to ±clamp afterwards (NVlabs
    ``conv_clamp``)."""

    def __init__(self, channel: int, clamp: float | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fused_leaky_relu(x, self.bias)
        return out if self.clamp is None else out.clamp(-self.clamp, self.clamp)


class EqualLinear(nn.Module):
    """Equalised-learning-rate linear layer: weight stored as randn/lr_mul, scaled by lr_mul/sqrt(in) at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias) if bias is not None else F.leaky_relu(out, 0.2) * LRELU_GAIN
        return F.linear(x, self.weight * self.scale, bias)


class Blur(nn.Module):
    """FIR low-pass (upfirdn2d without resampling); ``kernel`` is a persistent K×K buffer as in rosinality."""

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor ** 2
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2× FIR upsampling (used on the RGB skip path)."""

    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor ** 2)
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with optional demodulation and 2× transposed-conv upsampling + blur.

    Weight 1×Cout×Cin×k×k (rosinality layout); modulation ``EqualLinear(style_dim, Cin, bias_init=1)``.

    Two equal computations (stylegan2-ada's ``fused_modconv``): ``fused=True`` builds one modulated kernel per sample
    and runs a grouped convolution (groups = B, rosinality's way); ``fused=False`` scales the input channels by the
    style, convolves with the shared kernel and scales the output channels by the demodulation coefficients. The
    second is a plain batched convolution: on CPU the grouped form gets *slower per sample* as B grows, so the
    unfused form is the default (PULSE searches batches of B·R latents).
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1), fused: bool = False):
        super().__init__()
        self.fused = fused
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample, self.demodulate = upsample, demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x: B×Cin×H×W, style: B×style_dim → B×Cout×H'×W' (H' = 2H when upsampling)."""
        b, cin, h, w = x.shape
        if not self.fused:
            return self._forward_unfused(x, self.modulation(style))
        s = self.modulation(style).view(b, 1, cin, 1, 1)
        weight = self.scale * self.weight * s  # B×Cout×Cin×k×k
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(b, self.out_channel, 1, 1, 1)
        k = self.kernel_size
        x = x.reshape(1, b * cin, h, w)
        if self.upsample:
            # conv_transpose2d wants (in, out/groups, k, k) per group: swap the channel axes of each sample's kernel
            weight = weight.transpose(1, 2).reshape(b * cin, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=b)
            out = out.view(b, self.out_channel, out.shape[-2], out.shape[-1])
            return self.blur(out)
        out = F.conv2d(x, weight.reshape(b * self.out_channel, cin, k, k), padding=self.padding, groups=b)
        return out.view(b, self.out_channel, out.shape[-2], out.shape[-1])

    def _forward_unfused(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Same result as the fused path: conv(x·s, W)·d with d = rsqrt(Σ_{cin,k,k} (W·s)²) per sample and Cout."""
        b = x.shape[0]
        weight = self.scale * self.weight[0]  # Cout×Cin×k×k
        x = x * s.view(b, -1, 1, 1)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), padding=0, stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # Σ_{cin,k,k} (W_{o,cin,k,k} s_{b,cin})² = (s²) @ (Σ_k W²)ᵀ: B×Cout without a B×Cout×Cin×k×k tensor
            demod = torch.rsqrt(s.pow(2) @ weight.pow(2).sum([2, 3]).t() + 1e-8)
            out = out * demod.view(b, self.out_channel, 1, 1)
        return out


class NoiseInjection(nn.Module):
    """x + weight·noise with a single learned scalar ``weight`` (1,); noise B×1×H×W (or 1×1×H×W) is broadcast."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            b, _, h, w = x.shape
            noise = x.new_empty(b, 1, h, w).normal_()
        return x + self.weight * noise


class ConstantInput(nn.Module):
    """Learned 1×C×4×4 constant, repeated over the batch."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """ModulatedConv2d → NoiseInjection → FusedLeakyReLU."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel, clamp=conv_clamp)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    """1×1 modulated conv (no demodulation) to RGB + bias, plus the FIR-upsampled skip from the previous scale."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.clamp = conv_clamp

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if self.clamp is not None:  # NVlabs clamps this layer's own output, before the skip is added
            out = out.clamp(-self.clamp, self.clamp)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's resolution → channel table."""
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
            1024: 16 * cm}


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 config-f generator ('skip' architecture) with rosinality's module and parameter names.

    Args:
        size: output resolution, a power of two ≥ 8 (64 … 1024 in practice).
        style_dim: z and w width.
        n_mlp: mapping-network depth.
        channel_multiplier: 2 for config-f (FFHQ 1024), 1 for the smaller configs.
        blur_kernel: FIR taps used for up-sampling.
        lr_mlp: learning-rate multiplier of the mapping network.
        channels: optional resolution → channel-count table replacing rosinality's (non-official nets, tests, or
            NVlabs pickles trained with another ``channel_base``).
        conv_clamp: NVlabs stylegan2-ada ``conv_clamp`` (256 in networks trained with their ``train.py``; None in
            rosinality and TF-converted nets): activations and ToRGB outputs are clamped to ±conv_clamp.
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), lr_mlp: float = 0.01,
                 channels: dict[int, int] | None = None, conv_clamp: float | None = None):
        super().__init__()
        log_size = int(math.log2(size))
        if 2 ** log_size != size or size < 8:
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        self.size, self.style_dim, self.log_size = size, style_dim, log_size
        self.n_mlp = n_mlp
        self.channels = dict(channels) if channels is not None else default_channels(channel_multiplier)
        missing = [2 ** i for i in range(2, log_size + 1) if 2 ** i not in self.channels]
        if missing:
            raise ValueError(f"channels has no entry for resolutions {missing}")

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])
        self.input = ConstantInput(self.channels[4])
        self.conv_clamp = conv_clamp
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel,
                                conv_clamp=conv_clamp)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False, conv_clamp=conv_clamp)
        self.num_layers = (log_size - 2) * 2 + 1
        self.n_latent = log_size * 2 - 2

        self.convs = nn.ModuleList()
        self.upsamples = nn.ModuleList()  # empty, kept for rosinality parity
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_channel = self.channels[4]
        for i in range(3, log_size + 1):
            out_channel = self.channels[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel, conv_clamp=conv_clamp))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel,
                                         conv_clamp=conv_clamp))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel, conv_clamp=conv_clamp))
            in_channel = out_channel
        # W average of the source checkpoint (NVlabs ``w_avg`` / rosinality ``latent_avg``) when a loader knows it;
        # non-persistent so the state_dict stays rosinality's.
        self.register_buffer("latent_avg", None, persistent=False)

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z B×style_dim → w B×style_dim."""
        return self.style(z)

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shapes of the ``num_layers`` noise maps synthesis takes, in order: (1, 1, r, r), r = 4, 8, 8, 16, 16, …"""
        return [tuple(getattr(self.noises, f"noise_{i}").shape) for i in range(self.num_layers)]

    def synthesis(self, w_plus: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None,
                  randomize_noise: bool = False) -> torch.Tensor:
        """Renders images from W+ latents.

        Args:
            w_plus: B×n_latent×style_dim (a B×style_dim w is broadcast to every layer).
            noise: ``num_layers`` tensors of shape B×1×r×r or 1×1×r×r (see ``noise_shapes``); ``None`` (or a
                ``None`` entry) uses the stored ``noises.noise_i`` buffers, or fresh N(0, 1) with ``randomize_noise``.
            randomize_noise: draw fresh noise where none is given.

        Returns:
            B×3×size×size raw RGB, roughly in [-1, 1] (not clamped).
        """
        if w_plus.ndim == 2:
            w_plus = w_plus.unsqueeze(1).expand(-1, self.n_latent, -1)
        if w_plus.shape[1] != self.n_latent or w_plus.shape[2] != self.style_dim:
            raise ValueError(f"w_plus must be B×{self.n_latent}×{self.style_dim}, got {tuple(w_plus.shape)}")
        if noise is None:
            noise = [None] * self.num_layers
        if len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise maps, got {len(noise)}")
        if not randomize_noise:
            noise = [getattr(self.noises, f"noise_{i}") if n is None else n for i, n in enumerate(noise)]

        out = self.input(w_plus.shape[0])
        out = self.conv1(out, w_plus[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        i = 1
        for conv_up, conv, noise_up, noise_conv, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2],
                                                                noise[2::2], self.to_rgbs):
            out = conv_up(out, w_plus[:, i], noise=noise_up)
            out = conv(out, w_plus[:, i + 1], noise=noise_conv)
            skip = to_rgb(out, w_plus[:, i + 2], skip)
            i += 2
        return skip

    def forward(self, z: torch.Tensor, truncation: float = 1.0, noise: Sequence[torch.Tensor | None] | None = None
                ) -> torch.Tensor:
        """z B×style_dim → B×3×size×size, with optional truncation ψ towards ``latent_avg``."""
        w = self.mapping(z)
        if truncation != 1.0:
            if self.latent_avg is None:
                raise ValueError("truncation needs latent_avg (set it, e.g. from mean_latent)")
            w = self.latent_avg + truncation * (w - self.latent_avg)
        return self.synthesis(w, noise=noise)

    @torch.no_grad()
    def mean_latent(self, n_latent: int) -> torch.Tensor:
        """Mean of ``mapping`` over ``n_latent`` z ~ N(0, I): 1×style_dim (rosinality's ``mean_latent``)."""
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)


class EqualConv2d(nn.Module):
    """Equalised-learning-rate convolution: weight ~ N(0, 1) scaled by 1/sqrt(fan_in) at run time (rosinality's)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class ConvLayer(nn.Sequential):
    """[Blur →] EqualConv2d [→ FusedLeakyReLU]; with ``downsample`` a blur then a stride-2 conv (rosinality's
    ``ConvLayer``: children are numbered, so keys read ``0.weight``, ``1.bias`` or ``0.kernel``, ``1.weight``, ...)."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Discriminator residual block: two 3×3 convs (the second downsampling) plus a 1×1 downsampling skip, summed and
    divided by sqrt(2) to keep the variance."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, blur_kernel=blur_kernel, activate=False,
                              bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class StyleGAN2Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with rosinality's ``Discriminator`` key layout (a ``train.py`` checkpoint's
    ``d`` loads strict).

    fromRGB 1×1 conv at ``size`` → ResBlocks halving the resolution down to 4×4 → minibatch standard deviation
    (groups of ``stddev_group``, ``stddev_feat`` channels) → 3×3 conv → two equalised linears → one logit.

    Args:
        size: input resolution (power of two ≥ 8).
        channel_multiplier: as the generator's.
        channels: optional resolution → channels table (must cover ``size`` … 4).
        blur_kernel: FIR taps of the downsampling blur.
        stddev_group: minibatch-stddev group size (reduced to a divisor of the batch when the batch is smaller or
            not a multiple, as rosinality does).
    """

    def __init__(self, size: int, channel_multiplier: int = 2, channels: dict[int, int] | None = None,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), stddev_group: int = 4, stddev_feat: int = 1):
        super().__init__()
        log_size = int(math.log2(size))
        if 2 ** log_size != size or size < 8:
            raise ValueError(f"size must be a power of two >= 8, got {size}")
        self.channels = dict(channels) if channels is not None else default_channels(channel_multiplier)
        missing = [2 ** i for i in range(2, log_size + 1) if 2 ** i not in self.channels]
        if missing:
            raise ValueError(f"channels has no entry for resolutions {missing}")
        blocks: list[nn.Module] = [ConvLayer(3, self.channels[size], 1)]
        in_channel = self.channels[size]
        for i in range(log_size, 2, -1):
            out_channel = self.channels[2 ** (i - 1)]
            blocks.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*blocks)
        self.stddev_group, self.stddev_feat = stddev_group, stddev_feat
        self.final_conv = ConvLayer(in_channel + 1, self.channels[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(self.channels[4] * 4 * 4, self.channels[4], activation=True),
                                          EqualLinear(self.channels[4], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×size×size images in [-1, 1] → B×1 logits (real > 0)."""
        out = self.convs(x)
        b, c, h, w = out.shape
        group = min(b, self.stddev_group)
        while b % group:
            group -= 1
        y = out.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        y = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True).squeeze(2)
        y = y.repeat(group, 1, h, w)
        out = self.final_conv(torch.cat([out, y], 1))
        return self.final_linear(out.view(b, -1))
