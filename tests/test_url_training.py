"""URL trains end to end: a short run on a small synthetic MS1M with on-the-fly low-resolution / occlusion / pose
variations and their decorrelation loss raises verification accuracy on pairs shrunk to 14 px well above chance,
and the confidence branch learns to trust degraded faces less."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from callbacks.evaluation import evaluate_bin
from datamodules.synthetic import generate_world
from lightning_modules.runner import run
from lrface.cli import main
from lrface.config import compose, instantiate
from lrface.weights import load_feature_extractor
from tests.conftest import smoke_overrides
from tests.helpers import history, only_run_dir
from tests.test_feature_extractor import SMALL_MS1M

SETS = ("lfw", "cfp_fp", "agedb_30")


def _low_res_accuracy(backbone, world: Path) -> float:
    return float(np.mean([evaluate_bin(backbone, world / "ms1m" / f"{name}.bin", degrade_to=14)["accuracy"]
                          for name in SETS]))


def test_url_short_training_raises_low_resolution_accuracy(tmp_path: Path) -> None:
    world = tmp_path / "world"
    generate_world(world, SMALL_MS1M, seed=3, datasets=("ms1m",))
    cfg = compose("url_train_synthetic", smoke_overrides("url_train_synthetic", world, tmp_path) + [
        "world=null", f"data.root={world}/ms1m", "callbacks.evaluation=null", "callbacks.url_figures=null",
        "trainer.max_epochs=6", "data.batch_size=32", "module.confidence_warmup_steps=24"])
    torch.manual_seed(cfg.seed)
    untrained = _low_res_accuracy(instantiate(cfg.module.backbone).eval(), world)
    run(cfg)
    run_dir = only_run_dir(tmp_path, "url_train_synthetic")
    rows = [r["metrics"] for r in history(run_dir)]
    assert rows[-1]["train/L_idt"] < 0.5 * rows[0]["train/L_idt"], rows
    trained = _low_res_accuracy(load_feature_extractor(run_dir / "checkpoints" / "last.ckpt").F.backbone, world)
    # chance is 0.5; random conv features already reach ~0.62 on these 14 px pairs
    assert trained >= 0.66 and trained >= untrained + 0.05, (untrained, trained)
    # after the warm-up the branch moved: degraded samples (drawn side < 40 px) get lower s than clean ones
    late = rows[-3:]
    low = np.mean([r["train/confidence_low_resolution"] for r in late])
    clean = np.mean([r["train/confidence_low_resolution_absent"] for r in late])
    assert low < 0.95 * clean, (low, clean)
    # `lrface evaluate` reads the architecture of our run from its config: the URL scores come with it
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--weights", str(run_dir / "checkpoints" / "last.ckpt"), "--bin",
                 str(world / "ms1m" / "lfw.bin"), "--out", str(out)]) == 0
    lfw = json.loads(out.read_text())["lfw"]
    assert {"accuracy", "url/accuracy", "confidence/mean_s"} <= set(lfw), lfw
    assert rows[0]["train/confidence"] == 32.0 and late[-1]["train/L_cls"] > 0 and np.isfinite(late[-1]["train/L_adv"])
