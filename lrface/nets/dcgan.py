"""DCGAN generator (Radford et al., ICLR 2016) in the layout of the PyTorch DCGAN tutorial, behind the generator
protocol of PULSE's latent search (``lrface.pulse``): one latent row, no noise maps.

Checkpoint-compatible by names and shapes with ``gan_face_generate.models.Generator`` (``main.{i}.*``), whose
``gan_face_generate/weights.tar`` (the ``gan-face-generate==1.1.1`` wheel, ``netG_state_dict``) is a real pretrained
64×64 face generator, nz = 100, ngf = 64, trained by Chien Liu on Microsoft's DigiFace-1M. The package code is MIT,
but DigiFace-1M is licensed for non-commercial research only, so the weights are usable for research only.
:func:`lrface.generators.load_generator` loads it (``load_generator("gan-face-generate")`` finds the installed file).

How the DCGAN meets PULSE's protocol. PULSE searches a "Gaussianised" variable: ``w = lrelu(latent·std + mean, 0.2)``
with (mean, std) the statistics of ``lrelu(mapping(z), 5)``. A DCGAN has no mapping network, so :meth:`mapping` is
the parameter-free LeakyReLU(0.2) that this Gaussianisation inverts exactly: the fit comes out N(0, I) up to
sampling error, and the searched latent, kept on PULSE's sphere (its initial draw's norm, ≈ sqrt(nz)), *is* z
(:meth:`synthesis` undoes the LeakyReLU before the network). ``n_latent`` is 1 (GEOCROSS is then 0) and :meth:`noise_shapes` is empty. Output: B×3×64×64 in
[-1, 1], the StyleGAN generators' range.

Framing: DigiFace-1M is published ArcFace-aligned at 112 px and the package trains on it resized to 64, so the loader
gives this generator ``face_template = arcface_template(64)``. MTCNN landmarks of its samples agree to within a pixel
(``tests/test_dcgan.py``); FFHQ's template, the StyleGAN default, is 4-6 px off at the mouth.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DCGANGenerator"]

_INVERSE_SLOPE = 5.0  # PULSE's Gaussianisation slope; 1 / _MAPPING_SLOPE
_MAPPING_SLOPE = 0.2


class DCGANGenerator(nn.Module):
    """DCGAN generator: z (B×nz) → B×nc×R×R in [-1, 1] (tanh).

    ``main`` is ConvTranspose(nz → ngf·2^k, 4, 1, 0) + BN + ReLU at 4×4, then k blocks of
    ConvTranspose(4, 2, 1) + BN + ReLU halving the channels down to ngf, then ConvTranspose(ngf → nc, 4, 2, 1) + tanh;
    k = log2(R) − 3 (ngf·8 at 4×4 for R = 64). Convolutions have no bias; BatchNorm runs on its stored statistics in
    eval mode, as the package samples.

    Args:
        nz: latent size (the protocol's ``style_dim``).
        ngf: feature maps of the last hidden layer.
        nc: output channels.
        resolution: output side, a power of two >= 8.
        face_template: 5×2 landmark pixels (x, y) of the output framing, or None (FFHQ's is then assumed by
            ``lrface.align.generator_template``).

    Attributes:
        n_latent: 1. style_dim: nz. resolution: R.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, resolution: int = 64,
                 face_template: Sequence[Sequence[float]] | torch.Tensor | None = None):
        super().__init__()
        depth = int(math.log2(resolution)) - 3 if resolution >= 8 else -1
        if depth < 0 or 2 ** (depth + 3) != resolution:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.nz, self.ngf, self.nc, self.resolution = int(nz), int(ngf), int(nc), int(resolution)
        self.n_latent, self.style_dim = 1, self.nz
        channels = ngf * 2 ** depth
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, channels, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU(True)]
        for _ in range(depth):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(channels // 2), nn.ReLU(True)]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.face_template = None
        if face_template is not None:
            template = torch.as_tensor(face_template, dtype=torch.float32)
            if template.shape != (5, 2):
                raise ValueError(f"face_template must be 5×2 landmark pixels, got {tuple(template.shape)}")
            self.face_template = template

    @staticmethod
    def config_from_state_dict(state: dict[str, torch.Tensor]) -> dict[str, int]:
        """Constructor kwargs (nz, ngf, nc, resolution) read from a ``main.*`` state_dict's shapes.

        Raises:
            KeyError: not a DCGAN generator state_dict (no ``main.0.weight`` of shape nz×C×4×4).
        """
        convs = sorted(int(k.split(".")[1]) for k, v in state.items()
                       if k.startswith("main.") and k.endswith(".weight") and v.dim() == 4)
        if not convs or convs[0] != 0 or tuple(state["main.0.weight"].shape[2:]) != (4, 4):
            raise KeyError("not a DCGAN generator state_dict (expected main.0.weight of shape nz×C×4×4)")
        first, last = state["main.0.weight"], state[f"main.{convs[-1]}.weight"]
        return {"nz": first.shape[0], "ngf": last.shape[0], "nc": last.shape[1],
                "resolution": 4 * 2 ** (len(convs) - 1)}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z B×nz (or B×nz×1×1, the package's input) → B×nc×R×R in [-1, 1]."""
        if z.dim() == 2:
            z = z[:, :, None, None]
        if z.dim() != 4 or z.shape[1:] != (self.nz, 1, 1):
            raise ValueError(f"z must be B×{self.nz} or B×{self.nz}×1×1, got {tuple(z.shape)}")
        return self.main(z)

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z B×nz → LeakyReLU(z, 0.2) B×nz: no network, only the slope PULSE's Gaussian fit inverts."""
        return F.leaky_relu(z, _MAPPING_SLOPE)

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """No noise inputs."""
        return []

    def synthesis(self, w_plus: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Renders images from the protocol's latents.

        Args:
            w_plus: B×1×nz (or B×nz): ``mapping(z)``; z = LeakyReLU(w, 5) is fed to the network.
            noise: must be empty or None (the DCGAN has no noise inputs).

        Returns:
            B×nc×R×R in [-1, 1].
        """
        if w_plus.dim() == 3:
            if w_plus.shape[1] != 1:
                raise ValueError(f"w_plus must be B×1×{self.nz} (n_latent is 1), got {tuple(w_plus.shape)}")
            w_plus = w_plus[:, 0]
        if noise:
            raise ValueError(f"the DCGAN takes no noise maps, got {len(noise)}")
        return self(F.leaky_relu(w_plus, _INVERSE_SLOPE))
