"""RAN (seed 002): MR-GAN's and the feature adaption network's losses, schedules (Alg. 1–2), update isolation,
export, learning, and the pipeline report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lightning_modules.runner import run
from lrface.config import compose
from lrface.losses.feature_adaption import feature_distance
from lrface.losses.mrgan import (attention_activation_loss, d_adversarial_loss, g_adversarial_loss, identity_loss,
                                 pixel_loss, total_variation)
from lrface.nets.translation_gate import FeatureDiscriminator, TranslationGate
from tests.conftest import smoke_overrides


def only_run_dir(root: Path, name: str) -> Path:
    (run_dir,) = (root / name).iterdir()
    return run_dir


# -- losses on hand-computed cases -------------------------------------------------------------------------------


def test_adversarial_losses_by_hand():
    real, fake = torch.tensor([[1.0], [0.5]]), torch.tensor([[0.0], [1.0]])
    # lsgan: ½·mean((D(y)−1)²) + ½·mean(D(G(x))²) = ½·(0 + 0.25)/2 + ½·(0 + 1)/2
    assert d_adversarial_loss(real, fake).item() == pytest.approx(0.0625 + 0.25)
    assert g_adversarial_loss(fake).item() == pytest.approx(0.5 * (1 + 0) / 2)
    # vanilla: softplus(−1) and softplus(−0.5) for reals, softplus(0), softplus(1) for fakes
    sp = torch.nn.functional.softplus
    expected = (sp(torch.tensor(-1.0)) + sp(torch.tensor(-0.5))) / 2 + (sp(torch.tensor(0.0)) + sp(torch.tensor(1.0))) / 2
    assert d_adversarial_loss(real, fake, "vanilla").item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="unknown GAN loss"):
        g_adversarial_loss(fake, "wgan")


def test_identity_pixel_and_tv_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, -1.0]])
    assert identity_loss(a, b).item() == pytest.approx((0 + 1) / 2)        # cos 1 and cos 0
    assert pixel_loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)).item() == 1.0
    m = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    # |∂x|: rows (0→1), (1→1) → mean 0.5; |∂y|: cols (0→1), (1→1) → mean 0.5
    assert total_variation(m).item() == pytest.approx(1.0)


def test_attention_activation_loss_by_hand():
    attention = torch.tensor([[[[0.2, 0.8], [0.4, 1.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    inside = ((1 - 0.2) + (1 - 0.8)) / 2                                   # 0.5
    tv = ((0.6 + 0.6) / 2) + ((0.2 + 0.2) / 2)                             # |∂x| mean 0.6, |∂y| mean 0.2
    outside = (0.4 + 1.0) / 2
    got = attention_activation_loss(attention, mask, outside_weight=0.5, tv_weight=0.1)
    assert got.item() == pytest.approx(inside + 0.1 * tv + 0.5 * outside)
    # minimising it raises A on the facial regions
    logits = torch.zeros(1, 1, 8, 8, requires_grad=True)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:6] = 1
    opt = torch.optim.SGD([logits], lr=20.0)
    for _ in range(100):
        opt.zero_grad()
        attention_activation_loss(torch.sigmoid(logits), mask, outside_weight=1.0, tv_weight=0.0).backward()
        opt.step()
    a = torch.sigmoid(logits)
    assert a[mask.bool()].min() > 0.8 and a[~mask.bool()].max() < 0.2


def test_feature_distances_by_hand():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    assert feature_distance(a, b, "l2").item() == pytest.approx((9 + 16) / 2)
    assert feature_distance(a, b, "euclidean").item() == pytest.approx(5.0)
    assert feature_distance(a, b, "cosine").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown feature distance"):
        feature_distance(a, b, "l1")


def test_translation_gate_mixes_by_w():
    torch.manual_seed(0)
    gate = TranslationGate(dim=8, hidden=16)
    f = torch.randn(4, 8)
    torch.testing.assert_close(gate(f), f)                                 # T starts as the identity
    torch.nn.init.normal_(gate.translator.mlp[-1].weight)
    t = gate.translator(f)
    torch.testing.assert_close(gate(f, 1.0), t)
    torch.testing.assert_close(gate(f, 0.0), f)
    w = torch.tensor([0.0, 0.25, 1.0, 0.5])
    torch.testing.assert_close(gate(f, w, translated=t), w[:, None] * t + (1 - w[:, None]) * f)
    assert FeatureDiscriminator(dim=8, hidden=4)(f).shape == (4, 1)


# -- MR-GAN training (Alg. 1) ------------------------------------------------------------------------------------


class _UpdateIsolation(pl.Callback):
    """Records, around every optimiser step, whether the *other* network's parameters or gradients changed."""

    def __init__(self):
        self.violations: list[str] = []
        self.steps = 0

    def on_fit_start(self, trainer, pl_module):
        g_opt, d_opt = (o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers)
        nets = {"g": pl_module.generator, "d": pl_module.discriminator}
        snap: dict[str, list] = {}

        def state(net):
            return [(p.detach().clone(), None if p.grad is None else p.grad.detach().clone()) for p in net.parameters()]

        def same(a, b):
            return all(torch.equal(p1, p2) and ((g1 is None and g2 is None) or (g1 is not None and g2 is not None
                                                                                and torch.equal(g1, g2)))
                       for (p1, g1), (p2, g2) in zip(a, b))

        def pre(own, other):
            def hook(opt, args, kwargs):
                # the other network's gradients are those its own last step left: this backward did not touch them
                if f"{other}_after" in snap and not same(snap[f"{other}_after"], state(nets[other])):
                    self.violations.append(f"{own} backward changed {other}")
                snap[f"{other}_before"] = state(nets[other])
            return hook

        def post(own, other):
            def hook(opt, args, kwargs):
                if not same(snap[f"{other}_before"], state(nets[other])):
                    self.violations.append(f"{own} step changed {other}")
                snap[f"{own}_after"] = state(nets[own])
                self.steps += 1
            return hook

        g_opt.register_step_pre_hook(pre("g", "d"))
        g_opt.register_step_post_hook(post("g", "d"))
        d_opt.register_step_pre_hook(pre("d", "g"))
        d_opt.register_step_post_hook(post("d", "g"))


def _mrgan_trainer(callbacks, steps: int, root: Path) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", max_steps=2 * steps, limit_val_batches=0, logger=False, default_root_dir=root,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=callbacks)


def _mrgan_setup(tiny_world: Path, tmp_path: Path, extra: list[str] = ()):
    from lrface.config import instantiate

    cfg = compose("mrgan_synthetic", smoke_overrides("mrgan_synthetic", tiny_world, tmp_path) + list(extra))
    return instantiate(cfg.module), instantiate(cfg.data)


def test_discriminator_steps_do_not_update_the_generator_and_vice_versa(tiny_world, tmp_path):
    module, data = _mrgan_setup(tiny_world, tmp_path, ["module.pixel_every=2"])
    spy = _UpdateIsolation()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    _mrgan_trainer([spy], 4, tmp_path).fit(module, datamodule=data)
    assert spy.steps == 8 and spy.violations == []
    changed = {k.split(".")[0] for k, v in module.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])}
    assert changed == {"generator", "discriminator"}


def test_pixel_loss_joins_every_fifth_generator_update(tiny_world, tmp_path, monkeypatch):
    import lightning_modules.mrgan as mrgan

    calls: list[int] = []
    original = mrgan.pixel_loss

    def spy(fake, target):
        calls.append(int(module.global_step))
        return original(fake, target)

    monkeypatch.setattr(mrgan, "pixel_loss", spy)
    module, data = _mrgan_setup(tiny_world, tmp_path)
    _mrgan_trainer([], 11, tmp_path).fit(module, datamodule=data)
    # two optimiser steps per update: the G step of update b (1-based) starts at global_step 2·(b − 1)
    assert calls == [8, 18]


def test_generator_export_round_trip(tiny_world, tmp_path):
    from lrface.weights import load_mrgan_generator

    module, _ = _mrgan_setup(tiny_world, tmp_path)
    for p in module.generator.parameters():  # as if trained: the zero-initialised last layers too
        torch.nn.init.normal_(p, std=0.05)
    path = module.export_generator(tmp_path / "g.pt")
    loaded = load_mrgan_generator(path)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    index = torch.tensor([0, 2])
    noise = {r: torch.randn(2, 8) for r in ("eyes", "nose", "mouth")}
    module.generator.eval()
    torch.testing.assert_close(loaded(x, index, noise)["image"], module.generator(x, index, noise)["image"])
    with pytest.raises(ValueError, match="expected an MR-GAN generator file"):
        torch.save({"weights": {}}, tmp_path / "bad.pt")
        load_mrgan_generator(tmp_path / "bad.pt")


# -- feature adaption (Alg. 2) -----------------------------------------------------------------------------------


def _adaption(tiny_world: Path, tmp_path: Path, extra: list[str]):
    from lrface.config import instantiate

    cfg = compose("ran_adapt_synthetic", smoke_overrides("ran_adapt_synthetic", tiny_world, tmp_path) + [
        "module.optimizer.momentum=0", "module.optimizer.weight_decay=0", "module.scheduler=null",
        "data.batch_size=16", *extra])
    return instantiate(cfg.module), instantiate(cfg.data)


class _TranslatorChanges(pl.Callback):
    def __init__(self):
        self.changed: list[int] = []
        self.seen: list[int] = []
        self._last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._last = [p.detach().clone() for p in pl_module.gate.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(batch_idx)
        if any(not torch.equal(a, p) for a, p in zip(self._last, pl_module.gate.parameters())):
            self.changed.append(len(self.seen) - 1)


def _fit(module, data, steps: int, root: Path, callbacks=()):
    pl.Trainer(accelerator="cpu", max_steps=2 * steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
               default_root_dir=root,
               enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks)).fit(
        module, datamodule=data)


def test_feature_supervision_every_fourth_update(tiny_world, tmp_path):
    """With only L_feature weighted, the translator (reached by nothing else) moves on updates b = 4, 8, … of each
    epoch alone (Alg. 2 counts b within the epoch)."""
    module, data = _adaption(tiny_world, tmp_path, ["module.hr_weight=0", "module.lr_weight=0",
                                                    "module.translate_weight=0", "module.adversarial_weight=0"])
    spy = _TranslatorChanges()
    _fit(module, data, 9, tmp_path, [spy])
    assert len(spy.seen) == 9 and spy.changed == [i for i, b in enumerate(spy.seen) if (b + 1) % 4 == 0]
    assert len(spy.changed) >= 2


def test_feature_supervision_learns_and_w_is_traced(tiny_world, tmp_path):
    module, data = _adaption(tiny_world, tmp_path, ["module.hr_weight=0", "module.translate_weight=0",
                                                    "module.adversarial_weight=0", "module.feature_every=1",
                                                    "module.optimizer.lr=0.05", "module.trace_every=1",
                                                    # > 0 keeps the MR-GAN faces in Model_MR's batch (as in
                                                    # training) with a negligible pull of their own
                                                    "module.lr_weight=1e-9"])
    _fit(module, data, 25, tmp_path)
    trace = module.gate_trace
    assert len(trace) == 25 and all(0 < t["W"] < 1 for t in trace)
    first, last = trace[0]["L_feature"], sum(t["L_feature"] for t in trace[-3:]) / 3
    assert last < 0.5 * first, (first, last)


def test_adaption_keeps_frozen_models_and_starts_from_the_hr_model(tiny_world, tmp_path):
    from tests.conftest import TINY_TRUNK

    module, data = _adaption(tiny_world, tmp_path, [])
    hr = torch.load(tiny_world / TINY_TRUNK, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(module.backbone.conv1.weight, hr["backbone.conv1.weight"], rtol=0, atol=0)
    _fit(module, data, 3, tmp_path)
    assert module.head.weight.shape == hr["head.weight"].shape
    lr_net = module._nets["LR"]
    torch.testing.assert_close(lr_net.conv1.weight, hr["backbone.conv1.weight"], rtol=0, atol=0)
    assert not torch.equal(module.backbone.conv1.weight, hr["backbone.conv1.weight"])
    assert not any(k.startswith(("_nets", "lr_centres")) for k in module.state_dict())


# -- the pipeline ------------------------------------------------------------------------------------------------


def test_ran_synthetic_pipeline_and_report(tiny_world: Path, tmp_path: Path):
    every_step = [f"world.root={tiny_world}", "world.scale=tiny", f"run_root={tmp_path}", "progress_bar=none",
                  "data.num_workers=0", "trainer.accelerator=cpu"]
    cfg = compose("ran_synthetic", [f"run_root={tmp_path}", "pipeline_smoke=true",
                                    "pipeline_args=[" + ",".join(every_step) + "]"])
    run(cfg)
    pipeline_dir = only_run_dir(tmp_path, "ran_synthetic")
    report = json.loads((pipeline_dir / "ran_report.json").read_text())
    rows = report["tables"]["verification"]
    assert list(rows) == ["HR only (Model_HR)", "Model_HR + 2 epochs on HR faces", "LR model (Model_LR)",
                          "HR + MR-GAN faces, no gate", "RAN"]
    assert all(0 <= v <= 1 for row in rows.values() for v in row.values())
    assert set(report["mrgan"]) == {"val/fd_identity", "val/fd_identity_down", "val/identity_cos",
                                    "val/identity_cos_down"}
    assert all(math.isfinite(v) for v in report["mrgan"].values())
    assert 0 < report["gate_W"]["last"] < 1
    steps = json.loads((pipeline_dir / "pipeline.json").read_text())["steps"]
    ran_dir = Path(steps[-1]["run_dir"])
    assert (ran_dir / "translation_gate.png").stat().st_size > 1000
    mrgan_dir = Path(steps[1]["run_dir"])
    assert (mrgan_dir / "samples.png").is_file() and (mrgan_dir / "mrgan_generator.pt").is_file()
    assert "## (c) TinyFace-style" in (pipeline_dir / "ran_report.md").read_text()


def test_cli_mrgan_samples_and_covariate_protocol(tiny_world: Path, tmp_path: Path, capsys):
    from PIL import Image

    from lrface.cli import main
    from lrface.covariate_protocol import CovariateProtocol
    from tests.conftest import TINY_MRGAN, TINY_TRUNK

    out = tmp_path / "grid.png"
    assert main(["mrgan-samples", "--weights", str(tiny_world / TINY_MRGAN), "--images",
                 str(tiny_world / "celeba" / "img_align_celeba"), "--n", "3", "--out", str(out)]) == 0
    assert Image.open(out).size == (4 * 112 + 5 * 2, 3 * 112 + 4 * 2)   # input | down | MR-GAN | attention, 3 rows
    assert "LR sides 16, 24, 32" in capsys.readouterr().out
    protocol = tmp_path / "p.npz"
    assert main(["covariate-protocol", "--celeba", str(tiny_world / "celeba"), "--split", "all",
                 "--simulate-scales", "0.2", "1", "--protocol-out", str(protocol), "--weights",
                 str(tiny_world / TINY_TRUNK), "--backbone", "r18", "--widths", "8", "8", "16", "16",
                 "--num-features", "32", "--out", str(tmp_path / "r.json")]) == 0
    saved = CovariateProtocol.load(protocol)
    metrics = json.loads((tmp_path / "r.json").read_text())["tinyface_covariate"]
    assert metrics["n_lr_faces"] == len(saved.lr_faces) > 0 and metrics["n_positives"] == len(saved.positives)


def test_table1_pipeline_steps_compose():
    """Supplementary Table 1's analogue: every step of ran_table1_synthetic composes into a valid experiment, with the
    ablation switches landing where they should."""
    from omegaconf import OmegaConf

    from lightning_modules.runner import _step_args

    steps = OmegaConf.to_container(compose("ran_table1_synthetic").pipeline, resolve=True)
    composed, done = {}, {}
    for name, step in steps.items():
        composed[name] = compose(step["experiment"], _step_args(step.get("args") or [], done, name))
        done[name] = Path("/runs") / name
    assert len(steps) == 21
    assert composed["mrgan_no_att_loss"].module.attention_weight == 0
    assert composed["mrgan_simplest"].module.discriminator.local_discriminators is False
    assert composed["mrgan_simplest"].module.generator.local_generators is False
    assert composed["ran_cosine"].module.feature_distance == "cosine"
    assert composed["ran_no_local"].module.mrgan == "/runs/mrgan_no_local/mrgan_generator.pt"
