"""SLURM script generation, W&B sweep validation, MTCNN weight extraction, throughput sample counting."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf.errors import ConfigKeyError

from lrface import slurm, sweep
from lrface.config import compose
from lrface.weights import MTCNN_FILES, fetch_mtcnn_weights
from tests.conftest import ROOT


def test_sbatch_script_matches_lightning_rules(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here: the script is only written
    path = slurm.write_and_submit("arcface_synthetic", 2, 8, ["module.optimizer.lr=0.2", f"run_root={tmp_path}/runs"],
                                  submit=True)
    text = path.read_text()
    try:
        assert path.name == "slurm.sbatch" and path.parent.parent.name == "arcface_synthetic"
        assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=8" in text and "--gres=gpu:8" in text
        assert "#SBATCH --signal=SIGUSR1@90" in text
        assert f"export LRFACE_RUN_DIR={path.parent}" in text
        srun = [line for line in text.splitlines() if line.startswith("srun ")]
        assert len(srun) == 1
        for arg in ("-m lrface.cli run arcface_synthetic", "module.optimizer.lr=0.2", "trainer.num_nodes=2",
                    "trainer.devices=8", "trainer.strategy=ddp"):
            assert arg in srun[0]
        # the overrides in the script compose: what the job will run is a valid config
        args = srun[0].split(" run arcface_synthetic ")[1].split()
        cfg = compose("arcface_synthetic", args)
        assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 8
        assert subprocess.run(["/bin/bash", "-n", str(path)]).returncode == 0
    finally:
        import shutil

        shutil.rmtree(path.parent)


def test_slurm_rejects_typo_before_writing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(ConfigKeyError):
        slurm.write_and_submit("arcface_synthetic", 1, 2, ["module.optimiser.lr=1", f"run_root={tmp_path}"], submit=False)


def test_sweep_files_are_valid_and_render_as_overrides() -> None:
    names = sorted(p.stem for p in (ROOT / "experiments" / "sweeps").glob("*.yaml"))
    assert names, "at least one sweep is shipped"
    for name in names:
        spec = sweep.load_sweep(name)
        sweep.validate(spec)
        assert "${args_no_hyphens}" in spec["command"] and "${interpreter}" in spec["command"]
        assert spec["metric"]["name"].startswith(("val/", "train/", "test/"))


def test_sweep_with_typo_fails_before_any_server(tmp_path: Path) -> None:
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "defaults.yaml").write_text((ROOT / "experiments/defaults.yaml").read_text())
    (tmp_path / "x.yaml").write_text("base: [defaults.yaml]\ndata: {_target_: a}\nmodule: {_target_: b}\n")
    (tmp_path / "sweeps" / "bad.yaml").write_text(
        "experiment: x\nmethod: grid\nmetric: {name: val/acc, goal: maximize}\n"
        "parameters: {trainer.max_epoch: {values: [1, 2]}}\n")
    spec = sweep.load_sweep("bad", tmp_path)
    with pytest.raises(ConfigKeyError, match="max_epochs"):
        sweep.validate(spec, tmp_path)


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_sweep_offline_says_why(mode: str) -> None:
    env = {**os.environ, "WANDB_MODE": mode}
    done = subprocess.run([sys.executable, "-m", "lrface.cli", "sweep", "arcface_lr"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "need a W&B server" in done.stderr and f"WANDB_MODE={mode}" in done.stderr
    assert "Traceback" not in done.stderr


def test_agent_rendered_args_parse_like_the_cli() -> None:
    # what `${args_no_hyphens}` renders for {lr: 1e-05, precision: bf16-mixed, clip: None, widths: [8, 16, 16, 32]}
    rendered = ["module.optimizer.lr=1e-05", "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=None",
                "module.backbone.widths=[8, 16, 16, 32]"]
    cfg = compose("arcface_synthetic", rendered)
    assert cfg.module.optimizer.lr == pytest.approx(1e-5)
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.gradient_clip_val is None
    assert list(cfg.module.backbone.widths) == [8, 16, 16, 32]


def test_mtcnn_weights_extracted_from_a_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl"
    payloads = {}
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in MTCNN_FILES:
            payloads[name] = {"conv.weight": torch.randn(2, 3)}
            buf = tmp_path / name
            torch.save(payloads[name], buf)
            zf.write(buf, f"facenet_pytorch/data/{name}")
    dest = fetch_mtcnn_weights(tmp_path / "out", wheel=wheel)
    for name in MTCNN_FILES:
        got = torch.load(dest / name, weights_only=True)
        assert torch.equal(got["conv.weight"], payloads[name]["conv.weight"])
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as zf:
        zf.writestr("facenet_pytorch/__init__.py", "")
    with pytest.raises(RuntimeError, match="no facenet_pytorch/data/pnet.pt"):
        fetch_mtcnn_weights(tmp_path / "out2", wheel=tmp_path / "empty.whl")


def test_installed_mtcnn_weights_are_the_real_state_dicts() -> None:
    """`make test` extracts the real wheel's files first; they are plain state_dicts loadable weights_only."""
    dest = ROOT / "weights" / "mtcnn"
    if not (dest / "onet.pt").exists():
        pytest.skip("weights/mtcnn not extracted (run through `make test`)")
    onet = torch.load(dest / "onet.pt", weights_only=True)
    assert any(re.match(r"conv1\.weight", k) for k in onet)
    assert onet["conv1.weight"].shape == (32, 3, 3, 3)


def test_data_commands_dispatch(tmp_path: Path) -> None:
    """`lrface data synth` writes a world the loaders read; `lrface data pack` packs an image folder they read too."""
    from datamodules.ms1m import MS1MDataset
    from lrface.cli import main

    world = tmp_path / "world"
    assert main(["data", "synth", "--root", str(world), "--scale", "tiny", "--datasets", "qmul_survface"]) == 0
    assert (world / "WORLD.json").exists() and (world / "qmul_survface" / "training_set").is_dir()
    assert main(["data", "pack", str(world / "qmul_survface" / "training_set"), str(tmp_path / "rec"),
                 "--size", "112"]) == 0
    packed = MS1MDataset(tmp_path / "rec")
    folders = sorted(p for p in (world / "qmul_survface" / "training_set").iterdir() if p.is_dir())
    assert packed.num_classes == len(folders)
    assert len(packed) == sum(len(list(f.glob("*.jpg"))) for f in folders)
    assert packed[0]["image"].shape == (3, 112, 112)


def test_slurm_command_line_as_make_passes_it(tmp_path: Path, monkeypatch) -> None:
    """`make slurm` puts ARGS after the options: they must still reach the script."""
    from lrface.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["slurm", "arcface_synthetic", "--nodes", "2", "--gpus", "4", "--no-submit", "module.optimizer.lr=0.3",
                 f"run_root={tmp_path}"]) == 0
    (script,) = tmp_path.glob("arcface_synthetic/*/slurm.sbatch")
    srun = next(line for line in script.read_text().splitlines() if line.startswith("srun "))
    assert "module.optimizer.lr=0.3" in srun and "trainer.devices=4" in srun and "trainer.num_nodes=2" in srun
    with pytest.raises(SystemExit):
        main(["slurm", "arcface_synthetic", "--nodes", "2", "--bogus"])
