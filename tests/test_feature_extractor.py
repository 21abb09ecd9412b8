"""FeatureExtractorModule learns: a short run on a small synthetic MS1M raises verification accuracy well above chance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from datamodules.ms1m import VerificationPairs
from datamodules.synthetic import Scale, generate_world
from lightning_modules.runner import run
from lrface.config import compose, instantiate
from lrface.inference import embed_flip_sum
from lrface.metrics.verification import verify_pairs
from tests.conftest import smoke_overrides
from tests.helpers import history, only_run_dir

# MS1M only: 40 training identities and 100 pairs per .bin set (the tiny world's 10 ids / 20 pairs are too noisy)
SMALL_MS1M = Scale(celeba_ids=3, celeba_images=(2, 2), fairface_train=1, fairface_val=1, ms1m_ids=40,
                   ms1m_images=(8, 10), bin_ids=20, bin_pairs=100, qmul_train_ids=1, qmul_train_images=(1, 1),
                   qmul_test_ids=4, qmul_test_images=(1, 1), qmul_distractors=0, qmul_pairs=1)


def _untrained_accuracy(cfg, world: Path) -> float:
    torch.manual_seed(cfg.seed)
    backbone = instantiate(cfg.module.backbone).eval()
    accuracies = []
    for name in ("lfw", "cfp_fp", "agedb_30"):
        pairs = VerificationPairs(world / "ms1m" / f"{name}.bin", image_size=112)
        batch = default_collate([pairs[i] for i in range(len(pairs))])
        e1, e2 = embed_flip_sum(backbone, batch["image1"]), embed_flip_sum(backbone, batch["image2"])
        accuracies.append(verify_pairs(e1.numpy(), e2.numpy(), batch["issame"].numpy())["accuracy"])
    return float(np.mean(accuracies))


def test_short_training_run_learns(tmp_path: Path) -> None:
    world = tmp_path / "world"
    generate_world(world, SMALL_MS1M, seed=3, datasets=("ms1m",))
    cfg = compose("arcface_synthetic", smoke_overrides("arcface_synthetic", world, tmp_path)
                  + ["world=null", f"data.root={world}/ms1m", "callbacks.evaluation=null", "trainer.max_epochs=6",
                     "data.batch_size=32",
                     "module.export_embeddings=true"])
    run(cfg)
    run_dir = only_run_dir(tmp_path, "arcface_synthetic")
    rows = history(run_dir)
    accuracies = [r["metrics"]["val/accuracy"] for r in rows]
    first, last = rows[0]["metrics"], rows[-1]["metrics"]
    assert last["train/loss"] < 0.3 * first["train/loss"]
    late = float(np.mean(accuracies[-2:]))
    untrained = _untrained_accuracy(cfg, world)  # ~0.6: random conv features already separate some pairs
    assert late >= 0.75 and late >= untrained + 0.1, (untrained, accuracies)
    # the exported embeddings are the ones the logged accuracy was computed from
    saved = np.load(run_dir / "embeddings" / "lfw.npz")
    assert len(saved["issame"]) == 100
    again = verify_pairs(saved["emb1"], saved["emb2"], saved["issame"])
    assert abs(again["accuracy"] - last["val/lfw/accuracy"]) < 1e-6
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and list(run_dir.glob("checkpoints/best-*.ckpt"))
