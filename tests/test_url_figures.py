"""URL's supplementary figures: the pure plotting functions, the statistics, and the callback after a 1-step fit."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers.logger import Logger

from lrface.url_figures import (
    cell_grid_shape,
    confidence_stats,
    heatmap_figure_size,
    histogram_figure_size,
    plot_confidence_histograms,
    plot_uncertainty_heatmaps,
    write_confidence_stats,
)


def _png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def _pixels(inches: tuple[float, float], dpi: int) -> tuple[int, int]:
    return round(inches[0] * dpi), round(inches[1] * dpi)


def test_layout_helpers():
    assert cell_grid_shape(16) == (4, 4) and cell_grid_shape(4) == (2, 2) and cell_grid_shape(5) == (1, 5)
    assert histogram_figure_size(16) == (10.0, 8.0)  # 4×4 panels of 2.5×2 in
    assert histogram_figure_size(5) == (7.5, 4.0)  # 3 columns, 2 rows
    assert heatmap_figure_size(3, 4) == (11.0, 4.25)


@pytest.mark.parametrize("k", [16, 5])
def test_plots_write_pngs_of_the_expected_size(tmp_path: Path, k: int):
    rng = np.random.default_rng(k)
    s = np.exp(rng.normal(4.0, 0.5, (64, k)))
    hist = plot_confidence_histograms(torch.from_numpy(s).float(), tmp_path / "h.png", dpi=40)
    assert _png_size(hist) == _pixels(histogram_figure_size(k), 40)
    images = torch.rand(2, 3, 3, 32, 32)  # 2 faces × 3 quality levels
    maps = plot_uncertainty_heatmaps(images, np.exp(rng.normal(4.0, 1.0, (2, 3, k))), tmp_path / "u.png",
                                     levels=["32 px", "8 px", "4 px"], dpi=40)
    assert _png_size(maps) == _pixels(heatmap_figure_size(2, 3), 40)
    # constant confidences (an untrained branch) still draw; mismatched inputs are named
    plot_confidence_histograms(np.full((8, k), 64.0), tmp_path / "c.png", dpi=20)
    plot_uncertainty_heatmaps(images, np.full((2, 3, k), 64.0), tmp_path / "c2.png", levels="abc", dpi=20)
    with pytest.raises(ValueError, match="3 level names for 2"):
        plot_uncertainty_heatmaps(images[:, :2], np.ones((2, 2, k)), tmp_path / "x.png", levels="abc")
    with pytest.raises(ValueError, match="finite and > 0"):
        plot_confidence_histograms(np.zeros((4, k)), tmp_path / "x.png")


def test_confidence_stats(tmp_path: Path):
    stats = confidence_stats({"112px": np.array([[1.0, 4.0], [4.0, 1.0]]), "14px": torch.tensor([[1.0, 1.0]])})
    assert stats["levels"] == ["112px", "14px"] and stats["num_sub_embeddings"] == 2
    full, low = stats["per_level"]["112px"], stats["per_level"]["14px"]
    assert full["mean_s"] == pytest.approx(2.5) and low["mean_s"] == pytest.approx(1.0)
    assert full["mean_log_s"] == pytest.approx(np.log(2.0)) and low["log_s_change"] == pytest.approx(-np.log(2.0))
    assert full["per_sub_embedding"] == pytest.approx([2.5, 2.5]) and full["n"] == 2
    path = write_confidence_stats(tmp_path / "stats.json", stats, extra={"num_samples": 3})
    assert json.loads(path.read_text())["per_level"]["14px"]["mean_s"] == 1.0
    with pytest.raises(ValueError, match="disagree on K"):
        confidence_stats({"a": np.ones((1, 2)), "b": np.ones((1, 3))})


class _ImageLogger(Logger):
    def __init__(self):
        super().__init__()
        self.images: dict[str, list] = {}

    @property
    def name(self):
        return "images"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, *args, **kwargs):
        pass

    def log_image(self, key, images, **kwargs):
        self.images[key] = images


def test_callback_after_a_one_step_url_fit(tiny_world: Path, tmp_path: Path):
    """A tiny FeatureExtractorModule with a URLNet backbone trains one step; at the end of fit the callback writes
    both figures and the statistics, logs the images, and FaceEvaluation adds the URL keys and confidence table."""
    from callbacks.evaluation import FaceEvaluation
    from callbacks.url_figures import URLFigures
    from datamodules.ms1m import MS1MDataModule
    from lightning_modules.feature_extractor import FeatureExtractorModule
    from lrface.losses.url import ConfidenceAwareHead
    from lrface.nets.iresnet import iresnet18
    from lrface.nets.url import URLNet

    torch.manual_seed(0)
    net = URLNet(iresnet18(widths=(8, 16, 16, 32), num_features=32, input_size=64), num_sub_embeddings=16)
    torch.nn.init.normal_(net.confidence.weight, std=0.3)  # input-dependent s from the start
    module = FeatureExtractorModule(net, head=functools.partial(ConfidenceAwareHead, m=9.6),
                                    optimizer=functools.partial(torch.optim.SGD, lr=0.01))
    datamodule = MS1MDataModule(tiny_world / "ms1m", val_sets=[], image_size=64, batch_size=8)
    figures = URLFigures(num_samples=20, sizes=(16, 8, 128), num_faces=3, dpi=40)
    logger = _ImageLogger()
    trainer = pl.Trainer(max_steps=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path),
                         callbacks=[figures, FaceEvaluation(bins=[tiny_world / "ms1m" / "lfw.bin"], image_size=64,
                                                            degrade_to=[8])])
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1 and module.backbone.training  # the callback restored train mode

    assert _png_size(tmp_path / "confidence_histograms.png") == _pixels(histogram_figure_size(16), 40)
    assert _png_size(tmp_path / "uncertainty_heatmaps.png") == _pixels(heatmap_figure_size(3, 3), 40)
    stats = json.loads((tmp_path / "confidence_stats.json").read_text())
    assert stats["levels"] == ["64px", "16px", "8px"] and stats["num_samples"] == 20  # 128 px is no degradation
    per = stats["per_level"]
    assert all(per[level]["n"] == 20 and per[level]["mean_s"] > 0 for level in stats["levels"])
    assert per["8px"]["mean_s"] != pytest.approx(per["64px"]["mean_s"], rel=1e-4)
    assert per["64px"]["log_s_change"] == 0.0
    assert figures.results["url_confidence"]["8px/mean_s"] == pytest.approx(per["8px"]["mean_s"])
    assert set(logger.images) == {"url/confidence_histograms", "url/uncertainty_heatmaps"}

    # the statistics are the backbone's confidences of the images at each quality, recomputed here
    from datamodules.transforms import resize_tensor

    images = figures.training_images(datamodule)
    assert images.shape == (20, 3, 64, 64)
    net.eval()
    figures.write(net, images, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "confidence_stats.json").read_text())["per_level"]
    with torch.no_grad():
        s_full = net.forward_with_confidence(images * 2 - 1)[1]
        s_low = net.forward_with_confidence(resize_tensor(resize_tensor(images, (8, 8)), (64, 64)) * 2 - 1)[1]
    assert again["64px"]["mean_s"] == pytest.approx(s_full.mean().item(), rel=1e-5)
    assert again["8px"]["mean_log_s"] == pytest.approx(s_low.log().mean().item(), abs=1e-5)

    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert {"accuracy", "url/accuracy", "confidence/mean_s"} <= set(evaluation["lfw@8px"])
    assert "Δ log s" in (tmp_path / "evaluation.md").read_text()


def test_callback_ignores_models_without_confidence(tmp_path: Path):
    from callbacks.url_figures import URLFigures
    from lrface.nets.iresnet import iresnet18

    trainer = SimpleNamespace(is_global_zero=True, interrupted=False, datamodule=None, default_root_dir=str(tmp_path))
    URLFigures().on_fit_end(trainer, SimpleNamespace(backbone=iresnet18(widths=(8, 16, 16, 32), num_features=32)))
    assert not list(tmp_path.iterdir())
