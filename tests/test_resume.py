"""Fault tolerance: SIGKILL after the first checkpoint, resume=auto, same end state as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from callbacks.atomic_checkpoint import atomic_torch_save
from tests.conftest import ROOT, smoke_overrides
from tests.helpers import history, only_run_dir, results

ARGS = ["trainer.max_epochs=3", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "data.batch_size=8",
        "checkpoint.every_n_train_steps=2", "+callbacks.slow._target_=tests.helpers.SlowDown",
        "+callbacks.slow.seconds=0.4"]


def _cmd(world: Path, run_root: Path) -> list[str]:
    return [sys.executable, "-m", "lrface.cli", "run", "arcface_synthetic",
            *smoke_overrides("arcface_synthetic", world, run_root), *ARGS]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tiny_world: Path, tmp_path: Path) -> None:
    straight_root, killed_root = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cmd(tiny_world, straight_root), cwd=ROOT, check=True, capture_output=True, timeout=600)
    straight = only_run_dir(straight_root, "arcface_synthetic")

    proc = subprocess.Popen(_cmd(tiny_world, killed_root), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(killed_root.glob("arcface_synthetic/*/checkpoints/last.ckpt")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # into the next steps, possibly mid-way through the next checkpoint write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = only_run_dir(killed_root, "arcface_synthetic")
    assert not (killed / "results.json").exists()
    state = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    killed_at = state["global_step"]
    assert 0 < killed_at < 12

    subprocess.run(_cmd(tiny_world, killed_root), cwd=ROOT, check=True, capture_output=True, timeout=600)
    assert only_run_dir(killed_root, "arcface_synthetic") == killed  # resumed in place, no second run directory
    assert results(killed)["trainer/global_step"] == results(straight)["trainer/global_step"] == 12
    assert [r["epoch"] for r in history(killed)] == [r["epoch"] for r in history(straight)] == [0, 1, 2]
    assert [r["step"] for r in history(killed)] == [r["step"] for r in history(straight)]


def test_finished_run_is_not_resumed_and_changed_config_starts_fresh(tmp_path: Path) -> None:
    from lightning_modules.runner import find_auto_resume
    from lrface.config import compose

    cfg = compose("arcface_synthetic", [f"run_root={tmp_path}"])
    run_dir = tmp_path / "arcface_synthetic" / "20260101-000000"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run_dir / "config.yaml").write_text(__import__("omegaconf").OmegaConf.to_yaml(cfg, resolve=True))
    assert find_auto_resume(cfg) == (run_dir, run_dir / "checkpoints" / "last.ckpt")
    assert find_auto_resume(compose("arcface_synthetic", [f"run_root={tmp_path}", "module.optimizer.lr=0.3"])) is None
    (run_dir / "results.json").write_text("{}")
    assert find_auto_resume(cfg) is None


def test_atomic_save_never_leaves_a_partial_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def crash(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_last_checkpoint_holds_the_final_weights_after_a_mid_interval_end(tiny_world: Path, tmp_path: Path) -> None:
    """Validation every 4 batches, training stops after 6: last.ckpt must be step 6's weights (what the end-of-fit
    evaluation measured and what a pipeline's next step loads), not step 4's."""
    from lightning_modules.runner import run
    from lrface.config import compose

    overrides = smoke_overrides("arcface_synthetic", tiny_world, tmp_path) + [
        "trainer.max_epochs=1", "trainer.limit_train_batches=6", "trainer.val_check_interval=4",
        "trainer.limit_val_batches=1", "data.batch_size=8"]
    run(compose("arcface_synthetic", overrides))
    run_dir = only_run_dir(tmp_path, "arcface_synthetic")
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert state["global_step"] == results(run_dir)["trainer/global_step"] == 6
