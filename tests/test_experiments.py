"""Every experiments/*.yaml runs: a new experiment without a working config fails CI."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from lightning_modules.runner import run
from lrface.config import compose
from tests.conftest import ROOT, smoke_overrides

EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml") if p.stem != "defaults")


# `stage: report` experiments train nothing (no loss to check): each has its own test (real_photos: test_real_photos.py)
@pytest.mark.parametrize("name", [n for n in EXPERIMENTS
                                  if not compose(n).get("pipeline") and compose(n).stage != "report"])
def test_experiment_smoke(name: str, tiny_world: Path, tmp_path: Path) -> None:
    cfg = compose(name, smoke_overrides(name, tiny_world, tmp_path) + ["trainer.fast_dev_run=true"])
    metrics = run(cfg)
    losses = [v for k, v in metrics.items() if k.endswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses), metrics
    run_dirs = list((tmp_path / name).iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "config.yaml").exists() and (run_dirs[0] / "results.json").exists()


PIPELINES = sorted(name for name in EXPERIMENTS if compose(name).get("pipeline"))


def test_pipelines_excluded_from_the_generic_smoke_run_their_own():
    assert PIPELINES == ["btnet_survface", "btnet_synthetic", "btnet_table2_ms1m", "mad_celeba", "mad_ms1m",
                         "mad_synthetic", "quickstart", "ran_survface", "ran_synthetic", "ran_table1_synthetic", "real_photos", "url_compare_synthetic", "url_synthetic", "url_table1_ms1m"]


def test_quickstart_pipeline_runs_every_step_then_reuses_them(tiny_world: Path, tmp_path: Path) -> None:
    """The quickstart on the tiny world with every step's `smoke` overrides: five runs chained by their run
    directories, the evaluation's report copied up; run again, every finished step is reused, nothing retrained."""
    import json

    every_step = [f"world.root={tiny_world}", "world.scale=tiny", f"run_root={tmp_path}", "progress_bar=none",
                  "data.num_workers=0", "trainer.accelerator=cpu"]
    cfg = compose("quickstart", [f"run_root={tmp_path}", "pipeline_smoke=true",
                                 "pipeline_args=[" + ",".join(every_step) + "]"])
    run(cfg)
    (first,) = (tmp_path / "quickstart").iterdir()
    steps = json.loads((first / "pipeline.json").read_text())["steps"]
    assert [s["step"] for s in steps] == ["F_baseline", "F_ours", "race_judge", "attribute_judge", "evaluation"]
    assert not any(s["reused"] for s in steps)
    evaluation = Path(steps[-1]["run_dir"])
    assert (evaluation / "seed000.md").is_file() and (first / "seed000.md").read_text() == \
        (evaluation / "seed000.md").read_text()
    from omegaconf import OmegaConf

    saved = OmegaConf.load(evaluation / "config.yaml")
    assert saved.module.ours == f"{steps[1]['run_dir']}/checkpoints/last.ckpt"
    assert saved.module.race_judge == f"{steps[2]['run_dir']}/checkpoints/last.ckpt"
    run(cfg)
    second = max((tmp_path / "quickstart").iterdir())
    assert second != first
    again = json.loads((second / "pipeline.json").read_text())["steps"]
    assert all(s["reused"] for s in again) and [s["run_dir"] for s in again] == [s["run_dir"] for s in steps]
