"""MAD training (seed 003, supplementary Tables 1–2): disentanglement labels, phase isolation (frozen networks stay
bit-identical), learning, ``init`` from a checkpoint, every ablation switch, validation RMSE and grid."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from lrface.config import compose, instantiate
from lrface.labels import CELEBA_ATTRIBUTES
from lrface.mad_labels import mad_labels, pose_labels, style_labels
from tests.conftest import smoke_overrides

NETS = ("encoder", "decoder", "discriminator", "z_discriminator", "disentangler", "reentangler")


def _setup(tiny_world: Path, tmp_path: Path, extra: list[str] = ()):
    cfg = compose("mad_phase_synthetic", smoke_overrides("mad_phase_synthetic", tiny_world, tmp_path) + list(extra))
    return instantiate(cfg.module), instantiate(cfg.data)


def _trainer(root: Path, batches: int, module, callbacks=(), **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_steps=batches * module.steps_per_batch, limit_val_batches=0,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=root, callbacks=list(callbacks), **kw)


def _net_state(module) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in getattr(module.net, name).state_dict().items()} for name in NETS}


def _unchanged(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[k], after[k]) for k in before)


# -- labels --------------------------------------------------------------------------------------------------------


def _attributes(*on: str) -> torch.Tensor:
    row = torch.zeros(len(CELEBA_ATTRIBUTES))
    for name in on:
        row[CELEBA_ATTRIBUTES.index(name)] = 1.0
    return row


def test_labels_by_hand():
    landmarks = torch.tensor([
        # eyes (10, 20) (30, 20), nose (24, 30), mouth corners at y 40: yaw 4/20, pitch 10/20 − 0.5, roll 0
        [[10.0, 20.0], [30.0, 20.0], [24.0, 30.0], [12.0, 40.0], [28.0, 40.0]],
        # eyes (0, 0) (10, 10): eye mid (5, 5), interocular √200; nose (5, 12); mouth mid y 20
        [[0.0, 0.0], [10.0, 10.0], [5.0, 12.0], [2.0, 20.0], [8.0, 20.0]],
    ])
    attributes = torch.stack([_attributes("Smiling", "Male", "Blond_Hair"),
                              _attributes("Mouth_Slightly_Open", "Eyeglasses", "Black_Hair", "Smiling")])
    labels = mad_labels({"identity": torch.tensor([7, 3]), "attributes": attributes, "landmarks": landmarks})
    torch.testing.assert_close(labels["pose"], torch.tensor([[0.2, 0.0, 0.0],
                                                              [0.0, 7 / 15 - 0.5, math.pi / 4]]))
    assert labels["expression"].tolist() == [2, 3]
    assert labels["style"].tolist() == [1 + 8, 2 + 16]           # bits: Male 1, Eyeglasses 2, Hat 4, Blond 8, Black 16
    assert labels["identity"].tolist() == [7, 3] and labels["identity"].dtype == torch.int64
    # the release files' ±1 coding gives the same classes; a custom style list re-packs
    assert mad_labels({"attributes": attributes * 2 - 1})["expression"].tolist() == [2, 3]
    assert style_labels(attributes, ["Smiling", "Black_Hair"]).tolist() == [1, 3]
    with pytest.raises(KeyError, match="unknown CelebA attribute"):
        style_labels(attributes, ["Smiling", "Moustache"])
    # fields the batch lacks → None
    only_id = mad_labels({"identity": torch.tensor([1, 2])})
    assert only_id["pose"] is None and only_id["style"] is None and only_id["expression"] is None
    # the ArcFace template is (almost) frontal, and a similarity (scale, shift) leaves the proxies unchanged
    from lrface.align import arcface_template_np

    template = torch.from_numpy(arcface_template_np(112)).float()[None]
    pose = pose_labels(template)[0]
    assert abs(pose[0]) < 0.01 and abs(pose[1]) < 0.01 and abs(pose[2]) < 0.01
    torch.testing.assert_close(pose_labels(template * 0.5 + 3.0), pose_labels(template))


# -- phases --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase, frozen", [
    ("disent", {"encoder", "decoder", "discriminator", "z_discriminator"}),
    ("ae", {"disentangler", "reentangler"}),
    ("joint", set()),
])
def test_phase_updates_exactly_its_networks(phase, frozen, tiny_world, tmp_path):
    module, data = _setup(tiny_world, tmp_path, [f"module.phase={phase}", "module.lr_ae=1e-3",
                                                 "module.lr_disent=1e-3"])
    before = _net_state(module)
    module.train()                                         # as Lightning may call it: frozen Q / P stay in eval mode
    assert module.net.encoder.training == module.net.decoder.training == (phase != "disent")
    _trainer(tmp_path, 3, module).fit(module, datamodule=data)
    after = _net_state(module)
    # state_dicts include BatchNorm running statistics: frozen Q / P must also stay in eval mode
    unchanged = {name for name in NETS if _unchanged(before[name], after[name])}
    assert unchanged == frozen
    assert module.global_step == 3 * {"ae": 2, "disent": 1, "joint": 3}[phase]


def test_ae_reconstruction_l1_falls(tiny_world, tmp_path):
    """Table 1 row A (adversarial autoencoder: L_rec + L_enc, D_z steps) learns to reconstruct. SSIM is off: on
    8-image batches of 32 px faces its 7-px windows are noise, and the run is 50 batches."""
    torch.manual_seed(0)
    module, data = _setup(tiny_world, tmp_path, ["module.phase=ae", "module.lr_ae=2e-3", "module.w_ssim=0",
                                                 "module.w_adv=0", "module.w_gen=0",
                                                 "data.identity_batches=null"])  # as mad_synthetic's ae steps
    l1: list[float] = []

    class Trace(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            l1.append(float(trainer.callback_metrics["train/l1_step"]))

    _trainer(tmp_path, 50, module, [Trace()]).fit(module, datamodule=data)
    first, last = float(np.mean(l1[:5])), float(np.mean(l1[-5:]))
    assert len(l1) == 50 and last < 0.8 * first, (first, last)


# -- init and checkpoints ------------------------------------------------------------------------------------------


def test_init_loads_a_previous_phase(tiny_world, tmp_path):
    module, data = _setup(tiny_world, tmp_path, ["module.lr_ae=1e-3"])
    trainer = _trainer(tmp_path, 2, module)
    trainer.fit(module, datamodule=data)
    ckpt = tmp_path / "ae.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(k.startswith("net.") for k in state)

    fresh, _ = _setup(tiny_world, tmp_path, ["module.phase=disent"])
    assert not all(_unchanged(a, b) for a, b in zip(_net_state(fresh).values(), _net_state(module).values()))
    loaded, _ = _setup(tiny_world, tmp_path, ["module.phase=disent", f"module.init={ckpt}"])
    for name, values in _net_state(module).items():
        assert _unchanged(values, _net_state(loaded)[name]), name

    torch.save({"state_dict": {"backbone.w": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="without net"):
        _setup(tiny_world, tmp_path, [f"module.init={tmp_path / 'other.ckpt'}"])
    with pytest.raises(RuntimeError):                          # strict: other widths do not load
        _setup(tiny_world, tmp_path, [f"module.init={ckpt}", "module.net.hidden=16"])


# -- ablation switches ---------------------------------------------------------------------------------------------


def _logged_terms(tiny_world: Path, tmp_path: Path, extra: list[str]) -> set[str]:
    module, data = _setup(tiny_world, tmp_path, ["module.phase=joint", *extra])
    trainer = _trainer(tmp_path, 1, module)
    trainer.fit(module, datamodule=data)
    return {k.removesuffix("_step").removesuffix("_epoch") for k in trainer.callback_metrics if k.startswith("train/")}


def test_every_switch_removes_its_term(tiny_world, tmp_path):
    full = _logged_terms(tiny_world, tmp_path, [])
    factors = {f"train/L_f_{n}" for n in ("pose", "identity", "style", "expression")}
    assert {"train/L_rec", "train/L_enc", "train/L_adv", "train/L_gen", "train/d_loss", "train/d_z_loss",
            "train/L_f", "train/L_rec_phi", "train/L_cyc_phi", "train/L_aug_phi", "train/l1"} | factors <= full
    switches = {
        # Table 2 columns
        "w_feat": {"train/L_f"} | factors,
        "w_z_recon": {"train/L_rec_phi"},
        "w_cycle": {"train/L_cyc_phi"},
        "w_aug": {"train/L_aug_phi"},
        # Table 1 columns (L_enc also takes D_z's step away)
        "w_enc": {"train/L_enc", "train/d_z_loss"},
        "w_adv": {"train/L_adv"},
        "w_gen": {"train/L_gen"},
    }
    for weight, terms in switches.items():
        assert full - _logged_terms(tiny_world, tmp_path, [f"module.{weight}=0"]) == terms, weight
    # Table 2 row D: identity only
    only_id = _logged_terms(tiny_world, tmp_path,
                            ["module.feature_weights={pose: 0, identity: 1, style: 0, expression: 0}"])
    assert full - only_id == factors - {"train/L_f_identity"}


# -- validation ----------------------------------------------------------------------------------------------------


def test_validation_rmse_and_grid(tiny_world, tmp_path):
    module, data = _setup(tiny_world, tmp_path)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    (metrics,) = trainer.validate(module, datamodule=data)
    module.eval()
    rmse = []
    with torch.no_grad():
        for batch in data.val_dataloader():
            x = batch["image"]
            x_hat = (module.net.decode(module.net.encode(x * 2 - 1)) + 1) / 2
            rmse += [math.sqrt(((a.clamp(0, 1) - b) * 255).pow(2).mean().item()) for a, b in zip(x_hat, x)]
    assert metrics["val/rmse"] == pytest.approx(float(np.mean(rmse)), rel=1e-4)
    assert 10 < metrics["val/rmse"] < 255
    from PIL import Image

    (png,) = (tmp_path / "samples").glob("step_*.png")
    # 3 rows (inputs | reconstructions | P(z)) of n_samples = 4 faces at 32 px with 2 px gaps
    assert Image.open(png).size == (4 * 34 + 2, 3 * 34 + 2)


def test_cycle_passes_leave_running_statistics_alone():
    """The cycle / augmentation passes normalise with their own batch statistics but never update Q's and P's
    running statistics (they describe real faces); outside the context BatchNorm updates as usual."""
    from lightning_modules.disentangled_ae import running_stats_frozen

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    bn = net[1]
    x = torch.randn(8, 3, 6, 6) * 3 + 1
    mean, var, tracked = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    with running_stats_frozen(net):
        y = net(x)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, tracked) and bn.momentum == 0.1
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)  # batch statistics used
    net(x)
    assert not torch.equal(bn.running_mean, mean)
