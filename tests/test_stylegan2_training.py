"""StyleGAN2 training: the discriminator's rosinality layout, the GAN losses on hand-computable cases, the Fréchet
distance, learning on the tiny world, the export that load_generator reads, and 2-process DDP on CPU."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightning_modules.stylegan2 import StyleGAN2Module
from lrface.losses.gan import (
    d_logistic_loss,
    d_r1_penalty,
    g_nonsaturating_loss,
    lazy_regularization,
    path_length_penalty,
)
from lrface.metrics.frechet import frechet_distance, gaussian_stats, pixel_features
from lrface.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator, default_channels
from lrface.weights import load_generator

TINY = {4: 32, 8: 32, 16: 16}


def test_discriminator_keys_follow_rosinality() -> None:
    d = StyleGAN2Discriminator(256, channel_multiplier=2)
    sd = d.state_dict()
    # fromRGB (2) + 6 ResBlocks × 7 (conv1 w/b, conv2 blur kernel/w/b, skip blur kernel/w) + final conv (2) + linears (4)
    assert len(sd) == 2 + 6 * 7 + 2 + 4
    ch = default_channels(2)
    assert sd["convs.0.0.weight"].shape == (ch[256], 3, 1, 1)
    assert sd["convs.0.1.bias"].shape == (ch[256],)
    assert sd["convs.1.conv1.0.weight"].shape == (ch[256], ch[256], 3, 3)
    assert sd["convs.1.conv2.0.kernel"].shape == (4, 4)
    assert sd["convs.1.conv2.1.weight"].shape == (ch[128], ch[256], 3, 3)
    assert sd["convs.1.skip.1.weight"].shape == (ch[128], ch[256], 1, 1)
    assert "convs.1.skip.1.bias" not in sd and "convs.1.skip.2.bias" not in sd
    assert sd["final_conv.0.weight"].shape == (512, 513, 3, 3)
    assert sd["final_linear.0.weight"].shape == (512, 512 * 16)
    assert sd["final_linear.1.weight"].shape == (1, 512)
    assert all(re.fullmatch(r"(convs\.\d+\..*|final_conv\..*|final_linear\..*)", k) for k in sd)
    out = StyleGAN2Discriminator(16, channels=TINY)(torch.randn(6, 3, 16, 16))  # 6 is not a multiple of 4
    assert out.shape == (6, 1) and torch.isfinite(out).all()


def test_gan_losses_hand_values() -> None:
    real, fake = torch.tensor([[2.0], [0.0]]), torch.tensor([[-1.0], [1.0]])
    sp = F.softplus
    expected_d = (sp(torch.tensor(-2.0)) + sp(torch.tensor(0.0))) / 2 + (sp(torch.tensor(-1.0)) + sp(torch.tensor(1.0))) / 2
    assert d_logistic_loss(real, fake).item() == pytest.approx(expected_d.item(), rel=1e-6)
    assert g_nonsaturating_loss(fake).item() == pytest.approx(((sp(torch.tensor(1.0)) + sp(torch.tensor(-1.0))) / 2).item())
    # a linear D(x) = <a, x> has ∇_x D = a for every sample: the penalty is ‖a‖²
    a = torch.randn(3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    logits = (x * a).sum((1, 2, 3))[:, None]
    assert d_r1_penalty(logits, x).item() == pytest.approx(a.pow(2).sum().item(), rel=1e-5)
    lr, betas = lazy_regularization(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17) and betas[1] == pytest.approx(0.99 ** (16 / 17))


def test_path_length_of_a_linear_synthesis() -> None:
    """images = M·w (per row): the Jacobian norm is known, so the measured path length must match it."""
    torch.manual_seed(0)
    m = torch.randn(3 * 8 * 8, 6)
    w = torch.randn(512, 2, 6, requires_grad=True)
    images = (w.sum(1) @ m.T).view(-1, 3, 8, 8)
    _, lengths, mean = path_length_penalty(images, w, torch.zeros(()))
    # E‖J_wᵀ y‖² with y ~ N(0, I/64): per row, ‖Mᵀy‖² has mean tr(MᵀM)/64; summed over 2 rows, averaged → /1
    expected = math.sqrt(m.pow(2).sum().item() / 64)
    assert lengths.mean().item() == pytest.approx(expected, rel=0.05)
    assert mean.item() == pytest.approx(0.01 * lengths.mean().item(), rel=1e-5)


def test_frechet_distance_known_gaussians() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    mu = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    s1, s2 = torch.tensor([1.0, 4.0, 1.0, 9.0]), torch.tensor([4.0, 1.0, 1.0, 1.0])
    # diagonal covariances: FD = ‖μ1 − μ2‖² + Σ (σ1 − σ2)²
    exact = (mu.pow(2).sum() + (s1.sqrt() - s2.sqrt()).pow(2).sum()).item()
    stats1 = (torch.zeros(4, dtype=torch.float64), torch.diag(s1).double())
    stats2 = (mu, torch.diag(s2).double())
    assert frechet_distance(stats1, stats2) == pytest.approx(exact, rel=1e-9)
    b = torch.randn(20000, 4, generator=g, dtype=torch.float64) * s2.sqrt() + mu
    assert frechet_distance(a * s1.sqrt(), b) == pytest.approx(exact, rel=0.05)
    assert gaussian_stats(a)[1].shape == (4, 4)
    assert pixel_features(torch.rand(2, 3, 32, 32)).shape == (2, 192)


def _module(**kw) -> StyleGAN2Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        g = StyleGAN2Generator(16, style_dim=32, n_mlp=2, channels=TINY)
        d = StyleGAN2Discriminator(16, channels=TINY)
    args = dict(lr=0.005, r1=0.5, d_reg_every=4, path_regularize=1.0, g_reg_every=4, ema_half_life_kimg=0.2,
                n_samples=4, fd_samples=64)
    args.update(kw)
    return StyleGAN2Module(g, d, **args)


def _celeba(world: Path, batch_size: int = 8):
    from datamodules.celeba import CelebADataModule

    return CelebADataModule(str(world / "celeba"), batch_size=batch_size, image_size=16, align="ffhq",
                            train_transform={"flip": 0.5, "color": None, "blur": None, "jpeg": None,
                                             "coarse_dropout": None})


def _trainer(tmp_path: Path, steps: int, **kw) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, max_steps=steps, max_epochs=1000, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                limit_val_batches=0, default_root_dir=str(tmp_path))
    args.update(kw)
    return pl.Trainer(**args)


def test_training_moves_samples_towards_the_data(tiny_world: Path, tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm = _celeba(tiny_world)
    dm.setup("fit")
    real = torch.cat([pixel_features(dm.train_set[i]["image"][None], 4) for i in range(len(dm.train_set))])
    module = _module()

    def fd() -> float:
        z = torch.randn(256, 32, generator=torch.Generator().manual_seed(3))
        return frechet_distance(pixel_features(module.sample(z), 4), real)

    before = fd()
    _trainer(tmp_path, steps=2 * 150).fit(module, datamodule=dm)
    after = fd()
    assert module.global_step == 300  # one G and one D step per iteration, regularisers included
    assert after < 0.5 * before, (before, after)
    assert (tmp_path / "generator.pt").exists() and (tmp_path / "samples.png").stat().st_size > 100

    loaded = load_generator(tmp_path / "generator.pt")
    w = module.g_ema.mapping(torch.randn(3, 32))
    noise = [torch.randn(3, *s[1:]) for s in module.g_ema.noise_shapes()]
    assert torch.allclose(loaded.synthesis(w, noise), module.g_ema.synthesis(w, noise), atol=1e-6)
    assert loaded.face_template.shape == (5, 2)
    assert loaded.face_template[0, 0] < loaded.face_template[1, 0]  # left eye left of the right eye


def test_ema_and_mixing_rules() -> None:
    module = _module(mixing=1.0)
    w = module._w_plus(64)
    assert w.shape == (64, module.generator.n_latent, 32)
    # every sample switches from its first to its second w once, somewhere after row 0
    changes = (w[:, 1:] != w[:, :-1]).any(-1).sum(1)
    assert (changes == 1).all()
    single = _module(mixing=0.0)._w_plus(8)
    assert (single == single[:, :1]).all()


def _ddp_worker_checksums(module: StyleGAN2Module) -> torch.Tensor:
    return torch.stack([sum(p.double().sum() for p in m.parameters()) for m in
                        (module.generator, module.discriminator, module.g_ema)])


class _Checksum(pl.Callback):
    def on_train_end(self, trainer, module) -> None:
        sums = _ddp_worker_checksums(module)
        gathered = module.all_gather(sums)
        if trainer.is_global_zero:
            torch.save(gathered.cpu(), Path(trainer.default_root_dir) / "checksums.pt")


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_spawn_two_processes_keep_g_and_d_in_sync(tiny_world: Path, tmp_path: Path) -> None:
    module = _module()
    before = _ddp_worker_checksums(module)
    # the experiments' GPU strategy is ddp_find_unused_parameters_true; its spawn twin runs inside pytest
    trainer = _trainer(tmp_path, steps=2 * 6, devices=2, strategy="ddp_spawn_find_unused_parameters_true",
                       callbacks=[_Checksum()])
    trainer.fit(module, datamodule=_celeba(tiny_world, batch_size=4))
    sums = torch.load(tmp_path / "checksums.pt")
    assert sums.shape == (2, 3)
    assert torch.allclose(sums[0], sums[1], rtol=0, atol=1e-9)  # G, D and g_ema identical on both ranks
    assert not torch.allclose(sums[0, :2], before[:2].to(sums.dtype))  # and they trained
