"""MAD: the multi-attribute disentangling adversarial autoencoder of Browatzki & Wallraven, "Robust Discrimination and
Generation of Faces using Compact, Disentangled Embeddings" (ICCV Workshops 2019; seed 003, supplementary Tables 1–2;
methods.md §4, the authors' code browatbn2/MAD).

Six networks, all images B×3×S×S RGB in [-1, 1] (S = ``input_size``: 128 / 256 as the authors, 112 for our crops):

* Q — :class:`Encoder`: ResNet-18 → global average pool → Linear → z ∈ R^99 (B×3×S×S → B×99).
* P — :class:`Decoder`: the "inverse ResNet": Linear → s₀×s₀ seed → stride-2 ConvTranspose2d residual blocks → a
  stride-2 ConvTranspose2d to RGB → tanh (B×99 → B×3×S×S).
* D_z — :class:`LatentDiscriminator`: MLP on z; tells prior samples z ~ N(0, I) from encodings Q(x) (the adversarial
  autoencoder's L_enc).
* D — :class:`ImageDiscriminator`: DCGAN-style image critic (L_adv on P(Q(x)), L_gen on P(z)).
* E — :class:`Disentangler`: z → the four factors f = (pose 3-d, identity 32-d, style 32-d, expression 32-d); identity,
  style and expression are L2-normalised, pose is not.
* G — :class:`Reentangler`: the concatenated factors f ∈ R^99 → z ∈ R^99.

Factor layout (:data:`FACTORS`): f = [pose (0:3) | identity (3:35) | style (35:67) | expression (67:99)], the order of
the authors' ``factors = ['pose', 'id', 'shape', 'expression']``; "style" is the supplementary's name for what the code
calls "shape" (learned from VoxCeleb video ids). f_¬id, f_¬e, ... of the supplementary (Fig. 4–5, Table 2) are
:func:`complement`.

Where we follow the brief rather than the authors' code (all shapes unchanged, documented for comparison):

* P's seed is Linear(z → widths[0]·s₀²) reshaped to s₀×s₀ (+ BN + ReLU); the code uses Linear(99 → 512) and a 4×4
  ConvTranspose2d on the 1×1 map (4.2 M more parameters). Every later layer follows the code's ``InvResNet``: one
  ``InvBasicBlock`` per stage (``DECODER_PLANES_PER_BLOCK = 1``): ConvTranspose2d 4×4 s2 → BN → ReLU → conv3×3 → BN,
  plus a ConvTranspose2d 4×4 s2 + BN shortcut, then ReLU; the last doubling is the output ConvTranspose2d 4×4 s2 to 3
  channels, then tanh. At S = 128 the stages are 4 → 8 → 16 → 32 → 64 (blocks) → 128 (output layer), channels
  512 → 256 → 128 → 64 → 64 → 3, exactly the code's layout; at 256 a fifth 64-channel block is added (the code's
  ``layer5``).
* Sizes that are not 4·2^n: the seed side is s₀ = S / 2^n for the largest n with s₀ ≥ 4, so P never resizes or crops:
  112 = 7·2^4 → a 7×7 seed and 3 blocks + the output layer; 64 → 4×4 and 3 blocks; 128 → 4×4 and 4 blocks. S must be
  k·2^n with 4 ≤ k ≤ 8, n ≥ 1.
* D_z uses LeakyReLU(0.2) (the code: ReLU with dropout 0.2; ``dropout`` exposes it); D ends in global average pooling
  → Linear(C → 1) (the code: a 4×4 conv to 1 channel, then average pooling). Both return *logits* (the code applies a
  sigmoid; the losses use BCE with logits).
* E and G use LeakyReLU with PyTorch's default slope 0.01, as the code's ``nn.LeakyReLU(inplace=True)``.

Q keeps torchvision's ResNet-18 module names (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``), so an ImageNet
ResNet-18 state dict without ``fc`` loads into it (the code's ``pretrained_encoder`` option).

Run ``python -m lrface.nets.mad`` for the parameter count of each network at the authors' 128 px.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FACTORS",
    "NORMALISED_FACTORS",
    "Z_DIM",
    "Decoder",
    "Disentangler",
    "Encoder",
    "EncoderBlock",
    "ImageDiscriminator",
    "LatentDiscriminator",
    "MADNet",
    "Reentangler",
    "UpBlock",
    "complement",
    "decoder_seed",
    "main",
    "parameter_counts",
    "split",
]

#: Size of the autoencoder's latent code z and of the concatenated factor vector f (3 + 3·32).
Z_DIM = 99
#: Where each factor lives in f (B×99), in concatenation order: pose 3-d, identity / style / expression 32-d each.
FACTORS: dict[str, slice] = {
    "pose": slice(0, 3),
    "identity": slice(3, 35),
    "style": slice(35, 67),
    "expression": slice(67, 99),
}
#: Factors whose head output is L2-normalised (unit vectors for the triplet losses); pose is a raw regression target.
NORMALISED_FACTORS = ("identity", "style", "expression")


def _factor_dim(name: str) -> int:
    s = FACTORS[name]
    return s.stop - s.start


def _check_factor(factor: str) -> slice:
    if factor not in FACTORS:
        raise KeyError(f"unknown factor {factor!r}; expected one of {list(FACTORS)}")
    return FACTORS[factor]


def _check_f(f: torch.Tensor) -> None:
    if f.dim() != 2 or f.shape[1] != Z_DIM:
        raise ValueError(f"factor vector must be B×{Z_DIM}; got shape {tuple(f.shape)}")


def split(f: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cut a concatenated factor vector into its factors (views, no copy).

    Shapes:
        f: B×99 → {pose: B×3, identity: B×32, style: B×32, expression: B×32}.
    """
    _check_f(f)
    return {name: f[:, s] for name, s in FACTORS.items()}


def complement(f: torch.Tensor, factor: str) -> torch.Tensor:
    """f without ``factor``'s dims, the other factors in :data:`FACTORS` order (the supplementary's f_¬id, f_¬e, ...).

    Shapes:
        f: B×99 → B×(99 − dim(factor)), e.g. B×67 for "identity", B×96 for "pose".

    Raises:
        KeyError: unknown factor. ValueError: f not B×99.
    """
    s = _check_factor(factor)
    _check_f(f)
    return torch.cat([f[:, : s.start], f[:, s.stop :]], dim=1)


# -- Q: ResNet-18 encoder ------------------------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: conv3×3(stride) → BN → ReLU → conv3×3 → BN, + shortcut, → ReLU.

    Args:
        inplanes: input channels C_in.
        planes: output channels C.
        stride: stride of ``conv1``; a 1×1 conv(stride) + BN shortcut (``downsample``) is built when the shape changes.

    Shapes:
        x: B×C_in×H×W → B×C×⌈H/stride⌉×⌈W/stride⌉.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Encoder(nn.Module):
    """Q: ResNet-18 (BasicBlocks [2, 2, 2, 2]) → global average pool → Linear → z.

    Stem conv7×7 s2 + BN + ReLU + maxpool3×3 s2, then four stages (the first at stride 1, the others at stride 2), as
    torchvision's ``resnet18``. Global average pooling makes it valid for any S ≥ 32.

    Args:
        input_size: S, checked against the input (the network itself is size-agnostic).
        widths: channels of the four stages; the stem has ``widths[0]``. (64, 128, 256, 512) is ResNet-18.
        z_dim: size of z (99).

    Shapes:
        x: B×3×S×S (RGB in [-1, 1]) → z: B×z_dim.
    """

    def __init__(self, input_size: int = 128, widths: Sequence[int] = (64, 128, 256, 512), z_dim: int = Z_DIM) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"Encoder needs 4 stage widths; got {tuple(widths)}")
        if input_size < 32:
            raise ValueError(f"Encoder input_size must be at least 32 (five stride-2 steps); got {input_size}")
        self.input_size = input_size
        self.widths = tuple(int(w) for w in widths)
        self.z_dim = z_dim
        self.conv1 = nn.Conv2d(3, self.widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = self.widths[0]
        for i, planes in enumerate(self.widths):
            stride = 1 if i == 0 else 2
            stage = nn.Sequential(EncoderBlock(inplanes, planes, stride), EncoderBlock(planes, planes))
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.widths[-1], z_dim)
        for m in self.modules():
            # torchvision's ResNet initialisation.
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"Encoder expects B×3×{self.input_size}×{self.input_size}; got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -- P: inverse-ResNet decoder -------------------------------------------------------------------------------------


def decoder_seed(input_size: int) -> tuple[int, int]:
    """(seed side s₀, number of doublings n) with s₀·2^n = S, n as large as possible while s₀ ≥ 4.

    Examples: 128 → (4, 5), 256 → (4, 6), 112 → (7, 4), 64 → (4, 4), 96 → (6, 4).

    Raises:
        ValueError: S is not k·2^n with 4 ≤ k ≤ 8 and n ≥ 1 (no resizing or cropping is done).
    """
    side, n = int(input_size), 0
    while side % 2 == 0 and side // 2 >= 4:
        side, n = side // 2, n + 1
    if n < 1 or side > 8:
        raise ValueError(f"Decoder input_size must be k·2^n with 4 ≤ k ≤ 8, n ≥ 1 (e.g. 64, 112, 128, 256); "
                         f"got {input_size}")
    return side, n


class UpBlock(nn.Module):
    """The code's ``InvBasicBlock`` with upsampling: ConvTranspose2d 4×4 s2 → BN → ReLU → conv3×3 → BN, plus a
    ConvTranspose2d 4×4 s2 + BN shortcut, → ReLU.

    Args:
        inplanes: input channels C_in.
        planes: output channels C.

    Shapes:
        x: B×C_in×H×W → B×C×2H×2W.
    """

    def __init__(self, inplanes: int, planes: int) -> None:
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(inplanes, planes, 4, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(inplanes, planes, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(planes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.upsample(x))


class Decoder(nn.Module):
    """P: the "inverse ResNet" (see the module docstring for the layout and where it departs from the code).

    Linear(z → widths[0]·s₀²) → B×widths[0]×s₀×s₀ → BN → ReLU → n − 1 :class:`UpBlock` (block i outputs
    ``widths[min(i + 1, len(widths) − 1)]`` channels) → ConvTranspose2d 4×4 s2 → 3 channels → tanh, with
    (s₀, n) = :func:`decoder_seed` (S).

    Args:
        input_size: output side S (k·2^n, 4 ≤ k ≤ 8).
        widths: seed channels, then the channels of the following blocks; the last repeats when more blocks are needed.
        z_dim: size of z (99).

    Shapes:
        z: B×z_dim → x̂: B×3×S×S in (-1, 1).
    """

    def __init__(self, input_size: int = 128, widths: Sequence[int] = (512, 256, 128, 64), z_dim: int = Z_DIM) -> None:
        super().__init__()
        if len(widths) < 1:
            raise ValueError("Decoder needs at least one width")
        self.input_size = input_size
        self.widths = tuple(int(w) for w in widths)
        self.z_dim = z_dim
        self.seed_size, self.num_doublings = decoder_seed(input_size)
        self.fc = nn.Linear(z_dim, self.widths[0] * self.seed_size**2)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        self.relu = nn.ReLU(inplace=True)
        blocks, inplanes = [], self.widths[0]
        for i in range(self.num_doublings - 1):
            planes = self.widths[min(i + 1, len(self.widths) - 1)]
            blocks.append(UpBlock(inplanes, planes))
            inplanes = planes
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = nn.ConvTranspose2d(inplanes, 3, 4, stride=2, padding=1, bias=False)
        self.tanh = nn.Tanh()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"Decoder expects B×{self.z_dim}; got {tuple(z.shape)}")
        x = self.fc(z).view(z.shape[0], self.widths[0], self.seed_size, self.seed_size)
        x = self.blocks(self.relu(self.bn1(x)))
        return self.tanh(self.to_rgb(x))


# -- discriminators ------------------------------------------------------------------------------------------------


class LatentDiscriminator(nn.Module):
    """D_z: MLP z_dim → hidden → hidden → 1 (LeakyReLU 0.2) telling prior samples from encodings.

    Args:
        z_dim: size of z (99).
        hidden: width of the two hidden layers (1000).
        dropout: dropout after each hidden linear layer while training (the code uses 0.2; 0 here by default).

    Shapes:
        z: B×z_dim → logits: B (no sigmoid).
    """

    def __init__(self, z_dim: int = Z_DIM, hidden: int = 1000, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden),
            nn.Dropout(dropout),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, hidden),
            nn.Dropout(dropout),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


class ImageDiscriminator(nn.Module):
    """D: DCGAN-style critic: ``n_layers`` × (conv4×4 s2 → [BN] → LeakyReLU 0.2) → global average pool → Linear → 1.

    Layer i has min(ndf·2^i, 8·ndf) channels; the first layer has no BN (DCGAN). At the defaults the channels are
    32, 64, 128, 256, 256 and a 128 input ends at 4×4.

    Args:
        input_size: S; must be at least 2^n_layers.
        ndf: channels of the first layer (32).
        n_layers: number of stride-2 convolutions (5).

    Shapes:
        x: B×3×S×S (RGB in [-1, 1]) → logits: B (no sigmoid).
    """

    def __init__(self, input_size: int = 128, ndf: int = 32, n_layers: int = 5) -> None:
        super().__init__()
        if n_layers < 1 or input_size < 2**n_layers:
            raise ValueError(f"ImageDiscriminator needs n_layers ≥ 1 and input_size ≥ 2^n_layers; "
                             f"got input_size={input_size}, n_layers={n_layers}")
        self.input_size = input_size
        layers, cin = [], 3
        for i in range(n_layers):
            cout = min(ndf * 2**i, 8 * ndf)
            layers.append(nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1)).squeeze(1)


# -- E and G: disentangling the latent code ------------------------------------------------------------------------


class Disentangler(nn.Module):
    """E: Linear(z_dim → hidden) + LeakyReLU, then one linear head per factor of :data:`FACTORS`.

    Identity, style and expression are L2-normalised (``F.normalize``); pose is not.

    Args:
        z_dim: size of z (99).
        hidden: width of the shared layer (1000).

    Shapes:
        z: B×z_dim → {pose: B×3, identity: B×32, style: B×32, expression: B×32}.
    """

    def __init__(self, z_dim: int = Z_DIM, hidden: int = 1000) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(z_dim, hidden), nn.LeakyReLU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, _factor_dim(name)) for name in FACTORS})

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(z)
        out = {}
        for name, head in self.heads.items():
            v = head(h)
            out[name] = F.normalize(v, dim=1) if name in NORMALISED_FACTORS else v
        return out

    @staticmethod
    def concat(factors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the factors in :data:`FACTORS` order.

        Shapes:
            {pose: B×3, identity: B×32, style: B×32, expression: B×32} → f: B×99.

        Raises:
            KeyError: a factor is missing. ValueError: a factor has the wrong size.
        """
        parts = []
        for name in FACTORS:
            if name not in factors:
                raise KeyError(f"missing factor {name!r}; expected {list(FACTORS)}")
            v = factors[name]
            if v.dim() != 2 or v.shape[1] != _factor_dim(name):
                raise ValueError(f"factor {name!r} must be B×{_factor_dim(name)}; got {tuple(v.shape)}")
            parts.append(v)
        return torch.cat(parts, dim=1)


class Reentangler(nn.Module):
    """G: MLP 99 → hidden (LeakyReLU) → z_dim, mapping the concatenated factors back to a latent code.

    Args:
        z_dim: size of z (99).
        hidden: width of the hidden layer (1000).

    Shapes:
        f: B×99 (:data:`FACTORS` order) → z: B×z_dim.
    """

    def __init__(self, z_dim: int = Z_DIM, hidden: int = 1000) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z_DIM, hidden), nn.LeakyReLU(inplace=True), nn.Linear(hidden, z_dim))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        _check_f(f)
        return self.net(f)


# -- container -----------------------------------------------------------------------------------------------------


class MADNet(nn.Module):
    """Holds the six networks; training logic lives in the Lightning module.

    Attributes: ``encoder`` (Q), ``decoder`` (P), ``z_discriminator`` (D_z), ``discriminator`` (D), ``disentangler``
    (E), ``reentangler`` (G).

    Args:
        input_size: image side S (128 / 256 as the authors, 112 for our crops).
        encoder_widths: :class:`Encoder` stage widths.
        decoder_widths: :class:`Decoder` widths.
        hidden: width of D_z, E and G (1000).
        ndf: first-layer channels of D (32).
    """

    def __init__(
        self,
        input_size: int = 128,
        encoder_widths: Sequence[int] = (64, 128, 256, 512),
        decoder_widths: Sequence[int] = (512, 256, 128, 64),
        hidden: int = 1000,
        ndf: int = 32,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.encoder = Encoder(input_size, encoder_widths, Z_DIM)
        self.decoder = Decoder(input_size, decoder_widths, Z_DIM)
        self.z_discriminator = LatentDiscriminator(Z_DIM, hidden)
        self.discriminator = ImageDiscriminator(input_size, ndf)
        self.disentangler = Disentangler(Z_DIM, hidden)
        self.reentangler = Reentangler(Z_DIM, hidden)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Q(x). Shapes: B×3×S×S → B×99."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """P(z). Shapes: B×99 → B×3×S×S."""
        return self.decoder(z)

    def factors(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """E(z). Shapes: B×99 → {pose: B×3, identity / style / expression: B×32}."""
        return self.disentangler(z)

    def reentangle(self, factors: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """G(f) from a factor dict or an already concatenated B×99 vector. Shapes: → B×99."""
        f = factors if isinstance(factors, torch.Tensor) else Disentangler.concat(factors)
        return self.reentangler(f)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(net: MADNet) -> dict[str, int]:
    """Parameters of Q, P, D_z, D, E, G and the total, keyed by the paper's letters."""
    counts = {
        "Q (encoder)": _count(net.encoder),
        "P (decoder)": _count(net.decoder),
        "D_z (z discriminator)": _count(net.z_discriminator),
        "D (image discriminator)": _count(net.discriminator),
        "E (disentangler)": _count(net.disentangler),
        "G (reentangler)": _count(net.reentangler),
    }
    counts["total"] = _count(net)
    return counts


def main() -> None:
    """Print parameters per network at the authors' 128 px and the shapes of one forward pass."""
    torch.manual_seed(0)
    net = MADNet(128).eval()
    print("MAD networks at 128 px (authors' widths)")
    for name, n in parameter_counts(net).items():
        print(f"{name:26s} {n:>12,d}")
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        z = net.encode(x)
        f = net.factors(z)
        print("Q(x):", tuple(z.shape), " P(z):", tuple(net.decode(z).shape),
              " E(z):", {k: tuple(v.shape) for k, v in f.items()}, " G(f):", tuple(net.reentangle(f).shape),
              " D:", tuple(net.discriminator(x).shape), " D_z:", tuple(net.z_discriminator(z).shape))


if __name__ == "__main__":
    main()
