"""Every experiments/*.yaml runs: a new experiment without a working config fails CI."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from lightning_modules.runner import run
from lrface.config import compose
from tests.conftest import ROOT, smoke_overrides

EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml") if p.stem != "defaults")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_smoke(name: str, tiny_world: Path, tmp_path: Path) -> None:
    cfg = compose(name, smoke_overrides(name, tiny_world, tmp_path) + ["trainer.fast_dev_run=true"])
    metrics = run(cfg)
    losses = [v for k, v in metrics.items() if k.endswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses), metrics
    run_dirs = list((tmp_path / name).iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "config.yaml").exists() and (run_dirs[0] / "results.json").exists()
