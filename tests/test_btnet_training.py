"""BTNetModule (seed 004 §3.3): BCT keeps κ* fixed, the trunk does not move, branch distillation learns; the
multi-resolution input of φ_mr / v2 / v3 / φ_mm; κ* loading (our checkpoints, the authors' per-rank shards); the
compute / storage tables (Fig. 4–5)."""

import pytest
import pytorch_lightning as pl
import torch
from functools import partial

from datamodules.multi_resolution import MultiResolutionAugment
from datamodules.transforms import resize_tensor
from lrface.btnet_cost import flops_table, parameter_table
from lrface.losses.margin import CurricularFace
from lrface.nets.btnet import BTNet
from lrface.optim import poly_warmup
from lrface.weights import load_classifier_shards, load_recognition_trunk
from tests.conftest import TINY_TRUNK


def test_multi_resolution_augment_draws_and_resizes():
    g = torch.Generator().manual_seed(0)
    v2 = MultiResolutionAugment(probabilities=[0.3, 0.25, 0.2, 0.15, 0.1])
    sides = v2.draw(20000, g)
    for side, p in zip((112, 56, 28, 14, 7), (0.3, 0.25, 0.2, 0.15, 0.1)):
        assert abs((sides == side).float().mean().item() - p) < 0.015
    v3 = MultiResolutionAugment(interval=(4, 112)).draw(5000, g)
    assert v3.min() == 4 and v3.max() == 112 and len(v3.unique()) > 100
    x = torch.rand(3, 3, 112, 112)
    out, labels = MultiResolutionAugment(sizes=[7])(x)
    assert labels == {} and out.shape == (3, 3, 112, 112)
    torch.testing.assert_close(out, resize_tensor(resize_tensor(x, (7, 7)), (112, 112)))
    same, _ = MultiResolutionAugment(sizes=[112])(x)
    torch.testing.assert_close(same, x)
    with pytest.raises(ValueError, match="one per size"):
        MultiResolutionAugment(probabilities=[0.5, 0.5])


def test_classifier_shards_and_missing_kappa(tmp_path, tiny_world):
    a, b = torch.randn(3, 8), torch.randn(2, 8)
    torch.save({"weight": a}, tmp_path / "softmax_fc_gpu_0.pt")
    torch.save(b, tmp_path / "softmax_fc_gpu_1.pt")
    kappa = load_classifier_shards([tmp_path / "softmax_fc_gpu_0.pt", tmp_path / "softmax_fc_gpu_1.pt"])
    torch.testing.assert_close(kappa, torch.cat([a, b]))
    state, kappa = load_recognition_trunk(tiny_world / TINY_TRUNK)
    assert "layer4.1.bn3.running_var" in state and kappa.shape[1] == 32
    torch.save(state, tmp_path / "backbone.pth")  # an insightface backbone.pth: no classifier in it
    from lightning_modules.btnet import BTNetModule

    with pytest.raises(ValueError, match="no classifier"):
        BTNetModule(str(tmp_path / "backbone.pth"), head=partial(CurricularFace), optimizer=partial(torch.optim.SGD))


def _train_branches(tiny_world, branch_weight=0.5, epochs=4):
    from datamodules.ms1m import MS1MDataModule
    from lightning_modules.btnet import BTNetModule

    torch.manual_seed(0)
    module = BTNetModule(str(tiny_world / TINY_TRUNK), head=partial(CurricularFace, s=32.0, m=0.3),
                         optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                         scheduler=partial(poly_warmup, power=2.0), resolutions=(7, 14),
                         branch_epochs={14: 1}, branch_weight=branch_weight)
    dm = MS1MDataModule(root=str(tiny_world / "ms1m"), batch_size=16, num_workers=0, val_sets=[])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    state = {"kappa": module.head.weight.detach().clone(),
             "trunk": {k: v.clone() for k, v in module.btnet.trunk.state_dict().items()},
             "body": module.btnet.branches["7"].conv1.weight.detach().clone(),
             "bn": module.btnet.branches["7"].specific["layer4"]["1"].bn1.running_mean.clone(),
             "losses": _losses(module, batch)}
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=6, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    return module, trainer, state, _losses(module, batch)


def _losses(module, batch):
    """(L_influence, L_feat) of the 7 px branch on a fixed batch, in eval mode."""
    module.btnet.eval()
    with torch.no_grad():
        x, y = batch["image"], batch["identity"]
        _, maps = module.btnet.trunk_with_coupling(x * 2 - 1)
        emb, z = module.btnet.forward_branch(resize_tensor(x, (7, 7)) * 2 - 1, 7, return_coupling=True)
        module.head.eval()
        influence = torch.nn.functional.cross_entropy(module.head(emb, y), y).item()
    module.train()  # Lightning keeps each module's mode from the start of fit
    return influence, torch.nn.functional.mse_loss(z, maps[7]).item()


def test_branch_training_bct_frozen_trunk_and_distillation(tiny_world):
    module, trainer, before, after = _train_branches(tiny_world)
    # the influence loss through the fixed κ* is learned
    assert after[0] < 0.8 * before["losses"][0], (before["losses"], after)
    torch.testing.assert_close(module.head.weight, before["kappa"], rtol=0, atol=0)  # BCT: κ* never moves
    for key, value in module.btnet.trunk.state_dict().items():
        torch.testing.assert_close(value, before["trunk"][key], rtol=0, atol=0, msg=key)
    assert not torch.equal(module.btnet.branches["7"].conv1.weight, before["body"])
    assert not torch.equal(module.btnet.branches["7"].specific["layer4"]["1"].bn1.running_mean, before["bn"])
    assert module.branch_t.abs().min() > 0 and module.branch_t[0] != module.branch_t[1]  # a t per branch
    # branch 14 trained for its 1 epoch only: its lr schedule ended there, branch 7's went on
    factors = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas
    total = trainer.estimated_stepping_batches
    assert factors[1](total // 4) == 0.0 and factors[0](total // 4) == pytest.approx(0.75 ** 2)
    # branch distillation (Eq. 2) holds z_7 to TNet's map; without it (λ_branch = 0) the map drifts further. The
    # random tiny trunk's κ* makes L_influence large, so a large λ_branch shows the effect within a few steps.
    _, _, _, plain = _train_branches(tiny_world, branch_weight=0.0)
    _, _, _, distilled = _train_branches(tiny_world, branch_weight=20.0)
    assert distilled[1] < 0.5 * plain[1], (distilled, plain)


def test_cost_tables():
    from lrface.nets.iresnet import get_model

    bt = BTNet(get_model("r18", widths=(8, 8, 16, 16), num_features=16), (7, 14, 28))
    flops = flops_table(bt)
    assert flops[112]["flops_ratio"] == 1.0
    assert flops[7]["flops_ratio"] < flops[14]["flops_ratio"] < flops[28]["flops_ratio"] < 1.0
    params = parameter_table(bt)
    assert params[28]["phi_bt_m"] < params[14]["phi_bt_m"] < params[7]["phi_bt_m"] < params[7]["full_finetune_m"]


def test_report_prints_the_cost_table(tmp_path):
    import json

    from lrface.btnet_report import write_btnet_report

    run = tmp_path / "phi_bt"
    run.mkdir()
    evaluation = {"average@112&7": {"accuracy": 0.8},
                  "cost@7px": {"phi_hr_gflops": 12.619, "phi_bt_gflops": 3.034, "flops_ratio": 0.24,
                               "full_finetune_m": 43.591, "phi_bt_m": 21.307, "stored_ratio": 0.489}}
    (run / "evaluation.json").write_text(json.dumps(evaluation))
    md = write_btnet_report({"phi_bt": run}, tmp_path)
    assert "| 7×7 | 12.619 | 3.034 | 0.240 | 43.591 | 21.307 | 0.489 |" in md
    assert json.loads((tmp_path / "btnet_report.json").read_text())["cost"]["phi_bt"]["7"]["phi_bt_gflops"] == 3.034


def test_without_pretraining_the_branches_start_fresh(tiny_world):
    from lightning_modules.btnet import BTNetModule

    module = BTNetModule(str(tiny_world / TINY_TRUNK), head=partial(CurricularFace), optimizer=partial(torch.optim.SGD),
                         resolutions=(7,), pretrained=False)
    branch, trunk = module.btnet.branches["7"], module.btnet.trunk
    assert not torch.equal(branch.layer1[0].conv1.weight, trunk.layer1[0].conv1.weight)
    assert float(branch.layer1[0].conv1.weight.std()) == pytest.approx(0.1, rel=0.2)  # IResNet's N(0, 0.1)
    assert torch.equal(branch.bn1.running_mean, torch.zeros_like(branch.bn1.running_mean))
    # the resolution-specific BNs of the tail still start as TNet's (only the branch body is re-initialised)
    assert torch.equal(branch.specific["bn2"].running_var, trunk.bn2.running_var)
