"""The seed paper's evaluation (Tables 1–3) as Trainer.predict on the tiny world: the sets, the strategies, the
constraints moving what they should, the report files, and the pipeline runner that chains the quickstart."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from callbacks.upscaling_report import UpscalingReport, collect
from datamodules.upscaling_eval import UpscalingEvalDataModule
from lightning_modules.upscaling_evaluation import UpscalingEvaluationModule, celeba_strategies
from tests.conftest import TINY_FEATURES, TINY_GENERATOR, TINY_JUDGES

RES, THUMB = 32, 8
SEARCH = {"steps": 10, "eps": 1e-6}  # eps out of reach: every strategy runs the same number of steps


def datamodule(world: Path, **kw) -> UpscalingEvalDataModule:
    kw = {"pairs": 6, "celeba_images": 4, "fairface_images": 4, "alpha_pairs": 6, "batch_size": 4,
          "split": "train", **kw}  # the tiny world's test split holds one identity
    return UpscalingEvalDataModule(str(world / "celeba"), str(world / "fairface"), resolution=RES, **kw)


def module(world: Path, **kw) -> UpscalingEvaluationModule:
    kw = {"search": SEARCH, "thumbnail_size": THUMB, "fit_samples": 2000, "fit_batch": 1000,
          "attribute_mode": "joint", "keep_images": 2, **kw}
    return UpscalingEvaluationModule(str(world / TINY_GENERATOR), str(world / TINY_FEATURES),
                                     str(world / TINY_FEATURES), **kw)


def predict(world: Path, out: Path, mod: UpscalingEvaluationModule, dm: UpscalingEvalDataModule) -> UpscalingReport:
    report = UpscalingReport()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         callbacks=[report], default_root_dir=str(out))
    trainer.predict(mod, datamodule=dm, return_predictions=False)
    return report


def test_sets_are_tagged_framed_and_disjoint(tiny_world):
    dm = datamodule(tiny_world)
    dm.setup("predict")
    assert dm.set_names() == ["pairs", "celeba", "fairface"]
    pairs, celeba, fairface = (dm.sets[n] for n in dm.set_names())
    assert len(pairs) == 12 and sum(bool(pairs[i]["issame"]) for i in range(12)) == 6
    assert len(celeba) == 4 and len(fairface) == 4
    uids = [ds[i]["uid"] for ds in (pairs, celeba, fairface) for i in range(len(ds))]
    assert len(set(uids)) == len(uids)
    item = celeba[0]
    assert item["set"] == "celeba" and item["image"].shape == (3, RES, RES) and item["attributes"].shape == (40,)
    assert fairface[0]["image"].shape == (3, RES, RES) and 0 <= int(fairface[0]["race"]) < 7
    same, diff = dm.alpha_pairs()
    assert len(same) == len(diff) == 6 and same[0]["image1"].shape == (3, RES, RES)


def test_strategies_share_identical_searches():
    names = [s.name for s in celeba_strategies("gt", "gt", attributes=True)]
    keys = {s.name: s.key for s in celeba_strategies("gt", "gt", attributes=True)}
    assert keys["Lookalike-Ours"] == keys["F_ours + L_sim(I_LR)"]  # the same search when both references agree
    assert len(set(keys.values())) == len(names) - 2
    keys = {s.name: s.key for s in celeba_strategies("gt", "lr", attributes=True)}
    assert len(set(keys.values())) == len(keys)


@pytest.fixture(scope="module")
def evaluation(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("seed000")
    mod = module(tiny_world, race_judge=str(tiny_world / TINY_JUDGES["race"]),
                 attribute_judge=str(tiny_world / TINY_JUDGES["attributes"]),
                 lambdas={"sim": 20.0, "race": 1.0, "att": 1.0})
    report = predict(tiny_world, out, mod, datamodule(tiny_world))
    return out, report, mod


def test_report_files_tables_and_counts(evaluation):
    out, report, _ = evaluation
    for name in ("seed000.md", "seed000.json", "angle_histograms.png", "samples_lookalike.png", "samples_race.png",
                 "samples_attributes.png", "seed000_samples.jsonl"):
        assert (out / name).is_file(), name
    data = json.loads((out / "seed000.json").read_text())
    text = (out / "seed000.md").read_text()
    assert "51.5°±13.4" in text and "92.1%" in text and "96.0%" in text  # the paper's numbers beside ours
    records = [json.loads(line) for line in (out / "seed000_samples.jsonl").read_text().splitlines()]
    assert sorted(r["set"] for r in records) == ["celeba"] * 4 + ["fairface"] * 4 + ["pairs"] * 12
    tables = collect(records, ("Arched_Eyebrows", "Male", "Narrow_Eyes", "Smiling", "Wearing_Lipstick"))
    assert {k: len(v) for k, v in tables["angles"]["F_ours"].items()} == {
        "CelebA-Same": 6, "CelebA-Diff": 6, "PULSE-Pairs": 4, "Lookalike-Baseline": 4, "Lookalike-Ours": 4}
    assert set(tables["race"]) == {"originals", "L_SR", "F_baseline + L_sim(I_LR)", "F_ours + L_sim(I_LR)",
                                   "F_ours + L_race(r)"}
    assert set(tables["attributes"]) == {"originals", "L_SR", "F_baseline + L_sim(I_LR)", "F_ours + L_sim(I_LR)",
                                         "F_ours + L_att(a)"}
    assert all(p.shape == (4, 5) for p, _ in tables["attributes"].values())
    # Table 2's accuracy is recomputed from the per-sample verdicts
    pred, true = tables["race"]["L_SR"]
    assert data["table2"]["L_SR"]["accuracy"] == pytest.approx(float(np.mean(pred == true)))
    assert report.results["seed000"]["race_L_SR"] == pytest.approx(float(np.mean(pred == true)))


def test_identity_constraint_pulls_toward_ground_truth(evaluation):
    """Lookalike-* (L_SR + λ·L_sim(I_GT)) end closer to I_GT under the F that drove them than L_SR from the same
    start latent (both searches share seeds and step counts)."""
    out, _, _ = evaluation
    records = [json.loads(line) for line in (out / "seed000_samples.jsonl").read_text().splitlines()]
    celeba = [r for r in records if r["set"] == "celeba"]
    sr = np.array([r["angles"]["PULSE-Pairs"]["F_ours"] for r in celeba])
    sim = np.array([r["angles"]["Lookalike-Ours"]["F_ours"] for r in celeba])
    assert sim.mean() < sr.mean() - 0.5, (sim, sr)
    # every result still explains its thumbnail (the downscale term is the search's main loss)
    assert all(r["search"]["Lookalike-Ours"]["downscale_loss"] < 0.1 for r in celeba)


def test_angles_recomputed_from_kept_images(tiny_world, evaluation):
    """The recorded PULSE-Pairs angle is θ(F(align(I_GT)), F(align(I))) of the images the module kept."""
    _, report, mod = evaluation
    kept = report.images["celeba"][0]
    with torch.no_grad():
        a = mod._embed("F_ours", kept["I_GT"][None])
        b = mod._embed("F_ours", kept["L_SR"][None])
    from lrface.losses.identity import theta

    first = min((r for r in report.records if r["set"] == "celeba"), key=lambda r: r["uid"])
    assert float(theta(a, b)) == pytest.approx(first["angles"]["PULSE-Pairs"]["F_ours"], abs=1e-3)


def test_missing_checkpoint_and_bad_options_are_named(tiny_world):
    with pytest.raises(FileNotFoundError, match="module.ours"):
        UpscalingEvaluationModule(str(tiny_world / TINY_GENERATOR), str(tiny_world / TINY_FEATURES), "nope.ckpt")
    with pytest.raises(ValueError, match="reid_reference"):
        module(tiny_world, reid_reference="hr")
    with pytest.raises(ValueError, match="unknown CelebA attributes"):
        module(tiny_world, attributes=["Smiling", "Grumpy"])
    with pytest.raises(ValueError, match="nothing to do"):
        datamodule(tiny_world, pairs=0, celeba_images=0, fairface_images=0).setup("predict")
