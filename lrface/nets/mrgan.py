"""MR-GAN: the Multi-Resolution GAN of Fang, Deng, Zhong & Hu, "Generate to Adapt: Resolution Adaption Network for
Surveillance Face Recognition" (ECCV 2020; seed 002, supplementary §1, §4, §5, Fig. 7–9, Alg. 1; methods.md §2).

MR-GAN turns a high-resolution face into a realistic low-resolution (LR) one, for training the feature adaption network.

Generator (:class:`MRGANGenerator`, supp. §5):

* :class:`GlobalGenerator` — "HRNet-like" (our description of supp. Fig. 9): parallel streams at H, H/2, H/4, H/8 are
  added one per stage; after every stage the higher-resolution streams are fused into the lower ones only, so "finally
  the stream of the lowest resolution contains multiple resolutions" (§5). From that map M one resolution r is drawn
  per sample ("randomly selects one resolution"), and a small head predicts a residual Δ_r that *refines* the plainly
  down-sampled face z_r = area(x, r): o_r = clamp(z_r + Δ_r); the returned image is o_r up-sampled back to H×W
  (bicubic), i.e. a face whose information is that of an r×r image.
* :class:`LocalGenerator` ×3 (supp. Fig. 7) — eyes, nose and mouth patches: conv encoder → residual blocks → a random
  vector concatenated to the features ("to blur the local region randomly, avoiding the artifacts") → transposed-conv
  decoder.
* :class:`SpatialAttention` (supp. §1, Fig. 2) — an attention map A merges the local branch L (the LR face with the
  local generators' patches pasted in) and the global output: out = A ⊙ L + (1 − A) ⊙ global. The "attention
  activation loss" that keeps A from collapsing belongs to the training module, not here.

Discriminator (:class:`MRGANDiscriminator`, supp. §5, Fig. 8): a PatchGAN on the whole face plus three-conv local
discriminators on the 20×72 (eyes), 32×20 (nose) and 24×52 (mouth) patches.

Ablations (supp. Table 1): ``spatial_attention=False`` pastes the local patches straight into the global output;
``local_generators=False`` makes L the plain down-sampled face (attention then merges global with it); both off leaves
the global generator alone; ``local_discriminators=False`` keeps only the PatchGAN.

Region positions: the supplementary gives only the patch *sizes*, for a 112×96 crop. We centre each box on the aligned
template's landmarks (:func:`region_boxes`): eyes on the midpoint of the two eyes, nose on the nose tip, mouth on the
midpoint of the mouth corners, at our 112×112 ArcFace crop (the template's x already carries the +8 of the 96→112
widening, so the same sizes fit). At 112 the boxes are (top, left, height, width) = eyes (42, 20, 20, 72), nose
(56, 47, 32, 20), mouth (81, 31, 24, 52); nose overlaps the eyes by 6 rows and the mouth by 7, and where patches
overlap the later region in ``REGIONS`` order wins when pasting.

All images are B×3×H×W RGB in [-1, 1]. Resizing is ``torch.nn.functional.interpolate`` with ``align_corners=False``:
``area`` to shrink, ``bicubic`` to enlarge (clamped to [-1, 1]), ``bilinear`` for feature maps.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PATCH_SIZES",
    "REGIONS",
    "GlobalGenerator",
    "LocalDiscriminator",
    "LocalGenerator",
    "MRGANDiscriminator",
    "MRGANGenerator",
    "PatchDiscriminator",
    "SpatialAttention",
    "crop_regions",
    "parameter_counts",
    "paste_regions",
    "region_boxes",
    "region_mask",
]

REGIONS = ("eyes", "nose", "mouth")
#: Patch height × width at a 112-high crop (supp. §5: 20×72×3, 32×20×3, 24×52×3).
PATCH_SIZES: dict[str, tuple[int, int]] = {"eyes": (20, 72), "nose": (32, 20), "mouth": (24, 52)}

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


# -- facial regions ------------------------------------------------------------------------------------------------


def _round_half_up(v: float) -> int:
    return math.floor(v + 0.5)


def region_boxes(image_size: int = 112, landmarks=None) -> dict[str, Box]:
    """Eyes / nose / mouth boxes of an aligned ``image_size``×``image_size`` face.

    Sizes: :data:`PATCH_SIZES` × image_size/112, each rounded to a multiple of 4 (at least 4) so the local generators'
    two stride-2 stages divide them. Centres: the midpoint of the eyes, the nose tip, the midpoint of the mouth corners
    of ``landmarks``. Pixel centres sit at integer coordinates (the alignment's cv2 convention), so a box of height h
    centred on y starts at round(y − (h − 1)/2). A box that would leave the image is shifted (never shrunk) inside.

    Args:
        image_size: side of the square aligned crop.
        landmarks: 5×2 (x, y) pixel coordinates (left eye, right eye, nose, left mouth, right mouth) in that crop,
            tensor / array / nested sequence; default the ArcFace template (``lrface.align.arcface_template``).

    Returns:
        {region: (top, left, height, width)} in :data:`REGIONS` order.

    Raises:
        ValueError: landmarks not 5×2, or a box larger than the image.
    """
    if landmarks is None:
        from lrface.align import arcface_template

        landmarks = arcface_template(image_size)
    pts = torch.as_tensor(landmarks, dtype=torch.float64).detach().cpu()
    if pts.shape != (5, 2):
        raise ValueError(f"landmarks must be 5×2 (x, y) points; got shape {tuple(pts.shape)}")
    centres = {"eyes": pts[0:2].mean(0), "nose": pts[2], "mouth": pts[3:5].mean(0)}
    boxes = {}
    for name in REGIONS:
        h, w = (max(4, 4 * _round_half_up(s * image_size / 112 / 4)) for s in PATCH_SIZES[name])
        if h > image_size or w > image_size:
            raise ValueError(f"the {name} box {h}×{w} does not fit a {image_size}×{image_size} image")
        cx, cy = float(centres[name][0]), float(centres[name][1])
        top = min(max(_round_half_up(cy - (h - 1) / 2), 0), image_size - h)
        left = min(max(_round_half_up(cx - (w - 1) / 2), 0), image_size - w)
        boxes[name] = (top, left, h, w)
    return boxes


def crop_regions(images: torch.Tensor, boxes: Mapping[str, Box]) -> dict[str, torch.Tensor]:
    """Cut each box out of ``images``.

    Shapes:
        images: B×C×H×W → {name: B×C×h×w} (views; differentiable).
    """
    return {name: images[..., t:t + h, l:l + w] for name, (t, l, h, w) in boxes.items()}


def paste_regions(images: torch.Tensor, patches: Mapping[str, torch.Tensor], boxes: Mapping[str, Box]) -> torch.Tensor:
    """A copy of ``images`` with each patch written into its box (in ``patches`` order: later patches win overlaps).

    Differentiable with respect to both ``images`` (outside the pasted pixels) and ``patches``.

    Shapes:
        images: B×C×H×W; patches: {name: B×C×h×w} with (h, w) the box's size → B×C×H×W.
    """
    out = images.clone()
    for name, patch in patches.items():
        t, l, h, w = boxes[name]
        if patch.shape[-2:] != (h, w):
            raise ValueError(f"the {name} patch is {tuple(patch.shape[-2:])}; its box is {h}×{w}")
        out[..., t:t + h, l:l + w] = patch
    return out


def region_mask(image_size: int, boxes: Mapping[str, Box]) -> torch.Tensor:
    """1 inside the union of the boxes, 0 elsewhere. → 1×1×image_size×image_size float32."""
    mask = torch.zeros(1, 1, image_size, image_size)
    for t, l, h, w in boxes.values():
        mask[..., t:t + h, l:l + w] = 1.0
    return mask


# -- building blocks -----------------------------------------------------------------------------------------------


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels)  # affine=False, no running stats: the pix2pix / CycleGAN layer
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'instance', 'batch' or 'none'; got {kind!r}")


def _conv_norm_relu(c_in: int, c_out: int, norm: str, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), _norm(norm, c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _ResBlock(nn.Module):
    """x + (conv3×3 → norm → ReLU → conv3×3 → norm)(x), the pix2pixHD / CycleGAN block.

    Padded by replication rather than their reflection: a 4-pixel patch side is 1 pixel after the local generator's
    encoder, which reflection cannot pad.

    Shapes:
        x: B×C×H×W → B×C×H×W.
    """

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReplicationPad2d(1), nn.Conv2d(channels, channels, 3), _norm(norm, channels), nn.ReLU(inplace=True),
            nn.ReplicationPad2d(1), nn.Conv2d(channels, channels, 3), _norm(norm, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _area(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="area")


def _bicubic(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


# -- global generator (supp. Fig. 9) -------------------------------------------------------------------------------


class GlobalGenerator(nn.Module):
    """The resolution-aggregating global generator (supp. §5, Fig. 9), HRNet-like.

    Stream s (s = 0 … S−1, S = ``len(channels)``) runs at H/2^s with ``channels[s]`` channels. Stage k adds stream k:
    stream 0 is a conv of the face; stream k > 0 is a stride-2 conv of stream k − 1 concatenated with the face
    area-resized to H/2^k and convolved to ``channels[k]``. Each stage then runs ``blocks`` residual blocks on every
    stream and fuses high → low only: stream j ← ReLU(stream j + Σ_{i<j} down_{i→j}(stream i)), down_{i→j} being j − i
    stride-2 3×3 convs. After the last stage the lowest stream M (B×C_{S−1}×H/2^{S−1}×H/2^{S−1}) has aggregated every
    resolution.

    One head per r in ``lr_sizes``: Δ_r = conv3×3 → ReLU → conv3×3(→3) of bilinear(M, r×r), o_r = clamp(z_r + Δ_r, −1, 1)
    with z_r = area(x, r×r), image = clamp(bicubic(o_r, H×W)). Head width: ``channels[0]``.

    Args:
        image_size: H = W; must be divisible by 2^(S−1).
        channels: widths of the streams, highest resolution first.
        blocks: residual blocks per stream per stage.
        lr_sizes: the LR resolutions r one is drawn from (each < image_size).
        norm: ``"instance"`` (default), ``"batch"`` or ``"none"``.

    Shapes:
        forward: x B×3×H×W in [−1, 1], index B (long, positions in ``lr_sizes``) or None →
        {image: B×3×H×W, base: B×3×H×W (= clamp(bicubic(z_r))), index: B long}.
    """

    def __init__(self, image_size: int = 112, channels: Sequence[int] = (32, 64, 128, 256), blocks: int = 2,
                 lr_sizes: Sequence[int] = (14, 28), norm: str = "instance") -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        lr_sizes = tuple(int(r) for r in lr_sizes)
        if not channels:
            raise ValueError("channels must name at least one stream")
        if image_size % 2 ** (len(channels) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(channels) - 1} "
                             f"({len(channels)} streams)")
        if not lr_sizes or any(not 0 < r < image_size for r in lr_sizes):
            raise ValueError(f"lr_sizes must be non-empty sizes in (0, {image_size}); got {lr_sizes}")
        self.image_size, self.channels, self.lr_sizes, self.blocks = int(image_size), channels, lr_sizes, int(blocks)
        self.sides = tuple(image_size // 2 ** s for s in range(len(channels)))

        self.stem = _conv_norm_relu(3, channels[0], norm)
        self.transitions = nn.ModuleList([nn.Identity()])  # stream k−1 → k, stride 2
        self.entries = nn.ModuleList([nn.Identity()])  # cat(transition, face at H/2^k) → stream k
        for k in range(1, len(channels)):
            self.transitions.append(_conv_norm_relu(channels[k - 1], channels[k], norm, stride=2))
            self.entries.append(_conv_norm_relu(channels[k] + 3, channels[k], norm))
        self.stages = nn.ModuleList()
        for k in range(len(channels)):
            stage = nn.Module()
            stage.blocks = nn.ModuleList(
                nn.Sequential(*(_ResBlock(channels[s], norm) for _ in range(blocks))) for s in range(k + 1))
            stage.fuse = nn.ModuleDict({
                f"{i}_{j}": self._down(channels[i], channels[j], j - i, norm)
                for j in range(1, k + 1) for i in range(j)})
            self.stages.append(stage)
        hidden = channels[0]
        self.heads = nn.ModuleList(nn.Sequential(
            nn.Conv2d(channels[-1], hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 3, 3, padding=1))
            for _ in lr_sizes)
        # zero last layers: the generator starts as the plain down-sampled face and learns what makes it realistic
        # (an untrained refinement would otherwise hand D noise to reject from the first update)
        for head in self.heads:
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    @staticmethod
    def _down(c_in: int, c_out: int, steps: int, norm: str) -> nn.Sequential:
        """steps stride-2 3×3 convs: (norm, ReLU) between them, norm only after the last (added before the ReLU)."""
        layers = [_conv_norm_relu(c_in, c_in, norm, stride=2) for _ in range(steps - 1)]
        layers.append(_conv_norm_relu(c_in, c_out, norm, stride=2, relu=False))
        return nn.Sequential(*layers)

    def streams(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stream after the last stage; the last one is M.

        Shapes:
            x: B×3×H×W → [B×channels[s]×H/2^s×H/2^s for s = 0 … S−1].
        """
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected B×3×{self.image_size}×{self.image_size}; got {tuple(x.shape)}")
        feats: list[torch.Tensor] = []
        for k, stage in enumerate(self.stages):
            if k == 0:
                feats.append(self.stem(x))
            else:
                face = _area(x, self.sides[k])
                feats.append(self.entries[k](torch.cat([self.transitions[k](feats[k - 1]), face], 1)))
            feats = [blocks(f) for blocks, f in zip(stage.blocks, feats)]
            fused = [feats[0]]
            for j in range(1, k + 1):
                incoming = sum(stage.fuse[f"{i}_{j}"](feats[i]) for i in range(j))
                fused.append(F.relu(feats[j] + incoming))
            feats = fused
        return feats

    def draw_index(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Uniform random positions in ``lr_sizes``, one per sample (B long; torch's global generator)."""
        return torch.randint(len(self.lr_sizes), (batch,), device=device)

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """See the class docstring. Heads run only for the resolutions present in ``index``."""
        b = x.shape[0]
        if index is None:
            index = self.draw_index(b, x.device)
        index = torch.as_tensor(index, device=x.device).long()
        if index.shape != (b,):
            raise ValueError(f"index must have shape ({b},); got {tuple(index.shape)}")
        if b and (index.min() < 0 or index.max() >= len(self.lr_sizes)):
            raise ValueError(f"index values must be positions in lr_sizes {self.lr_sizes}; got {index.tolist()}")
        m = self.streams(x)[-1]
        size = (self.image_size, self.image_size)
        images, bases, order = [], [], []
        for k in torch.unique(index).tolist():
            sel = (index == k).nonzero(as_tuple=True)[0]
            r = self.lr_sizes[k]
            z = _area(x[sel], r)
            delta = self.heads[k](F.interpolate(m[sel], size=(r, r), mode="bilinear", align_corners=False))
            images.append(_bicubic((z + delta).clamp(-1, 1), size))
            bases.append(_bicubic(z, size))
            order.append(sel)
        if not order:
            empty = x.new_zeros(0, 3, *size)
            return {"image": empty, "base": empty, "index": index}
        inverse = torch.argsort(torch.cat(order))
        return {"image": torch.cat(images)[inverse], "base": torch.cat(bases)[inverse], "index": index}


# -- local generator (supp. Fig. 7) --------------------------------------------------------------------------------


class LocalGenerator(nn.Module):
    """Local generator for one facial region (supp. §5, Fig. 7).

    conv7×7 (c) + IN + ReLU → two stride-2 conv3×3 (2c, 4c) + IN + ReLU → ``n_res`` residual blocks → concat a random
    vector (``noise_dim`` channels, N(0, 1) per sample, broadcast over space; "to blur the local region randomly") →
    two stride-2 transposed conv3×3 (2c, c) + IN + ReLU → conv7×7 (3) → tanh.

    Args:
        patch_size: the nominal (h, w) of its region (both multiples of 4); kept as ``patch_size``.
        channels: c.
        n_res: residual blocks.
        noise_dim: length of the random vector (0: none).

    Shapes:
        forward: patch B×3×h×w in [−1, 1] (h, w multiples of 4; in training also h·w > 16, since instance norm needs
        more than one value per channel at h/4 × w/4), noise B×noise_dim or None → B×3×h×w in (−1, 1).
    """

    def __init__(self, patch_size: tuple[int, int], channels: int = 32, n_res: int = 3, noise_dim: int = 8) -> None:
        super().__init__()
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        if any(s <= 0 or s % 4 for s in self.patch_size):
            raise ValueError(f"patch_size must be positive multiples of 4; got {self.patch_size}")
        self.noise_dim = int(noise_dim)
        c = channels
        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, c, 7), nn.InstanceNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU(inplace=True),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(4 * c), nn.ReLU(inplace=True),
            *(_ResBlock(4 * c) for _ in range(n_res)))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * c + self.noise_dim, 2 * c, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(2 * c), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * c, c, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(c), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7), nn.Tanh())
        # Δ starts at 0: the region starts as the down-sampled face's (see MRGANGenerator)
        nn.init.zeros_(self.decoder[-2].weight)
        nn.init.zeros_(self.decoder[-2].bias)

    def forward(self, patch: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = patch.shape
        if h % 4 or w % 4:
            raise ValueError(f"patch height and width must be multiples of 4; got {h}×{w}")
        feat = self.encoder(patch)
        if self.noise_dim:
            if noise is None:
                noise = torch.randn(b, self.noise_dim, device=patch.device, dtype=feat.dtype)
            if noise.shape != (b, self.noise_dim):
                raise ValueError(f"noise must be {b}×{self.noise_dim}; got {tuple(noise.shape)}")
            noise = noise.to(feat.dtype)[:, :, None, None].expand(-1, -1, *feat.shape[-2:])
            feat = torch.cat([feat, noise], 1)
        return self.decoder(feat)


class SpatialAttention(nn.Module):
    """The attention network merging the global and local outputs (supp. §1, Fig. 2).

    conv3×3 (hidden) → ReLU → conv3×3 (hidden) → ReLU → conv1×1 (1) → sigmoid.

    Shapes:
        forward: cat(global image, local-branch image) B×6×H×W → A B×1×H×W in (0, 1).
    """

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(6, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MRGANGenerator(nn.Module):
    """The MR-GAN generator: global generator + local generators + spatial attention (supp. §1, §5, Fig. 7–9, Alg. 1).

    L = paste(base, {region: crop(base) + local_generator(crop(x))}) (each local generator reads its region of the HR
    face and writes a residual onto the same region of the plain down-sampled face: it "blurs the local region
    randomly" around the down-sampled look rather than painting a patch from nothing; its last conv starts at zero,
    as the global heads' do, so an untrained MR-GAN is plain down-sampling), or base without local generators. With attention, A = attention(cat(global, L))
    and out = A ⊙ L + (1 − A) ⊙ global; without it, out = paste(global, local patches), or global alone.

    Args:
        image_size: side of the aligned input face.
        global_channels, blocks, lr_sizes: :class:`GlobalGenerator`'s ``channels``, ``blocks``, ``lr_sizes``.
        local_generators, spatial_attention: the Table 1 ablation switches.
        local_channels, local_res_blocks, noise_dim: :class:`LocalGenerator`'s ``channels``, ``n_res``, ``noise_dim``.

    Attributes:
        global_generator, local_generators (``ModuleDict`` eyes / nose / mouth, or None), attention (or None),
        boxes (:func:`region_boxes` of ``image_size``).

    Shapes:
        forward: x B×3×H×W in [−1, 1], index B long (positions in ``lr_sizes``) or None (random), noise
        {region: B×noise_dim} or None (random) → {image, global, base, local: B×3×H×W; attention: B×1×H×W or None;
        index: B long}.
    """

    def __init__(self, image_size: int = 112, global_channels: Sequence[int] = (32, 64, 128, 256), blocks: int = 2,
                 lr_sizes: Sequence[int] = (14, 28), local_generators: bool = True, spatial_attention: bool = True,
                 local_channels: int = 32, local_res_blocks: int = 3, noise_dim: int = 8) -> None:
        super().__init__()
        # the constructor's arguments, so a trained generator can be rebuilt from its export
        # (lrface.weights.load_mrgan_generator)
        self.config = {"image_size": int(image_size), "global_channels": [int(c) for c in global_channels],
                       "blocks": int(blocks), "lr_sizes": [int(r) for r in lr_sizes],
                       "local_generators": bool(local_generators), "spatial_attention": bool(spatial_attention),
                       "local_channels": int(local_channels), "local_res_blocks": int(local_res_blocks),
                       "noise_dim": int(noise_dim)}
        self.image_size = int(image_size)
        self.global_generator = GlobalGenerator(image_size, global_channels, blocks, lr_sizes)
        self.boxes = region_boxes(self.image_size)
        self.local_generators = nn.ModuleDict({
            name: LocalGenerator(self.boxes[name][2:], local_channels, local_res_blocks, noise_dim)
            for name in REGIONS}) if local_generators else None
        self.attention = SpatialAttention() if spatial_attention else None

    @property
    def lr_sizes(self) -> tuple[int, ...]:
        return self.global_generator.lr_sizes

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None,
                noise: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor | None]:
        g = self.global_generator(x, index)
        global_image, base = g["image"], g["base"]
        patches = None
        if self.local_generators is not None:
            noise = noise or {}
            crops, base_crops = crop_regions(x, self.boxes), crop_regions(base, self.boxes)
            patches = {name: (base_crops[name] + gen(crops[name], noise.get(name))).clamp(-1, 1)
                       for name, gen in self.local_generators.items()}
            local = paste_regions(base, patches, self.boxes)
        else:
            local = base
        if self.attention is not None:
            attention = self.attention(torch.cat([global_image, local], 1))
            image = attention * local + (1 - attention) * global_image
        else:
            attention = None
            image = global_image if patches is None else paste_regions(global_image, patches, self.boxes)
        return {"image": image, "global": global_image, "base": base, "local": local, "attention": attention,
                "index": g["index"]}


# -- discriminators (supp. Fig. 8) ---------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """Global discriminator, a PatchGAN (supp. §5, Fig. 8 top).

    conv4 s2 → LReLU(0.2); (n_layers − 1)× conv4 s2 + IN + LReLU; conv4 s1 + IN + LReLU; conv4 s1 → 1 (padding 1;
    widths c, 2c, 4c, … capped at 8c).

    Shapes:
        forward: B×3×H×W → B×1×h×w logits (12×12 at 112 with n_layers = 3).
    """

    def __init__(self, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        c_prev = channels
        for n in range(1, n_layers + 1):
            c = channels * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(c_prev, c, 4, stride=stride, padding=1), nn.InstanceNorm2d(c),
                       nn.LeakyReLU(0.2, inplace=True)]
            c_prev = c
        layers.append(nn.Conv2d(c_prev, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LocalDiscriminator(nn.Module):
    """Local discriminator, three convs (supp. §5, Fig. 8 bottom: "only adopt three convolutional layers").

    conv4 s2 p1 (c) → LReLU(0.2); conv4 s2 p1 (2c) + IN → LReLU(0.2); conv3 s1 p1 → 1.

    Shapes:
        forward: B×3×h×w → B×1×(h/4)×(w/4) logits (h, w multiples of 4): 5×18 eyes, 8×5 nose, 6×13 mouth at 112.
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * channels),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * channels, 1, 3, stride=1, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MRGANDiscriminator(nn.Module):
    """The global-local focused discriminator (supp. §5, Fig. 8, Alg. 1): a PatchGAN on the face and one
    :class:`LocalDiscriminator` per region on its :func:`region_boxes` crop.

    Attributes:
        global_d, local_d (``ModuleDict`` eyes / nose / mouth, or None), boxes.

    Shapes:
        forward: B×3×H×W → {"global": B×1×h×w, "eyes" / "nose" / "mouth": B×1×h_r×w_r (when local)} logits.
    """

    def __init__(self, image_size: int = 112, channels: int = 64, n_layers: int = 3,
                 local_discriminators: bool = True, local_channels: int = 64) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.boxes = region_boxes(self.image_size)
        self.global_d = PatchDiscriminator(channels, n_layers)
        self.local_d = nn.ModuleDict({name: LocalDiscriminator(local_channels) for name in REGIONS}) \
            if local_discriminators else None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"global": self.global_d(images)}
        if self.local_d is not None:
            crops = crop_regions(images, self.boxes)
            out.update({name: d(crops[name]) for name, d in self.local_d.items()})
        return out


# -- parameter counts ----------------------------------------------------------------------------------------------


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(generator: MRGANGenerator, discriminator: MRGANDiscriminator) -> dict[str, int]:
    """Parameters per part: global / local generators / attention / generator total, global / local D / D total."""
    counts = {"generator.global": _count(generator.global_generator)}
    for name in REGIONS:
        gens = generator.local_generators
        counts[f"generator.local.{name}"] = _count(gens[name]) if gens is not None else 0
    counts["generator.attention"] = _count(generator.attention)
    counts["generator.total"] = _count(generator)
    counts["discriminator.global"] = _count(discriminator.global_d)
    for name in REGIONS:
        ds = discriminator.local_d
        counts[f"discriminator.local.{name}"] = _count(ds[name]) if ds is not None else 0
    counts["discriminator.total"] = _count(discriminator)
    return counts


def main() -> None:
    """Print parameters per part at the default widths and the output shapes for one 112×112 face."""
    torch.manual_seed(0)
    generator, discriminator = MRGANGenerator().eval(), MRGANDiscriminator().eval()
    for part, n in parameter_counts(generator, discriminator).items():
        print(f"{part:28s} {n:>12,d}")
    x = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        out = generator(x)
        logits = discriminator(out["image"])
    print("generator:", {k: tuple(v.shape) for k, v in out.items() if v is not None},
          f"r = {generator.lr_sizes[int(out['index'][0])]}")
    print("discriminator:", {k: tuple(v.shape) for k, v in logits.items()})


if __name__ == "__main__":
    main()
