"""Lookalike generation (seed paper Alg. 2) and its refresh callback, on the tiny world with the random 32 px
StyleGAN2 and a random tiny IResNet F: the searched lookalikes fit their thumbnails and follow L_sim, the set on disk
round-trips and only grows, and the callback sets α_thr / siam_enabled per meta-epoch and survives a resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from callbacks.lookalike import LookalikeRefresh
from datamodules.celeba import CelebADataset, CelebAPairs
from lrface.lookalike import (
    INDEX_FIELDS,
    PRIME_SEED_OFFSET,
    add_to_index,
    choose_identity_pairs,
    generate_lookalikes,
    make_thumbnails,
    read_index,
    write_lookalikes,
)
from lrface.metrics.angles import angles_deg, best_angle_threshold
from lrface.nets.iresnet import get_model
from lrface.pulse import PulseSearch
from lrface.weights import FaceFeatures, FeatureNets, load_generator
from tests.conftest import TINY_GENERATOR

THUMB = 8  # 32 px generator → 8 px thumbnails (factor 4)
SEARCH = {"steps": 15, "eps": 1e-6}  # eps out of reach: every sample runs the same number of steps
# A random IResNet puts faces ~10° apart: α_thr = 0 keeps σ((θ − α_thr)/γ_temp) on its slope there.
ALPHA, GAMMA = 0.0, 5.0


def tiny_backbone(seed: int = 3) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_model("r18", widths=[8, 8, 16, 16], num_features=32, input_size=32)


@pytest.fixture(scope="module")
def generator_path(tiny_world: Path) -> Path:
    return Path(tiny_world) / TINY_GENERATOR


@pytest.fixture(scope="module")
def fit_path(tmp_path_factory, generator_path: Path) -> Path:
    from lrface.pulse import gaussian_fit

    path = tmp_path_factory.mktemp("fit") / "gaussian_fit.pt"
    torch.save(gaussian_fit(load_generator(generator_path), n_samples=4000, batch=2000, seed=0), path)
    return path


@pytest.fixture(scope="module")
def generated(tiny_world: Path, generator_path: Path, fit_path: Path) -> dict:
    """The same four CelebA-train pairs and seeds searched with λ = 0 and λ = 20."""
    gen = load_generator(generator_path)
    fit = torch.load(fit_path, weights_only=True)
    nets = FeatureNets(FaceFeatures(tiny_backbone().eval(), 32), None, None)
    ds = CelebADataset(Path(tiny_world) / "celeba", "train", align="ffhq", image_size=32)
    chosen = choose_identity_pairs(ds.identities, 4, np.random.default_rng(0))
    pairs = [(identity, ds[a]["image"], ds[b]["image"]) for identity, a, b in chosen]
    seeds = [11, 12, 13, 14]
    kw = {"thumbnail_size": THUMB, "search_kwargs": SEARCH, "alpha_thr": ALPHA, "gamma_temp": GAMMA,
          "seeds": seeds, "device": "cpu", "batch_size": 3}  # 3: one full and one partial batch
    out = {lam: generate_lookalikes(nets, gen, fit, pairs, lambda_sim=lam, meta_epoch=1, **kw) for lam in (0.0, 20.0)}
    return {"records": out, "pairs": pairs, "seeds": seeds, "gen": gen, "fit": fit, "chosen": chosen}


def test_choose_identity_pairs_draws_two_distinct_images_of_eligible_identities():
    ids = np.array([5, 5, 7, 9, 9, 9, 3, 8, 8])  # 7 and 3 have a single image
    for seed in range(5):
        pairs = choose_identity_pairs(ids, 8, np.random.default_rng(seed))
        assert len(pairs) == 8
        for identity, a, b in pairs:
            assert a != b and ids[a] == ids[b] == identity and identity in (5, 8, 9)
        assert sorted(p[0] for p in pairs[:3]) == [5, 8, 9]  # without replacement while identities last
        assert pairs == choose_identity_pairs(ids, 8, seed)  # an int seed is the same stream
    both = {tuple(sorted(p[1:])) for s in range(20) for p in choose_identity_pairs(ids, 3, s) if p[0] == 9}
    assert both == {(3, 4), (3, 5), (4, 5)}  # every two-image choice of the three-image identity occurs
    assert choose_identity_pairs(ids, 0, 0) == []
    with pytest.raises(ValueError, match="two images"):
        choose_identity_pairs(np.arange(6), 1, 0)


def test_lookalikes_fit_their_thumbnails_and_follow_L_sim(generated):
    plain, constrained = generated["records"][0.0], generated["records"][20.0]
    pairs, seeds = generated["pairs"], generated["seeds"]
    assert [r["id"] for r in plain] == [f"m01-{s}" for s in seeds]
    for rec, (identity, gt, gt_prime) in zip(constrained, pairs):
        assert rec["identity"] == identity and rec["meta_epoch"] == 1 and rec["alpha_thr"] == ALPHA
        assert torch.equal(rec["gt"], gt) and torch.equal(rec["gt_prime"], gt_prime)
        assert rec["i"].shape == rec["i_prime"].shape == (3, 32, 32) and rec["lr"].shape == (3, THUMB, THUMB)
        assert torch.equal(rec["lr"], make_thumbnails(gt[None], THUMB)[0])
        assert 0 <= float(rec["i"].min()) and float(rec["i"].max()) <= 1
        assert (rec["i"] - rec["i_prime"]).abs().mean() > 0.01  # different thumbnail, different seed
    # the search lowered the downscale loss of every lookalike against its random start (same seeds, 0 steps)
    thumbs = torch.stack([t for r in plain for t in (r["lr"], r["lr_prime"])])
    start_seeds = [s + off for s in seeds for off in (0, PRIME_SEED_OFFSET)]
    start = PulseSearch(generated["gen"], generated["fit"], steps=0, eps=1e-6).search(thumbs, start_seeds)
    start = start["downscale_loss"].view(-1, 2)
    for records in (plain, constrained):
        end = torch.tensor([[r["downscale_loss"], r["downscale_loss_prime"]] for r in records])
        assert (end < 0.5 * start).all(), (start, end)
    # λ = 0 is plain PULSE from seed (i) and seed + PRIME_SEED_OFFSET (i'), whatever the batching (3 pairs there;
    # other batch shapes change float rounding only, which Adam's ±lr first steps amplify: 6e-3 after 15 steps on an
    # AMD EPYC)
    again = PulseSearch(generated["gen"], generated["fit"], **SEARCH).search(thumbs, start_seeds)["images"]
    assert torch.allclose(again, torch.stack([t for r in plain for t in (r["i"], r["i_prime"])]), atol=3e-2)
    # the reference of L_sim(i_LR) is F of the aligned bicubic upscale of the thumbnail
    from lrface.align import FixedAlignment

    net, align = tiny_backbone().eval(), FixedAlignment.for_generator(generated["gen"], size=32)
    with torch.no_grad():
        up = torch.nn.functional.interpolate(thumbs, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
        ref = net(align(up) * 2 - 1)
        f_i = net(align(torch.stack([t for r in plain for t in (r["i"], r["i_prime"])])) * 2 - 1)
    expected = angles_deg(f_i, ref).view(-1, 2)
    got = torch.tensor([[r["angle_to_reference"], r["angle_to_reference_prime"]] for r in plain])
    assert torch.allclose(got, expected, atol=1e-3), (got, expected)
    # λ > 0 pulls F(i) toward F(upscaled i_LR): L_sim lower than with λ = 0 from the same seeds
    before = np.array([[r["L_sim"], r["L_sim_prime"]] for r in plain])
    after = np.array([[r["L_sim"], r["L_sim_prime"]] for r in constrained])
    assert (after[:, 0] < before[:, 0]).all(), (before, after)
    assert (after < before).sum() >= 6 and before.mean() - after.mean() > 0.05, (before, after)
    angle_before = np.mean([r["angle_to_reference"] for r in plain])
    assert np.mean([r["angle_to_reference"] for r in constrained]) < angle_before - 1.0


def _pngs(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / "images").glob("*.png"))}


def test_write_read_round_trip_is_atomic_and_only_grows(generated, tmp_path):
    first = generated["records"][20.0]
    lines = write_lookalikes(tmp_path, first)
    index = read_index(tmp_path)
    assert index == lines and [list(line) for line in index] == [list(INDEX_FIELDS)] * len(first)
    for line, rec in zip(index, first):
        assert line["i"] == f"images/{rec['id']}_i.png" and line["gt_prime"] == f"images/{rec['id']}_gtprime.png"
        assert line["L_sim"] == rec["L_sim"] and line["seed"] == rec["seed"] and line["alpha_thr"] == ALPHA
        for key in ("gt", "i", "i_prime", "gt_prime"):
            stored = np.asarray(Image.open(tmp_path / line[key]))
            assert stored.dtype == np.uint8 and stored.shape == (32, 32, 3)
            expected = (rec[key].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            assert np.array_equal(stored, expected)
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    old_text, old_pngs = (tmp_path / "index.jsonl").read_text(), _pngs(tmp_path)

    # a second meta-epoch adds; nothing of the first changes; an i' may be missing
    second = [{**r, "id": r["id"].replace("m01", "m02"), "meta_epoch": 2} for r in generated["records"][0.0]]
    second[0] = {**second[0], "i_prime": None, "gt_prime": None}
    write_lookalikes(tmp_path, second)
    index = read_index(tmp_path)
    assert len(index) == 8 and [line["meta_epoch"] for line in index] == [1] * 4 + [2] * 4
    assert (tmp_path / "index.jsonl").read_text().startswith(old_text)
    assert all(_pngs(tmp_path)[name] == data for name, data in old_pngs.items())
    assert index[4]["i_prime"] is None and index[4]["gt_prime"] is None
    assert len(_pngs(tmp_path)) == 16 + 2 + 3 * 4  # the new record without i' has two images
    # writing a record again replaces its line instead of duplicating it
    write_lookalikes(tmp_path, [{**second[1], "L_sim": 0.5}])
    index = read_index(tmp_path)
    assert len(index) == 8 and index[5]["L_sim"] == 0.5
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_index_errors_name_file_and_line(generated, tmp_path):
    rec = generated["records"][0.0][0]
    with pytest.raises(FileNotFoundError, match="not written before its index line"):
        add_to_index(tmp_path, [{**{k: rec[k] for k in INDEX_FIELDS if k not in ("gt", "i", "i_prime", "gt_prime")},
                                 "gt": "images/x_gt.png", "i": "images/x_i.png", "i_prime": None, "gt_prime": None}])
    assert read_index(tmp_path) == []
    write_lookalikes(tmp_path, [rec])
    good = (tmp_path / "index.jsonl").read_text()
    (tmp_path / "index.jsonl").write_text(good + '{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"index\.jsonl:2: missing keys"):
        read_index(tmp_path)
    (tmp_path / "index.jsonl").write_text(good + "{not json\n")
    with pytest.raises(ValueError, match=r"index\.jsonl:2: not JSON"):
        read_index(tmp_path)
    (tmp_path / "index.jsonl").write_text(good + good)
    with pytest.raises(ValueError, match="repeats"):
        read_index(tmp_path)
    line = json.loads(good)
    (tmp_path / "index.jsonl").write_text(json.dumps({**line, "i": "/etc/passwd"}) + "\n")
    with pytest.raises(ValueError, match=r"index\.jsonl:1: i="):
        read_index(tmp_path)
    with pytest.raises(ValueError, match="cannot name a file"):
        write_lookalikes(tmp_path, [{**rec, "id": "../evil"}])


# -- the callback ------------------------------------------------------------------------------------------------------


class FakeReader:
    """What the callback needs of the lookalike DataModule: ``root`` and ``refresh()`` (records the set size)."""

    def __init__(self, root: Path | None):
        self.root, self.sizes = root, []

    def refresh(self) -> None:
        self.sizes.append(len(read_index(self.root)))


class StubData(pl.LightningDataModule):
    def __init__(self, directory: Path, reader_root: Path | None):
        super().__init__()
        self.datamodules = {"lookalike": FakeReader(reader_root)}
        self.directory, self.loaded_sizes = directory, []

    def train_dataloader(self):
        self.loaded_sizes.append(len(read_index(self.directory)))  # the set a real member's loader would hold
        images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        return DataLoader(TensorDataset(images), batch_size=2)


class StubModule(pl.LightningModule):
    """The module side of the contract: ``backbone``, ``alpha_thr``, ``siam_enabled``."""

    def __init__(self, directory: Path):
        super().__init__()
        self.backbone = tiny_backbone()
        self.alpha_thr, self.siam_enabled = 65.0, False
        self.directory, self.seen = directory, []

    def on_train_epoch_start(self) -> None:  # after the callback's hook
        assert self.backbone.training  # generation restored train mode
        self.seen.append((self.current_epoch, self.alpha_thr, self.siam_enabled, len(read_index(self.directory))))

    def training_step(self, batch, batch_idx):
        return self.backbone(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.backbone.parameters(), lr=0.05)


def _callback(world: Path, generator_path: Path, fit_path: Path, meta_epochs: int = 2) -> LookalikeRefresh:
    return LookalikeRefresh(generator=str(generator_path), celeba_root=Path(world) / "celeba", epochs_per_meta_epoch=1,
                            meta_epochs=meta_epochs, identities_per_meta_epoch=3, thumbnail_size=THUMB,
                            search={"steps": 6, "eps": 1e-6}, lambda_sim=10.0, gamma_temp=GAMMA, pairs_for_alpha=15,
                            seed=4, gaussian_fit=str(fit_path), batch_size=2, gather_every=2)


def _fit(root: Path, callback: LookalikeRefresh, max_epochs: int, ckpt_path: Path | None = None, reload: int = 1):
    directory = root / "lookalikes"
    module, data = StubModule(directory), StubData(directory, None if ckpt_path is None else directory)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, reload_dataloaders_every_n_epochs=reload,
                         default_root_dir=str(root),
                         callbacks=[callback, ModelCheckpoint(dirpath=root / "ckpt", filename="{epoch}",
                                                              save_top_k=-1, every_n_epochs=1)])
    trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
    return trainer, module, data


def _expected(cb: LookalikeRefresh, world: Path, generator_path: Path, fit_path: Path, ckpt: Path, k: int,
              alpha: float) -> list[dict]:
    """Meta-epoch k's lookalikes made directly with the F stored in ``ckpt`` (the F at generation time)."""
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    net = tiny_backbone()
    net.load_state_dict({key[len("backbone."):]: v for key, v in state.items() if key.startswith("backbone.")})
    ds = CelebADataset(Path(world) / "celeba", "train", align="ffhq", image_size=32)
    chosen, seeds, ids = cb.plan(k, ds.identities)
    pairs = [(identity, ds[a]["image"], ds[b]["image"]) for identity, a, b in chosen]
    return generate_lookalikes(FeatureNets(FaceFeatures(net.eval(), 32), None, None), load_generator(generator_path),
                               torch.load(fit_path, weights_only=True), pairs, THUMB, cb.search, cb.lambda_sim, alpha,
                               cb.gamma_temp, seeds, "cpu", meta_epoch=k, ids=ids)


def _assert_written(directory: Path, index: list[dict], expected: list[dict]) -> None:
    assert [line["id"] for line in index] == [rec["id"] for rec in expected]
    for line, rec in zip(index, expected):
        assert line["identity"] == rec["identity"] and line["seed"] == rec["seed"]
        assert line["L_sim"] == pytest.approx(rec["L_sim"], abs=1e-3)
        for key in ("gt", "i", "i_prime", "gt_prime"):
            stored = np.asarray(Image.open(directory / line[key]), dtype=np.int16)
            want = (rec[key] * 255).round().to(torch.int16).permute(1, 2, 0).numpy()
            assert np.abs(stored - want).max() <= 1, (line["id"], key)


def test_callback_meta_epochs_and_resume(tiny_world, generator_path, fit_path, tmp_path):
    cb = _callback(tiny_world, generator_path, fit_path)
    trainer, module, data = _fit(tmp_path, cb, max_epochs=2)
    directory = tmp_path / "lookalikes"  # the default: <default_root_dir>/lookalikes
    index = read_index(directory)

    # epoch 0: α_thr of the initial F on CelebA-train same/diff pairs, no L_siam, empty set
    ds = CelebADataset(Path(tiny_world) / "celeba", "train", align=True, image_size=32)
    same, diff = CelebAPairs(ds, 15, same=True, seed=4), CelebAPairs(ds, 15, same=False, seed=5)
    net = tiny_backbone().eval()
    with torch.no_grad():
        angles = [np.array([float(angles_deg(net(p[i]["image1"][None] * 2 - 1), net(p[i]["image2"][None] * 2 - 1)))
                            for i in range(len(p))]) for p in (same, diff)]
    alpha0 = best_angle_threshold(*angles)
    assert cb.alpha_thrs[0] == pytest.approx(alpha0, abs=1e-3) and alpha0 != 65.0
    assert module.seen[0] == (0, cb.alpha_thrs[0], False, 0)
    # before epoch 1: three lookalike triples written with the new α_thr, L_siam switched on, reader refreshed
    alpha1 = cb.alpha_thrs[1]
    assert module.seen[1] == (1, alpha1, True, 3) and alpha1 != alpha0  # F trained for an epoch
    assert [line["id"] for line in index] == ["m01-000000", "m01-000001", "m01-000002"]
    assert all(line["meta_epoch"] == 1 and line["alpha_thr"] == alpha1 for line in index)
    # exactly the lookalikes generate_lookalikes gives with the F of that moment (stored in the epoch-0 checkpoint)
    _assert_written(directory, index, _expected(cb, tiny_world, generator_path, fit_path,
                                                tmp_path / "ckpt" / "epoch=0.ckpt", 1, alpha1))
    # the reader without a folder got the callback's in setup; refreshed then, at the start and after generation
    reader = data.datamodules["lookalike"]
    assert reader.root == directory and reader.sizes == [0, 0, 3]
    assert data.loaded_sizes == [0, 3]  # epoch 1's loader holds the new set
    assert cb.generations == 1 and cb.prepared == {0, 1}
    metrics = trainer.callback_metrics
    assert float(metrics["lookalike/alpha_thr"]) == pytest.approx(alpha1)
    assert float(metrics["lookalike/count"]) == 3 and float(metrics["lookalike/generated"]) == 3
    assert np.isfinite(float(metrics["lookalike/mean_angle_to_gt"]))
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    text = (directory / "index.jsonl").read_text()

    # resume from the checkpoint written before epoch 1: meta-epoch 1 is not generated again
    cb2 = _callback(tiny_world, generator_path, fit_path)
    _, module2, data2 = _fit(tmp_path, cb2, max_epochs=2, ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    assert cb2.generations == 0 and module2.seen == [(1, alpha1, True, 3)]
    assert (directory / "index.jsonl").read_text() == text and data2.datamodules["lookalike"].sizes == [3]

    # the same without the callback's state in the checkpoint: the index on disk says meta-epoch 1 is done
    ckpt = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=False)
    ckpt["callbacks"] = {k: v for k, v in ckpt["callbacks"].items() if "LookalikeRefresh" not in k}
    torch.save(ckpt, tmp_path / "stateless.ckpt")
    cb3 = _callback(tiny_world, generator_path, fit_path)
    _, module3, _ = _fit(tmp_path, cb3, max_epochs=2, ckpt_path=tmp_path / "stateless.ckpt")
    assert cb3.generations == 0 and module3.seen == [(1, alpha1, True, 3)]

    # a third meta-epoch whose generation never happened (the first run stopped at 2 epochs) is generated on
    # resume, the set grows, and the train loader is rebuilt so the epoch sees it (even without per-epoch reloads,
    # where Lightning would keep the loader it built before on_train_start)
    cb4 = _callback(tiny_world, generator_path, fit_path, meta_epochs=3)
    with pytest.warns(UserWarning, match="reload_dataloaders_every_n_epochs=1"):
        _, module4, data4 = _fit(tmp_path, cb4, max_epochs=3, ckpt_path=tmp_path / "ckpt" / "epoch=1.ckpt", reload=0)
    grown = read_index(directory)
    assert cb4.generations == 1 and [line["meta_epoch"] for line in grown] == [1, 1, 1, 2, 2, 2]
    assert (directory / "index.jsonl").read_text().startswith(text)
    assert module4.seen == [(2, cb4.alpha_thrs[2], True, 6)] and data4.loaded_sizes == [3, 6]


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_ranks_share_generation_and_rank0_writes_it(tiny_world, generator_path, fit_path, tmp_path):
    """2 processes (gloo): 3 lookalikes split 2 + 1 across ranks in rounds of one, gathered and written by rank 0,
    equal to a one-process generation with the checkpointed F (rank 1's own BatchNorm statistics are not used)."""
    cb = _callback(tiny_world, generator_path, fit_path)
    cb.gather_every = 1
    directory = tmp_path / "lookalikes"
    trainer = pl.Trainer(accelerator="cpu", strategy="ddp_spawn", devices=2, max_epochs=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
                         default_root_dir=str(tmp_path),
                         callbacks=[cb, ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1,
                                                        every_n_epochs=1)])
    trainer.fit(StubModule(directory), datamodule=StubData(directory, directory))
    index = read_index(directory)
    assert len({line["alpha_thr"] for line in index}) == 1
    _assert_written(directory, index, _expected(cb, tiny_world, generator_path, fit_path,
                                                tmp_path / "ckpt" / "epoch=0.ckpt", 1, index[0]["alpha_thr"]))
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_setup_points_a_rootless_reader_at_the_set_and_warns_on_a_mismatch(tmp_path, generator_path, fit_path,
                                                                            tiny_world):
    from types import SimpleNamespace

    module = StubModule(tmp_path / "lookalikes")
    for reader_root, reload, warning in ((tmp_path / "elsewhere", 1, "DataModule reads"),
                                         (tmp_path / "lookalikes", 0, "reload_dataloaders_every_n_epochs=1")):
        cb = _callback(tiny_world, generator_path, fit_path)
        data = StubData(tmp_path, reader_root)
        trainer = SimpleNamespace(default_root_dir=str(tmp_path), datamodule=data,
                                  reload_dataloaders_every_n_epochs=reload)
        with pytest.warns(UserWarning, match=warning):
            cb.setup(trainer, module, "fit")
        assert cb.dir == tmp_path / "lookalikes" and data.datamodules["lookalike"].root == reader_root
    with pytest.raises(AttributeError, match="siam_enabled"):
        del module.siam_enabled
        _callback(tiny_world, generator_path, fit_path).setup(trainer, module, "fit")
