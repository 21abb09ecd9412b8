"""F_ours training (seed paper §3.3, Eq. 9–10, Alg. 1): the multi-task FeatureExtractorModule learns race and
attributes on the tiny world, L_siam separates lookalikes from their sources, the classifiers survive a checkpoint,
and the lookalike set's reader rejects bad index lines with their line number."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import default_collate

from datamodules.celeba import CelebADataset
from datamodules.errors import DataFormatError
from datamodules.fairface import FairFaceDataset
from datamodules.lookalike import LookalikeDataModule, LookalikeDataset
from datamodules.multitask import MultiTaskDataModule
from lightning_modules.runner import run
from lrface.config import compose, instantiate
from lrface.losses.identity import L_attribute_class, L_siam, theta
from lrface.metrics.average_precision import average_precision
from lrface.weights import load_feature_extractor
from tests.conftest import smoke_overrides
from tests.helpers import history, only_run_dir

SIZE = 64  # F's input side in these tests: a 112 px IResNet is 6× slower on a CPU
TINY_NET = ["module.backbone.widths=[8,16,16,32]", "module.backbone.num_features=32",
            f"module.backbone.input_size={SIZE}"]


def _cfg(world: Path, tmp: Path, extra: list[str] = ()):
    sizes = [f"data.datamodules.{m}.image_size={SIZE}" for m in ("ms1m", "lookalike", "fairface", "celeba")]
    return compose("fours_synthetic", smoke_overrides("fours_synthetic", world, tmp) + TINY_NET + sizes + [
        "callbacks.evaluation=null", "data.datamodules.ms1m.batch_size=16", "data.datamodules.fairface.batch_size=8",
        "data.datamodules.celeba.batch_size=8", *extra])


def _trainer(tmp: Path, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp), **kw)


def _stack(dataset, n: int | None = None) -> dict:
    return default_collate([dataset[i] for i in range(len(dataset) if n is None else n)])


@torch.no_grad()
def _race_accuracy(module, batch) -> float:
    logits = module.race_classifier(module(batch["image"]))
    return float((logits.argmax(1) == batch["race"]).float().mean())


@torch.no_grad()
def _attribute_loss(module, batch) -> float:
    logits = module.attribute_classifier(module(batch["image"]))
    weights = (module.attribute_pos_weight, module.attribute_neg_weight)
    return float(L_attribute_class(logits, batch["attributes"], weights=weights))


def test_multitask_training_learns_race_and_attributes(tiny_world: Path, tmp_path: Path) -> None:
    """Eq. 10 without lookalikes (first meta-epoch): C_R / C_A learn on F's features, the checkpoint carries them."""
    pl.seed_everything(0)
    cfg = _cfg(tiny_world, tmp_path, ["module.race_weight=10", "module.attribute_weight=10"])  # the paper's Eq. 10
    datamodule, module = instantiate(cfg.data), instantiate(cfg.module)
    assert set(datamodule.datamodules) == {"ms1m", "lookalike", "fairface", "celeba"}
    fairface = _stack(FairFaceDataset(tiny_world / "fairface", "train", image_size=SIZE))
    celeba = _stack(CelebADataset(tiny_world / "celeba", "train", image_size=SIZE, align=True))
    before = copy.deepcopy(module)
    keys: list[list[str]] = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            keys.append(sorted(batch))

    trainer = _trainer(tmp_path, max_epochs=6, check_val_every_n_epoch=6, callbacks=[Spy()])
    trainer.fit(module, datamodule=datamodule)

    # the empty lookalike member never reached a batch; every step had b1, b3, b4
    assert keys and all(k == ["celeba", "fairface", "ms1m"] for k in keys)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert m["train/L_siam"] == 0.0 and not module.siam_enabled
    for key in ("train/L_arc", "train/L_race_class", "train/L_attribute_class", "train/race_accuracy",
                "train/attribute_accuracy", "val/accuracy", "val/race_accuracy", "val/attribute_accuracy",
                "val/attribute_mAP"):
        assert np.isfinite(m[key]), key
    # Eq. 10's total with the paper's weights
    assert (module.race_weight, module.attribute_weight) == (10.0, 10.0)
    total = m["train/L_arc"] + module.race_weight * m["train/L_race_class"] + \
        module.attribute_weight * m["train/L_attribute_class"]
    assert abs(m["train/loss"] - total) < 1e-3 * max(1.0, total)
    # Appendix C: inverse class frequency of the CelebA training split
    p = celeba["attributes"].mean(0)
    present = (p > 0) & (p < 1)
    assert torch.allclose(module.attribute_pos_weight[present], 1 / p[present], rtol=1e-4)
    assert torch.allclose(module.attribute_neg_weight[present], 1 / (1 - p[present]), rtol=1e-4)

    module.eval()
    race_acc, att_loss = _race_accuracy(module, fairface), _attribute_loss(module, celeba)
    before.eval()
    before.attribute_pos_weight.copy_(module.attribute_pos_weight)  # the weights setup() computed
    before.attribute_neg_weight.copy_(module.attribute_neg_weight)
    race_before, att_before = _race_accuracy(before, fairface), _attribute_loss(before, celeba)
    print(f"FairFace-train race accuracy {race_before:.3f} → {race_acc:.3f} (chance 1/7 = 0.143); "
          f"CelebA-train weighted attribute loss {att_before:.3f} → {att_loss:.3f}; "
          f"val race {m['val/race_accuracy']:.3f}, val attribute acc {m['val/attribute_accuracy']:.3f}")
    assert race_acc >= 0.6 and race_acc >= race_before + 0.3
    assert att_loss < 0.7 * att_before

    # the checkpoint holds C_R / C_A, and the loader gives back the same logits
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    OmegaConf.save(cfg, tmp_path / "run" / "config.yaml", resolve=True)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["siam_state"] == {"alpha_thr": 65.0, "siam_enabled": False}  # restored on resume
    state = saved["state_dict"]
    assert {"race_classifier.weight", "race_classifier.bias", "attribute_classifier.weight",
            "attribute_classifier.bias"} <= set(state)
    nets = load_feature_extractor(ckpt)
    x = fairface["image"][:6]
    with torch.no_grad():
        f = module(x)
        assert torch.allclose(nets.F(x), f, atol=1e-5)
        assert torch.allclose(nets.C_R(nets.F(x)), module.race_classifier(f), atol=1e-4)
        assert torch.allclose(nets.C_A(nets.F(x)), module.attribute_classifier(f), atol=1e-4)


# -- lookalikes -------------------------------------------------------------------------------------------------------


def _png(path: Path, image: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return f"images/{path.name}"


def _blur(image: np.ndarray) -> np.ndarray:
    """A PULSE-like stand-in for the upscale of i_GT's thumbnail: i_GT through a 16 px bottleneck."""
    small = Image.fromarray(image).resize((16, 16), Image.Resampling.BOX)
    return np.asarray(small.resize(image.shape[:2][::-1], Image.Resampling.BICUBIC))


def _write_lookalikes(root: Path, world: Path, n: int = 4) -> CelebADataset:
    """n records from n CelebA identities: i_GT, i = blur(i_GT), i' = blur(another image of that identity) (the
    last record has no i'), stored as 64 px FFHQ-framed PNGs as the generator would."""
    ffhq = CelebADataset(world / "celeba", "train", image_size=64, align="ffhq")
    by_id: dict[int, list[int]] = {}
    for k, ident in enumerate(ffhq.identities):
        by_id.setdefault(int(ident), []).append(k)
    lines = []
    for r, (ident, rows) in enumerate(sorted(by_id.items())[:n]):
        gt, gt_prime = (ffhq.load(k)[0] for k in rows[:2])
        rec = {"id": f"m1-{r}", "meta_epoch": 1, "identity": ident, "gt": _png(root / "images" / f"{r}_gt.png", gt),
               "i": _png(root / "images" / f"{r}_i.png", _blur(gt)), "i_prime": None, "gt_prime": None,
               "alpha_thr": 65.0, "seed": r, "downscale_loss": 0.001, "L_sim": 0.05}
        if r < n - 1:
            rec["i_prime"] = _png(root / "images" / f"{r}_iprime.png", _blur(gt_prime))
            rec["gt_prime"] = _png(root / "images" / f"{r}_gtprime.png", gt_prime)
        lines.append(json.dumps(rec))
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    return ffhq


@torch.no_grad()
def _lookalike_angles(module, batch) -> tuple[float, float]:
    f_gt, f_i = module(batch["image_gt"]), module(batch["image_i"])
    f_flip = module(batch["image_i"].flip(-1))
    return float(theta(f_gt, f_i).mean()), float(theta(f_i, f_flip).mean())


def test_siamese_loss_separates_lookalikes(tiny_world: Path, tmp_path: Path) -> None:
    root = tmp_path / "lookalikes"
    _write_lookalikes(root, tiny_world)
    ds = LookalikeDataset(root, image_size=SIZE)
    assert len(ds) == 4 and [ds[k]["has_i_prime"] for k in range(4)] == [True, True, True, False]
    batch = _stack(ds)
    assert batch["image_gt"].shape == (4, 3, SIZE, SIZE) and not batch["image_i_prime"][3].any()

    pl.seed_everything(0)
    cfg = _cfg(tiny_world, tmp_path, ["module.race_weight=0", "module.attribute_weight=0", "module.num_classes=10",
                                      "module.optimizer.lr=0.02"])
    module = instantiate(cfg.module)
    # α_thr below the start angle (≈ 13°): at 65° σ' ≈ 0.005 and the push would take hundreds of steps
    module.siam_enabled, module.alpha_thr = True, 30.0
    module.eval()
    gt_i_before, flip_before = _lookalike_angles(module, batch)
    module.train()
    data = MultiTaskDataModule({"lookalike": LookalikeDataModule(str(root), batch_size=4, image_size=SIZE)})
    trainer = _trainer(tmp_path, max_epochs=30)
    trainer.fit(module, datamodule=data)
    module.eval()
    gt_i_after, flip_after = _lookalike_angles(module, batch)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    print(f"θ(i_GT, i) {gt_i_before:.1f}° → {gt_i_after:.1f}°, θ(i, flip i) {flip_before:.1f}° → {flip_after:.1f}°, "
          f"L_siam last step {m['train/L_siam']:.3f}")
    assert gt_i_after > gt_i_before + 15 and gt_i_after > module.alpha_thr  # i_GT and i now read as different
    assert flip_after < module.alpha_thr and flip_after < 0.5 * gt_i_after  # i and its flip still the same person
    assert m["train/L_siam"] > 0 and m["train/L_arc"] == 0.0


def test_siam_disabled_is_not_computed(tiny_world: Path, tmp_path: Path) -> None:
    """Alg. 2's first meta-epoch: with siam_enabled False the lookalikes never reach F and L_siam is logged as 0."""
    root = tmp_path / "lookalikes"
    _write_lookalikes(root, tiny_world)
    cfg = _cfg(tiny_world, tmp_path, [f"data.datamodules.lookalike.root={root}",
                                      "data.datamodules.lookalike.batch_size=4"])
    datamodule, module = instantiate(cfg.data), instantiate(cfg.module)
    rows: list[int] = []
    forward = module.forward
    module.forward = lambda images: (rows.append(images.shape[0]), forward(images))[1]
    seen: list[list[str]] = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(sorted(batch))

    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[Spy()])
    trainer.fit(module, datamodule=datamodule)
    assert seen == [["celeba", "fairface", "lookalike", "ms1m"]]  # the set is on disk: the member joined
    assert rows == [16 + 8 + 8]  # b1 + b3 + b4: no i_GT / i / i' / flip(i)
    assert float(trainer.callback_metrics["train/L_siam"]) == 0.0

    module.siam_enabled = True
    rows.clear()
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    assert rows == [16 + 4 * 3 + 3 + 8 + 8]  # + i_GT, i, flip(i) for 4 lookalikes and i' for the 3 that have one
    assert float(trainer.callback_metrics["train/L_siam"]) > 0


def test_l_siam_with_some_i_prime_missing() -> None:
    g = torch.Generator().manual_seed(0)
    f_gt, f_i, f_ip, f_flip = (torch.randn(5, 8, generator=g) for _ in range(4))
    full = L_siam(f_gt, f_i, f_ip, f_flip, alpha_thr=60.0)
    assert torch.allclose(L_siam(f_gt, f_i, f_ip, f_flip, alpha_thr=60.0, has_i_prime=torch.ones(5, dtype=torch.bool)),
                          full)
    has = torch.tensor([True, False, True, False, False])
    part = L_siam(f_gt, f_i, f_ip[has], f_flip, alpha_thr=60.0, reduction="none", has_i_prime=has)
    want = L_siam(f_gt, f_i, None, f_flip, alpha_thr=60.0, reduction="none")
    want[has] += L_siam(None, f_i[has], f_ip[has], None, alpha_thr=60.0, reduction="none")
    assert torch.allclose(part, want)
    with pytest.raises(ValueError, match="i' features"):
        L_siam(f_gt, f_i, f_ip, f_flip, has_i_prime=has)


def test_average_precision_by_hand() -> None:
    scores = np.array([[0.9, 1.0], [0.8, 1.0], [0.7, 0.0], [0.1, 0.0]])
    labels = np.array([[1, 1], [0, 0], [1, 0], [0, 0]])
    # column 0: positives ranked 1 and 3 → (1/1 + 2/3) / 2; column 1: the tie at 1.0 enters together → P = 1/2
    assert np.allclose(average_precision(scores, labels), [(1 + 2 / 3) / 2, 0.5])


# -- the on-disk set --------------------------------------------------------------------------------------------------


def test_reader_aligns_refreshes_and_rejects_bad_lines(tiny_world: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    empty = LookalikeDataModule(str(root), batch_size=2, image_size=SIZE)
    empty.setup("fit")
    assert len(empty.train_dataloader()) == 0  # before the first generation
    ffhq = _write_lookalikes(root, tiny_world, n=2)
    assert empty.refresh() == 2 and len(empty.train_dataloader()) == 1

    # the FFHQ-framed image comes back as the ArcFace crop CelebA's own landmarks give (two warps vs one)
    arcface = CelebADataset(tiny_world / "celeba", "train", image_size=SIZE, align=True)
    got = LookalikeDataset(root, image_size=SIZE)[0]["image_gt"]
    want = arcface[int(np.flatnonzero(ffhq.identities == ffhq.identities.min())[0])]["image"]
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert float((got - want)[inner].abs().mean()) < 0.02  # measured 0.012; a 3 px shift gives 0.031

    lines = (root / "index.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["identity"] = "seven"
    (root / "index.jsonl").write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    with pytest.raises(DataFormatError, match=r"index\.jsonl:2: 'identity' is 'seven'"):
        LookalikeDataset(root)
    (root / "index.jsonl").write_text(lines[0] + "\n" + lines[1][:-5] + "\n")
    with pytest.raises(DataFormatError, match=r"index\.jsonl:2: not JSON"):
        LookalikeDataset(root)
    (root / "index.jsonl").write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(DataFormatError, match=r"index\.jsonl:2: duplicate id 'm1-0' \(first on line 1\)"):
        LookalikeDataset(root)
    del bad["i"]
    bad["identity"] = 3
    (root / "index.jsonl").write_text("\n" + lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataFormatError, match=r"index\.jsonl:3: missing key 'i'"):
        LookalikeDataset(root)

    # a missing image is a per-item error: raised, or counted and skipped
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    (root / json.loads(lines[1])["i"]).unlink()
    with pytest.raises(DataFormatError, match="1_i.png: missing image file"):
        LookalikeDataset(root)[1]
    skipping = LookalikeDataset(root, on_corrupt="skip")
    assert skipping[1] is None and skipping.corrupt_log.total == 1


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_two_ranks_with_lookalikes(tiny_world: Path, tmp_path: Path) -> None:
    """fours_synthetic end to end on two gloo ranks (ddp_spawn, tiny sizes): meta-epoch 0 trains without L_siam; after
    epoch 0 the lookalike callback generates the set (one identity per rank, tiny generator); it reaches epoch 1's
    batches through the reloaded loader and L_siam is on; every parameter gets its gradient under DDP and the
    validation metrics are gathered."""
    cfg = _cfg(tiny_world, tmp_path, ["trainer.max_epochs=2", "callbacks.lookalike.epochs_per_meta_epoch=1",
                                      "callbacks.lookalike.meta_epochs=2", "callbacks.lookalike.thumbnail_size=8",
                                      "trainer.limit_train_batches=2", "trainer.strategy=ddp_spawn",
                                      "trainer.devices=2"])
    run(cfg)
    run_dir = only_run_dir(tmp_path, "fours_synthetic")
    rows = history(run_dir)
    assert [r["step"] for r in rows] == [2, 4]
    assert rows[0]["metrics"]["train/L_siam"] == 0.0 and rows[1]["metrics"]["train/L_siam"] > 0.0
    for key in ("val/accuracy", "val/race_accuracy", "val/attribute_accuracy"):
        assert 0.0 <= rows[1]["metrics"][key] <= 1.0, key
    index = [json.loads(line) for line in (run_dir / "lookalikes" / "index.jsonl").read_text().splitlines()]
    assert len(index) == 2 and {r["meta_epoch"] for r in index} == {1}  # rank 0 wrote both ranks' lookalikes
    assert LookalikeDataset(run_dir / "lookalikes", image_size=SIZE)[0]["image_i"].shape == (3, SIZE, SIZE)
    assert rows[0]["metrics"]["train/alpha_thr"] != 65.0  # re-estimated before meta-epoch 0 (Alg. 1)
    assert rows[1]["metrics"]["train/alpha_thr"] == pytest.approx(index[0]["alpha_thr"])  # the set's α_thr
    assert (run_dir / "results.json").exists()
