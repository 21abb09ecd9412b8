"""PulseSearchModule + ThumbnailDataModule + PulseWriter: Trainer.predict end to end on the tiny world (tiny random
StyleGAN2 at 32 px, thumbnails 8×8 of the synthetic CelebA test split), determinism across batch sizes and ranks,
and the Eq. 4–8 constraints moving what they should against λ = 0."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from callbacks.pulse_writer import PulseWriter
from datamodules.thumbnails import ThumbnailDataModule
from lightning_modules.pulse_search import PulseSearchModule, load_gaussian_fit
from lrface.losses.pulse import BicubicDownsample
from lrface.nets.iresnet import get_model
from tests.conftest import TINY_GENERATOR

SIZE, HR = 8, 32
SEARCH = {"steps": 12, "eps": 1e-6}  # eps out of reach: every sample runs the full, comparable trajectory
BACKBONE = {"name": "r18", "widths": [8, 8, 16, 16], "num_features": 32, "input_size": 32}


@pytest.fixture(scope="module")
def generator_path(tiny_world: Path) -> Path:
    return Path(tiny_world) / TINY_GENERATOR


@pytest.fixture(scope="module")
def fit_path(tmp_path_factory, generator_path: Path) -> Path:
    """A PULSE-format gaussian_fit.pt for the tiny generator (saves recomputing it in every module)."""
    from lrface.pulse import gaussian_fit
    from lrface.weights import load_generator

    fit = gaussian_fit(load_generator(generator_path), n_samples=4000, batch=2000, seed=0)
    path = tmp_path_factory.mktemp("fit") / "gaussian_fit.pt"
    torch.save(fit, path)
    return path


@pytest.fixture(scope="module")
def features_path(tmp_path_factory, generator_path: Path) -> Path:
    """A FeatureExtractorModule-style checkpoint: random tiny IResNet + race (7) and attribute (40) classifiers.

    A random IResNet's embeddings share one dominant direction (faces ~9° apart), so random linear heads would be
    almost constant; the heads act on embeddings standardised over the generator's samples instead.
    """
    from lrface.inference import to_model_range
    from lrface.weights import load_generator

    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(3)
        net = get_model("r18", widths=[8, 8, 16, 16], num_features=32, input_size=32).eval()
        gen = load_generator(generator_path)
        f = net(to_model_range(((gen(torch.randn(64, 32)) + 1) / 2).clamp(0, 1)))
        race, attr = torch.nn.Linear(32, 7), torch.nn.Linear(32, 40)
    mean, std = f.mean(0), f.std(0)
    with torch.no_grad():
        for head in (race, attr):
            head.weight.div_(std)
            head.bias.sub_(head.weight @ mean)
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    state.update({f"race_classifier.{k}": v for k, v in race.state_dict().items()})
    state.update({f"attribute_classifier.{k}": v for k, v in attr.state_dict().items()})
    path = tmp_path_factory.mktemp("features") / "F.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def datamodule(world: Path, batch_size: int = 4, limit: int | None = 4) -> ThumbnailDataModule:
    return ThumbnailDataModule(source="celeba", root=str(Path(world) / "celeba"), size=SIZE, hr_size=HR,
                               split="test", limit=limit, batch_size=batch_size)


def module(generator_path: Path, fit_path: Path, **kw) -> PulseSearchModule:
    kw.setdefault("search", SEARCH)
    return PulseSearchModule(str(generator_path), gaussian_fit=str(fit_path), seed=5, **kw)


def trainer(out: Path, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      callbacks=[PulseWriter()], default_root_dir=str(out), **kw)


def run_direct(mod: PulseSearchModule, dm: ThumbnailDataModule) -> list[dict]:
    """predict_step over the whole loader without a Trainer (quick: no writer, no Lightning loop)."""
    mod.setup("predict")
    dm.setup("predict")
    return [rec for batch in dm.predict_dataloader() for rec in mod.predict_step(batch, 0)]


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_celeba_thumbnails_are_pulse_downscales_of_aligned_ground_truth(tiny_world):
    dm = datamodule(tiny_world, limit=None)
    dm.setup("predict")
    assert len(dm.dataset) == 5  # the tiny world's test split
    item = dm.dataset[1]
    assert item["image"].shape == (3, SIZE, SIZE) and item["hr"].shape == (3, HR, HR)
    torch.testing.assert_close(item["image"], BicubicDownsample(HR // SIZE)(item["hr"][None])[0].clamp(0, 1))
    # the ground truth is framed like the generators: its landmarks sit on the FFHQ template (least squares fit)
    from lrface.align import ffhq_template

    assert float((item["landmarks"] - ffhq_template(HR)).abs().max()) < 1.5
    with pytest.raises(ValueError, match="multiple"):
        ThumbnailDataModule(source="celeba", root=str(Path(tiny_world) / "celeba"), size=10, hr_size=HR).setup()


def test_folder_thumbnails_any_format_names_and_corrupt_files(tmp_path):
    from datamodules.errors import DataFormatError
    from lrface.upscale import read_photo

    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # red at half opacity: composited over black
    Image.fromarray(rgba).save(root / "a.png")
    Image.fromarray(np.full((SIZE, SIZE), 40000, np.uint16)).save(root / "gray16.png")  # 16-bit grayscale
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(root / "sub" / "a.png")
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(root / "gray16.jpg")  # stem clash with gray16.png
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = ThumbnailDataModule(source="folder", root=str(root), size=SIZE, on_corrupt="skip").build()
    assert ds.names == ["a", "broken", "gray16_jpg", "gray16_png", "sub__a"]
    assert ds[1] is None and ds.corrupt_log.total == 1
    a, gray = ds[0], ds[3]
    assert a["image"].shape == (3, SIZE, SIZE) and a["detected"] is False
    torch.testing.assert_close(a["image"][:, 0, 0], torch.tensor([100, 0, 0]) / 255.0, atol=1 / 255, rtol=0)
    torch.testing.assert_close(gray["image"], torch.full((3, SIZE, SIZE), round(40000 / 65535 * 255) / 255.0))
    assert read_photo(root / "gray16.png").dtype == np.uint16
    strict = ThumbnailDataModule(source="folder", root=str(root), size=SIZE).build()
    with pytest.raises(DataFormatError, match="broken.png"):
        strict[1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="empty: no image files"):
        ThumbnailDataModule(source="folder", root=str(tmp_path / "empty"), size=SIZE).build()


def test_folder_photo_is_detected_and_aligned_with_mtcnn(tmp_path):
    """A real photo (skimage's astronaut, 512²) becomes a face thumbnail through MTCNN + the FFHQ template."""
    skimage_data = pytest.importorskip("skimage.data")
    mtcnn = Path(__file__).resolve().parent.parent / "weights" / "mtcnn"
    if not (mtcnn / "onet.pt").exists():
        pytest.skip("MTCNN weights not fetched (make setup)")
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.jpg", quality=95)
    dm = ThumbnailDataModule(source="folder", root=str(tmp_path / "astronaut.jpg"), size=16, hr_size=64,
                             mtcnn_weights=str(mtcnn))
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["name"] == ["astronaut"] and bool(batch["detected"][0])
    plain = ThumbnailDataModule(source="folder", root=str(tmp_path), size=16, hr_size=64).build()[0]
    assert plain["detected"] is False  # no detector: the whole photo, resized
    assert float((batch["image"][0] - plain["image"]).abs().mean()) > 0.05  # the face crop is not the whole photo


def test_predict_writes_every_sample_once_with_metadata(tiny_world, generator_path, fit_path, tmp_path):
    mod = module(generator_path, fit_path)
    assert list(mod.parameters()) == [] and mod.state_dict() == {}  # nothing trained, nothing checkpointed
    tr = trainer(tmp_path)
    tr.predict(mod, datamodule=datamodule(tiny_world, batch_size=3, limit=None), return_predictions=False)
    out = tmp_path / "upscaled"
    names = sorted(p.stem for p in out.glob("*.json") if p.name != "summary.json")
    assert len(names) == 5
    assert not [p for p in out.iterdir() if "tmp" in p.name]  # atomic writes leave no temporaries
    dm = datamodule(tiny_world, limit=None)
    dm.setup()
    for name in names:
        meta = json.loads((out / f"{name}.json").read_text())
        idx = meta["index"]
        assert meta["name"] == name == dm.dataset[idx]["name"] and meta["seed"] == 5 + idx
        assert set(meta["losses"]) == {"L2", "GEOCROSS", "TOTAL"}
        assert meta["losses"]["TOTAL"] == pytest.approx(100 * meta["losses"]["L2"] + 0.05 * meta["losses"]["GEOCROSS"],
                                                        rel=1e-5)
        assert meta["steps"] == SEARCH["steps"] and meta["converged"] is False and meta["downscale_loss"] > 0
        assert meta["accepted"] is True and meta["active_constraints"] == []  # no constraint, nothing to reject
        assert read_png(out / f"{name}.png").shape == (HR, HR, 3)
        lr = read_png(out / f"{name}_lr.png")
        expected = (dm.dataset[idx]["image"].permute(1, 2, 0).numpy() * 255).round()
        assert np.abs(lr - expected).max() <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(s["index"] for s in summary["samples"]) == list(range(5)) and summary["duplicates"] == 0
    assert summary["summary"]["samples"] == 5 and summary["summary"]["converged_rate"] == 0.0
    assert summary["summary"]["accepted_rate"] == 1.0
    assert tr.callback_metrics["pulse/mean_downscale_loss"] == pytest.approx(summary["summary"]["mean_downscale_loss"])
    assert tr.callbacks[0].results["pulse"]["samples"] == 5


def test_results_do_not_depend_on_batch_size(tiny_world, generator_path, fit_path):
    # One step: per-sample seeds, latents and losses see no other sample, so batch 1 and batch 4 agree to float
    # rounding. Over a full search they agree only loosely: batched and single convolutions round differently on some
    # CPUs (measured on an AMD EPYC: 1e-6 after 1 step), and Adam's first steps, ±lr on components whose gradient is
    # ~0, amplify that to ~1e-2 by step 10.
    for search, atol, rel in (({"steps": 1, "eps": 1e-6}, 1e-4, 1e-3), (SEARCH, 0.05, 0.05)):
        one = run_direct(module(generator_path, fit_path, search=search), datamodule(tiny_world, batch_size=1))
        four = run_direct(module(generator_path, fit_path, search=search), datamodule(tiny_world, batch_size=4))
        assert [r["index"] for r in one] == [r["index"] for r in four] == [0, 1, 2, 3]
        for a, b in zip(one, four):
            torch.testing.assert_close(a["image"], b["image"], atol=atol, rtol=0)
            assert a["downscale_loss"] == pytest.approx(b["downscale_loss"], rel=rel)
        assert float((one[0]["image"] - one[1]["image"]).abs().max()) > 0.05  # different thumbnails, different faces


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_spawn_writes_each_sample_once_and_matches_one_process(tiny_world, generator_path, fit_path, tmp_path):
    dm_kw = {"batch_size": 2, "limit": None}  # 5 samples over 2 ranks: an uneven split (3 + 2), no padding
    trainer(tmp_path / "one").predict(module(generator_path, fit_path), datamodule=datamodule(tiny_world, **dm_kw),
                                      return_predictions=False)
    two = trainer(tmp_path / "two", strategy="ddp_spawn", devices=2)
    two.predict(module(generator_path, fit_path), datamodule=datamodule(tiny_world, **dm_kw), return_predictions=False)
    one_dir, two_dir = tmp_path / "one" / "upscaled", tmp_path / "two" / "upscaled"
    pngs = sorted(p.name for p in two_dir.glob("*.png") if not p.stem.endswith("_lr"))
    assert pngs == sorted(p.name for p in one_dir.glob("*.png") if not p.stem.endswith("_lr")) and len(pngs) == 5
    for name in pngs:
        assert np.abs(read_png(two_dir / name) - read_png(one_dir / name)).max() <= 1
    summary = json.loads((two_dir / "summary.json").read_text())
    assert sorted(s["index"] for s in summary["samples"]) == list(range(5)) and summary["summary"]["samples"] == 5
    assert summary["duplicates"] == 0  # no rank wrote a sample another rank wrote
    assert sorted(s["rank"] for s in summary["samples"]) == [0, 0, 0, 1, 1]
    # the summary reaches the launching process (what the runner writes to results.json)
    assert float(two.callback_metrics["pulse/samples"]) == 5


def test_constraints_move_their_measures_against_lambda_zero(tiny_world, generator_path, fit_path, features_path):
    dm = datamodule(tiny_world)
    common = {"features": str(features_path), "backbone": BACKBONE, "align_size": 32,
              "search": {"steps": 15, "eps": 1e-6}}
    # the random F puts the faces ~9° apart: α_thr = 0 keeps σ((θ − α_thr)/γ_temp) on its slope there
    targets = {"alpha_thr": 0.0, "gamma_temp": 5.0, "race": "Black", "attributes": {"Smiling": 1}}

    def run(lambdas):
        return run_direct(module(generator_path, fit_path, constraints={"lambdas": lambdas, **targets}, **common), dm)

    base, ident, race, attr = run([0, 0, 0]), run([10, 0, 0]), run([0, 10, 0]), run([0, 0, 10])
    # λ = 0: measured, not optimised, never rejected
    assert all(set(r["losses"]) == {"L2", "GEOCROSS", "TOTAL"} and r["accepted"] for r in base)
    assert all(set(r["measures"]) == {"L_sim", "L_race", "L_att"} for r in base)
    assert all(r["race"] == "Black" and set(r["attribute_probs"]) == {"Smiling"} for r in base)
    assert all(r["angle_to_gt"] == r["angle_to_reference"] for r in base)  # reference=self: I_r is the ground truth
    for measure, sign, margin, key in ((ident, -1, 1.5, ("angle_to_reference",)), (race, 1, 0.05, ("race_prob",)),
                                       (attr, 1, 0.04, ("attribute_probs", "Smiling"))):
        after, before = np.array([_get(r, key) for r in measure]), np.array([_get(r, key) for r in base])
        assert (sign * (after - before) > 0).all(), (key, before, after)  # every sample moves the right way
        assert sign * (after.mean() - before.mean()) > margin, (key, before, after)
    # rejection (judged on the written image): exactly the samples whose active constraint ends above 0.1
    for records, term in ((ident, "L_sim"), (race, "L_race"), (attr, "L_att")):
        for r in records:
            assert set(r["losses"]) == {"L2", "GEOCROSS", term, "TOTAL"} and r["active_constraints"] == [term]
            assert r["accepted"] == (r["measures"][term] <= 0.1)
            assert r["losses"]["TOTAL"] == pytest.approx(
                100 * r["losses"]["L2"] + 0.05 * r["losses"]["GEOCROSS"] + 10 * r["losses"][term], rel=1e-5)
    # the measure of a term equals the search's value of it up to the final clamp of the image to [0, 1]
    assert max(abs(r["measures"]["L_race"] - r["losses"]["L_race"]) for r in race) < 0.05
    # a threshold between the samples' L_att values splits them: rejection follows each sample's own value
    values = sorted(r["measures"]["L_att"] for r in attr)
    mid = (values[0] + values[-1]) / 2
    split = run_direct(module(generator_path, fit_path, constraints={"lambdas": [0, 0, 10], **targets,
                                                                      "reject_threshold": mid}, **common), dm)
    assert [r["accepted"] for r in split] == [r["measures"]["L_att"] <= mid for r in attr]
    assert 0 < sum(r["accepted"] for r in split) < len(split)


def test_mtcnn_alignment_path(tiny_world, generator_path, fit_path, features_path):
    """align=mtcnn: landmarks from the real MTCNN on the detached images, the fixed warp where it finds no face."""
    mtcnn = Path(__file__).resolve().parent.parent / "weights" / "mtcnn"
    if not (mtcnn / "onet.pt").exists():
        pytest.skip("MTCNN weights not fetched (make setup)")
    mod = module(generator_path, fit_path, features=str(features_path), backbone=BACKBONE, align="mtcnn",
                 mtcnn_weights=str(mtcnn), search={"steps": 2, "eps": 1e-6},
                 constraints={"lambdas": [1, 0, 0], "alpha_thr": 0.0, "gamma_temp": 5.0})
    records = run_direct(mod, datamodule(tiny_world, limit=2))
    assert [r["active_constraints"] for r in records] == [["L_sim"], ["L_sim"]]
    assert all(0.0 <= r["angle_to_reference"] < 90.0 and 0.0 < r["measures"]["L_sim"] < 1.0 for r in records)


def _get(record: dict, key: tuple[str, ...]) -> float:
    for k in key:
        record = record[k]
    return float(record)


def test_gaussian_fit_file_and_errors(tiny_world, generator_path, fit_path, tmp_path):
    fit = load_gaussian_fit(fit_path, style_dim=32)
    mod = PulseSearchModule(str(generator_path), gaussian_fit=None, fit_samples=4000, fit_batch=2000)
    mod.setup("predict")  # computed like the fixture's: same seed, same numbers
    torch.testing.assert_close(mod.gaussian["mean"], fit["mean"])
    torch.testing.assert_close(mod.gaussian["std"], fit["std"])
    bad = tmp_path / "bad_fit.pt"
    torch.save({"mu": torch.zeros(32)}, bad)
    with pytest.raises(ValueError, match="bad_fit.pt.*'mean' and 'std'"):
        load_gaussian_fit(bad)
    with pytest.raises(ValueError, match="style_dim is 16"):
        load_gaussian_fit(fit_path, style_dim=16)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        PulseSearchModule(str(tmp_path / "nowhere.pt"))
    with pytest.raises(ValueError, match="unknown race 'Martian'"):
        PulseSearchModule(str(generator_path), features=str(fit_path), constraints={"race": "Martian"})
    with pytest.raises(ValueError, match="unknown CelebA attribute 'Grin'"):
        PulseSearchModule(str(generator_path), features=str(fit_path), constraints={"attributes": {"Grin": 1}})
    with pytest.raises(ValueError, match="need module.features"):
        PulseSearchModule(str(generator_path), constraints={"race": "east_asian"})
