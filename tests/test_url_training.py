"""URL trains end to end: a short run on a small synthetic MS1M with on-the-fly low-resolution / occlusion / pose
variations and their decorrelation loss learns to identify its 40 people from 14 px thumbnails far above chance, and
the confidence branch learns to trust degraded faces less."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from datamodules.ms1m import MS1MDataset
from datamodules.synthetic import generate_world
from datamodules.transforms import resize_tensor
from lightning_modules.feature_extractor import FeatureExtractorModule
from lightning_modules.runner import run
from lrface.cli import main
from lrface.config import compose, instantiate
from lrface.inference import to_model_range
from tests.conftest import smoke_overrides
from tests.helpers import history, only_run_dir
from tests.test_feature_extractor import SMALL_MS1M


@torch.no_grad()
def _identification_at(module: FeatureExtractorModule, world: Path, side: int) -> float:
    """Top-1 of every training image shrunk to side×side and back, against the head's class prototypes."""
    data = MS1MDataset(world / "ms1m", image_size=112)
    batch = default_collate([data[i] for i in range(len(data))])
    images = resize_tensor(resize_tensor(batch["image"], (side, side)), (112, 112))
    module.eval()
    emb, conf = module.backbone.forward_with_confidence(to_model_range(images))
    logits = module.head(emb, conf, torch.full_like(batch["identity"], -1))
    return float((logits.argmax(1) == batch["identity"]).float().mean())


def test_url_short_training_identifies_low_resolution_faces(tmp_path: Path) -> None:
    world = tmp_path / "world"
    generate_world(world, SMALL_MS1M, seed=3, datasets=("ms1m",))
    cfg = compose("url_train_synthetic", smoke_overrides("url_train_synthetic", world, tmp_path) + [
        "world=null", f"data.root={world}/ms1m", "callbacks.evaluation=null", "callbacks.url_figures=null",
        "trainer.max_epochs=6", "trainer.check_val_every_n_epoch=6", "data.batch_size=32",
        "module.confidence_warmup_steps=24"])
    run(cfg)
    run_dir = only_run_dir(tmp_path, "url_train_synthetic")
    rows = [r["metrics"] for r in history(run_dir)]
    assert rows[-1]["train/L_idt"] < 0.5 * rows[0]["train/L_idt"], rows
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    trained = instantiate(cfg.module)
    trained._build_head(40)  # the head's size comes from the DataModule at setup
    trained.load_state_dict(torch.load(ckpt, weights_only=False)["state_dict"])
    chance = 1 / 40
    at_14 = _identification_at(trained, world, 14)
    assert at_14 >= 0.3 and at_14 >= 10 * chance, at_14
    # after the warm-up the branch moved: degraded samples (drawn side < 40 px) get lower s than clean ones
    late = rows[-3:]
    low = np.mean([r["train/confidence_low_resolution"] for r in late])
    clean = np.mean([r["train/confidence_low_resolution_absent"] for r in late])
    assert low < 0.95 * clean, (low, clean)
    # `lrface evaluate` reads the architecture of our run from its config: the URL scores come with it
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--weights", str(ckpt), "--bin", str(world / "ms1m" / "lfw.bin"), "--out", str(out)]) == 0
    lfw = json.loads(out.read_text())["lfw"]
    assert {"accuracy", "url/accuracy", "confidence/mean_s"} <= set(lfw), lfw
    assert rows[0]["train/confidence"] == 32.0 and late[-1]["train/L_cls"] > 0 and np.isfinite(late[-1]["train/L_adv"])

