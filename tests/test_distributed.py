"""DDP for real on CPU (gloo): in-process ddp_spawn and the real entry point under strategy=ddp, with bf16-mixed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules.ms1m import MS1MDataset
from lightning_modules.runner import run
from lrface.config import compose
from tests.conftest import ROOT, smoke_overrides
from tests.helpers import history, only_run_dir, results

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# bf16 convolutions on a CPU without native bf16 are ~8x slower than fp32: the narrowest net keeps this test short
STEPS = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "data.batch_size=8",
         "module.backbone.widths=[8,8,16,16]", "module.backbone.num_features=32"]
EXPECTED_STEPS = 2 * 3  # per rank: DDP splits the data, not the step count


def test_ddp_spawn_two_processes_bf16(tiny_world: Path, tmp_path: Path) -> None:
    overrides = smoke_overrides("arcface_synthetic", tiny_world, tmp_path) + STEPS + [
        "trainer.strategy=ddp_spawn", "trainer.devices=2", "trainer.precision=bf16-mixed"]
    run(compose("arcface_synthetic", overrides))
    run_dir = only_run_dir(tmp_path, "arcface_synthetic")
    rows = history(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[-1]["step"] == EXPECTED_STEPS
    assert 0.0 <= rows[-1]["metrics"]["val/accuracy"] <= 1.0
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_real_entry_point_under_ddp_with_partial_fc(tiny_world: Path, tmp_path: Path) -> None:
    """`strategy=ddp` re-launches the command line for rank 1; the class centres are sharded across the two ranks."""
    overrides = smoke_overrides("arcface_synthetic", tiny_world, tmp_path) + STEPS + [
        "trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu", "module.partial_fc_sample_rate=0.5"]
    done = subprocess.run([sys.executable, "-m", "lrface.cli", "run", "arcface_synthetic", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    run_dir = only_run_dir(tmp_path, "arcface_synthetic")  # both ranks used the directory rank 0 chose
    assert results(run_dir)["trainer/global_step"] == EXPECTED_STEPS
    assert [r["step"] for r in history(run_dir)] == [3, 6]
    assert "GLOBAL_RANK: 1" in done.stderr + done.stdout  # a second process really took part
    # each rank trained its own half of the centres; the checkpoint gathers the whole [C, D] matrix
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    num_classes = MS1MDataset(tiny_world / "ms1m").num_classes
    assert state["partial_fc.weight"].shape == (num_classes, 32)


def test_btnet_branches_ddp_spawn_bf16(tiny_world: Path, tmp_path: Path) -> None:
    """BTNet's branches under 2-process DDP + bf16-mixed: frozen trunk and κ* outside DDP's gradient sync, the
    branches and their BNs inside it; the checkpoint's κ* and trunk are TNet's exactly."""
    from tests.conftest import TINY_TRUNK

    name = "btnet_branches_synthetic"
    overrides = smoke_overrides(name, tiny_world, tmp_path) + [
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.batch_size=8",
        "module.resolutions=[7,14]", "callbacks.evaluation=null",
        "trainer.strategy=ddp_spawn", "trainer.devices=2", "trainer.precision=bf16-mixed"]
    run(compose(name, overrides))
    run_dir = only_run_dir(tmp_path, name)
    assert history(run_dir)[-1]["step"] == 2
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    trunk = torch.load(tiny_world / TINY_TRUNK, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(state["head.weight"], trunk["head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(state["btnet.trunk.layer4.1.conv1.weight"], trunk["backbone.layer4.1.conv1.weight"],
                               rtol=0, atol=0)
    assert not torch.equal(state["btnet.branches.7.conv1.weight"], trunk["backbone.conv1.weight"])


def _rank_sums(out: Path) -> tuple[dict, dict]:
    return tuple(json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))


def test_mrgan_ddp_spawn_two_processes(tiny_world: Path, tmp_path: Path) -> None:
    """MR-GAN's G and D in one DDP wrapper, each backward reaching one of them (find_unused_parameters): both ranks
    end with the same generator and discriminators, and both moved."""
    name = "mrgan_synthetic"
    out = tmp_path / "sums"
    overrides = smoke_overrides(name, tiny_world, tmp_path) + [
        "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
        "trainer.strategy=ddp_spawn_find_unused_parameters_true", "trainer.devices=2",
        "+callbacks.sums._target_=tests.helpers.RankParameterSums", f"+callbacks.sums.out={out}"]
    run(compose(name, overrides))
    run_dir = only_run_dir(tmp_path, name)
    assert history(run_dir)[-1]["step"] == 2 * 3
    rank0, rank1 = _rank_sums(out)
    assert set(rank0) == {"generator", "discriminator"}
    for key in rank0:
        assert rank0[key] == pytest.approx(rank1[key], rel=1e-9, abs=1e-9), key
    assert (run_dir / "mrgan_generator.pt").is_file()


def test_feature_adaption_ddp_spawn_bf16(tiny_world: Path, tmp_path: Path) -> None:
    """RAN's adaption stage under 2-process DDP + bf16-mixed: Model_MR, head, gate and D stay identical across ranks."""
    name = "ran_adapt_synthetic"
    out = tmp_path / "sums"
    overrides = smoke_overrides(name, tiny_world, tmp_path) + [
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "data.batch_size=8",
        "callbacks.evaluation=null", "trainer.strategy=ddp_spawn_find_unused_parameters_true", "trainer.devices=2",
        "trainer.precision=bf16-mixed",
        "+callbacks.sums._target_=tests.helpers.RankParameterSums", f"+callbacks.sums.out={out}"]
    run(compose(name, overrides))
    run_dir = only_run_dir(tmp_path, name)
    assert history(run_dir)[-1]["step"] == 2 * 2
    rank0, rank1 = _rank_sums(out)
    assert set(rank0) == {"backbone", "gate", "discriminator", "head"}
    for key in rank0:
        assert rank0[key] == pytest.approx(rank1[key], rel=1e-9, abs=1e-9), key


class MADNetworkTrace(pl.Callback):
    """Each rank writes ``rank<r>.json``: per MAD network (Q encoder, P decoder, D, D_z, E disentangler, G
    reentangler) the parameter sum at train start and end, and the dataset indices of every training batch."""

    def __init__(self, out: str):
        self.out = out
        self.start: dict[str, float] = {}
        self.indices: list[list[int]] = []

    @staticmethod
    def _sums(pl_module) -> dict[str, float]:
        sums: dict[str, float] = {}
        for name, p in pl_module.net.named_parameters():
            sums[name.split(".")[0]] = sums.get(name.split(".")[0], 0.0) + float(p.detach().double().sum())
        return sums

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self._sums(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.indices.append([int(i) for i in batch["index"]])

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).mkdir(parents=True, exist_ok=True)
        (Path(self.out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(
            {"start": self.start, "end": self._sums(pl_module), "indices": self.indices}))


def test_mad_joint_pk_batches_ddp_spawn_two_processes(tiny_world: Path, tmp_path: Path) -> None:
    """MAD's joint phase (six networks, three optimisers) on P×K identity batches under 2-process DDP: the ranks draw
    disjoint identities, the triplets find positives, and all six networks move and stay identical across ranks."""
    out = tmp_path / "trace"
    overrides = smoke_overrides("mad_phase_synthetic", tiny_world, tmp_path) + [
        "module.phase=joint", "trainer.max_epochs=1", "trainer.limit_val_batches=1", "callbacks.mad_evaluation=null",
        "trainer.strategy=ddp_spawn_find_unused_parameters_true", "trainer.devices=2",
        "+callbacks.trace._target_=tests.test_distributed.MADNetworkTrace", f"+callbacks.trace.out={out}"]
    cfg = compose("mad_phase_synthetic", overrides)
    assert cfg.trainer.use_distributed_sampler is False and cfg.data.identity_batches.k == 4
    run(cfg)
    run_dir = only_run_dir(tmp_path, "mad_phase_synthetic")
    rows = history(run_dir)
    # 10 training identities in the tiny world → 5 batches of 2 → 2 per rank; 3 optimiser steps per batch
    assert rows[-1]["step"] == 2 * 3
    assert rows[-1]["metrics"]["train/L_f_identity_epoch"] > 0
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert set(ranks[0]["end"]) == {"encoder", "decoder", "discriminator", "z_discriminator", "disentangler",
                                    "reentangler"}
    for key, end in ranks[0]["end"].items():
        assert end == pytest.approx(ranks[1]["end"][key], rel=1e-9, abs=1e-9), key
        assert ranks[0]["start"][key] == pytest.approx(ranks[1]["start"][key], rel=1e-12, abs=1e-12), key
        assert end != ranks[0]["start"][key], key
    images = [sum(r["indices"], []) for r in ranks]
    assert [len(r["indices"]) for r in ranks] == [2, 2] and all(len(i) == 16 for i in images)
    assert not set(images[0]) & set(images[1])
