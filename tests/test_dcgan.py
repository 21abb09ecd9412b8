"""The real pretrained DCGAN of ``gan-face-generate`` (DigiFace-1M, 64×64) behind PULSE's generator protocol:
checkpoint compatibility with the package's own ``Generator``, the protocol (one latent row, no mapping, no noise),
its framing, PULSE's search on a real photo's thumbnail, and the errors on bad files.

Needs ``gan-face-generate`` (installed ``--no-deps`` by ``make setup``); the framing and search tests also need
``weights/mtcnn`` and ``data/real_photos`` (``make setup``).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "data" / "real_photos"
MTCNN_WEIGHTS = ROOT / "weights" / "mtcnn"
# Sum of the package's own Generator output (gan_face_generate.models.Generator + weights.tar, eval mode) for
# z = torch.randn(8, 100, generator=torch.Generator().manual_seed(0)): recorded once from a run of the package's model.
PACKAGE_OUTPUT_SUM = -24708.316

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gan_face_generate") is None,
                                reason="gan-face-generate is not installed: pip install --no-deps "
                                       "'gan-face-generate==1.1.1' (make setup does it)")
needs_photos = pytest.mark.skipif(not (PHOTOS / "obama.jpg").is_file() or not (MTCNN_WEIGHTS / "onet.pt").is_file(),
                                  reason="needs data/real_photos and weights/mtcnn: run `make setup`")


@pytest.fixture(scope="module")
def dcgan():
    from lrface.weights import load_generator

    return load_generator("gan-face-generate")


def _z(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 100, generator=torch.Generator().manual_seed(seed))


def test_loads_strict_and_reproduces_the_package_generator(dcgan) -> None:
    from lrface.nets.dcgan import DCGANGenerator
    from lrface.weights import resolve_generator_path

    state = torch.load(resolve_generator_path("gan-face-generate"), map_location="cpu",
                       weights_only=True)["netG_state_dict"]
    assert isinstance(dcgan, DCGANGenerator)
    ours = dcgan.state_dict()
    assert list(ours) == list(state) and all(ours[k].shape == v.shape for k, v in state.items())
    assert (dcgan.nz, dcgan.ngf, dcgan.resolution) == (100, 64, 64) and not dcgan.training
    z = _z(8)
    with torch.no_grad():
        out = dcgan(z)
    assert abs(out.double().sum().item() - PACKAGE_OUTPUT_SUM) < 0.05
    # the package's model itself: its models.py imports only torch (its other modules pull wandb / matplotlib)
    from gan_face_generate.models import Generator

    ref = Generator(0, 3, 100, 64)
    ref.load_state_dict(state)
    with torch.no_grad():
        expected = ref.eval()(z[:, :, None, None])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_pulse_protocol_one_latent_no_mapping_no_noise(dcgan) -> None:
    from lrface.align import generator_resolution
    from lrface.pulse import gaussian_fit, latent_to_w_plus

    assert (dcgan.n_latent, dcgan.style_dim, dcgan.noise_shapes(), generator_resolution(dcgan)) == (1, 100, [], 64)
    fit = gaussian_fit(dcgan, n_samples=20_000, batch=5_000)
    # the "mapping" is the slope PULSE's Gaussianisation inverts: the fit is N(0, I) up to sampling error
    assert fit["mean"].abs().max() < 0.05 and (fit["std"] - 1).abs().max() < 0.05
    latent = _z(4, seed=1)[:, None]
    w_plus = latent_to_w_plus(latent, torch.zeros(100), torch.ones(100), dcgan.n_latent)
    with torch.no_grad():
        images = dcgan.synthesis(w_plus, noise=[])
        direct = dcgan(latent[:, 0])
    torch.testing.assert_close(images, direct, rtol=0, atol=1e-5)  # the searched latent is z itself
    assert images.shape == (4, 3, 64, 64) and images.min() >= -1 and images.max() <= 1
    with torch.no_grad():
        many = (dcgan(_z(64, seed=2)) + 1) / 2
    r, g, b = many[:, :, 24:40, 24:40].mean((2, 3)).unbind(1)
    # faces: a skin-coloured centre, R > G > B (measured: R/G 1.45 on average, R > G > B in 88% of samples)
    assert (r / g).mean() > 1.3 and ((r > g) & (g > b)).float().mean() > 0.75, (r / g, g / b)
    with pytest.raises(ValueError, match="n_latent is 1"):
        dcgan.synthesis(torch.zeros(1, 2, 100))


@needs_photos
def test_face_template_matches_mtcnn_on_samples(dcgan) -> None:
    from lrface.align import ffhq_template, generator_template
    from lrface.nets.mtcnn import MTCNN

    mtcnn = MTCNN(MTCNN_WEIGHTS)
    with torch.no_grad():
        big = torch.nn.functional.interpolate(dcgan(_z(40, seed=3)), scale_factor=4, mode="bicubic",
                                              align_corners=False)
    images = ((big + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    points = []
    for image in images:
        _, probs, landmarks = mtcnn.detect(image)
        if len(probs):
            points.append(np.asarray(landmarks[int(np.argmax(probs))]) / 4)
    assert len(points) >= 30
    mean = torch.tensor(np.mean(points, 0), dtype=torch.float32)
    ours = (mean - generator_template(dcgan)).norm(dim=1)
    ffhq = (mean - ffhq_template(64)).norm(dim=1)
    assert ours.max() < 1.5 and ffhq.max() > 4, (ours, ffhq)


@needs_photos
def test_pulse_search_matches_a_real_thumbnail() -> None:
    """Obama's photo → MTCNN → 8×8 thumbnail in the DCGAN's framing; 200 PULSE steps cut the downscaling MSE
    ≥ 10× (measured: 0.087 → 0.0027, ×32) with the latent kept on its sphere."""
    from datamodules.thumbnails import FolderThumbnails
    from lrface.pulse import PulseSearch, gaussian_fit
    from lrface.weights import load_generator

    dcgan = load_generator("gan-face-generate")
    item = FolderThumbnails(PHOTOS / "obama.jpg", 8, 64, str(MTCNN_WEIGHTS), template="arcface")[0]
    assert item["detected"]
    fit = gaussian_fit(dcgan, n_samples=20_000, batch=5_000)
    norms, mse = [], []

    def on_step(step, state):
        mse.append(float(state["mse"][0]))
        norms.append(float(state["latent"][0, 0].norm()))

    out = PulseSearch(dcgan, fit, steps=200, eps=0.0).search(item["image"][None], seeds=[0], on_step=on_step)
    final = float(out["downscale_loss"][0])
    assert mse[0] > 0.03 and final < mse[0] / 10, (mse[0], final)
    assert out["images"].shape == (1, 3, 64, 64)
    assert max(norms) - min(norms) < 1e-3 and abs(norms[0] - 10) < 2  # on the sphere of radius ~sqrt(100)


def test_bad_files_raise_clear_errors(tmp_path: Path, monkeypatch) -> None:
    from lrface import weights
    from lrface.weights import load_generator

    wrong_kernel = tmp_path / "wrong_kernel.tar"
    torch.save({"netG_state_dict": {"main.0.weight": torch.zeros(100, 512, 3, 3)}}, wrong_kernel)
    with pytest.raises(ValueError, match=r"wrong_kernel\.tar.*not a DCGAN generator state_dict"):
        load_generator(wrong_kernel)
    from lrface.nets.dcgan import DCGANGenerator

    state = DCGANGenerator(nz=8, ngf=4, resolution=16).state_dict()
    state["main.3.weight"] = torch.zeros(32, 7, 4, 4)
    truncated = tmp_path / "truncated.tar"
    torch.save({"netG_state_dict": state}, truncated)
    with pytest.raises(ValueError, match=r"truncated\.tar.*does not fit DCGANGenerator"):
        load_generator(truncated)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match=r"other\.pt.*'g_ema' or a DCGAN checkpoint with 'netG_state_dict'"):
        load_generator(other)
    monkeypatch.setitem(weights.PACKAGED_GENERATORS, "no-such-gan", ("no_such_gan_pkg", "w.tar", "pip install x"))
    with pytest.raises(ImportError, match="pip install x"):
        load_generator("no-such-gan")
    with pytest.raises(ValueError, match="data.template"):
        from datamodules.thumbnails import ThumbnailDataModule

        ThumbnailDataModule(template="celeba")
