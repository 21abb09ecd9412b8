"""URL's supplementary figures at the end of training: confidence histograms (Fig. 1) and uncertainty maps (Fig. 2–3).

Runs once a fit ends, on global rank zero, when ``pl_module.backbone`` is a URL model (has ``forward_with_confidence``,
:class:`lrface.nets.url.URLNet`); otherwise it does nothing. Up to ``num_samples`` training images (the DataModule's
``train_dataloader()``, as the network was trained on them) go through the trained backbone in eval mode, one view
each, at full quality and shrunk to each of ``sizes`` px (area) and brought back (bicubic), as
``datamodules.transforms.resize_tensor`` does for the degraded evaluation. Written into the run directory (or
``out_dir``):

- ``confidence_histograms.png``: s^(k) over the full-quality samples, one panel per sub-embedding (supp. Fig. 1);
- ``uncertainty_heatmaps.png``: the first ``num_faces`` faces, one row each, a column per quality level with the face
  as the network saw it and its 1/s cells, on one colour scale (supp. Fig. 2–3);
- ``confidence_stats.json``: the mean s (and log s, 1/s, per sub-embedding) per quality level over all samples.

Both PNGs are logged to every logger with ``log_image`` (W&B); the mean s per level is exposed as ``.results``
(``{"url_confidence": {"<level>/mean_s": ...}}``), which the runner adds to ``results.json``. Plotting lives in
:mod:`lrface.url_figures`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from callbacks.evaluation import has_confidence
from lrface.inference import to_model_range


def _images_of(batch) -> torch.Tensor | None:
    """The ``image`` tensor of a plain batch, or of the first multi-task member that has one."""
    if isinstance(batch, dict):
        if isinstance(batch.get("image"), torch.Tensor):
            return batch["image"]
        for member in batch.values():
            found = _images_of(member)
            if found is not None:
                return found
    return None


class URLFigures(pl.Callback):
    """Args:
        num_samples: training images for the histograms and the statistics (512).
        sizes: degraded sizes in px (each smaller than the training images; larger ones are skipped).
        num_faces: faces (rows) of the heat-map figure.
        batch_size: images per forward pass.
        bins: histogram bins.
        out_dir: output folder (default: the run directory, ``trainer.default_root_dir``).
        dpi: PNG resolution.
    """

    def __init__(self, num_samples: int = 512, sizes: Sequence[int] = (28, 14, 7), num_faces: int = 6,
                 batch_size: int = 64, bins: int = 30, out_dir: str | None = None, dpi: int = 100):
        if num_samples < 1 or num_faces < 1:
            raise ValueError(f"num_samples and num_faces must be ≥ 1; got {num_samples}, {num_faces}")
        self.num_samples, self.sizes, self.num_faces = int(num_samples), [int(s) for s in sizes], int(num_faces)
        self.batch_size, self.bins, self.out_dir, self.dpi = int(batch_size), int(bins), out_dir, int(dpi)
        self.results: dict[str, dict[str, float]] = {}
        self.stats: dict = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backbone = getattr(pl_module, "backbone", None)
        if not trainer.is_global_zero or trainer.interrupted or backbone is None or not has_confidence(backbone):
            return
        if trainer.datamodule is None:
            rank_zero_warn("URLFigures: no DataModule, so no training samples to draw the figures from")
            return
        images = self.training_images(trainer.datamodule)
        out = Path(self.out_dir) if self.out_dir is not None else Path(trainer.default_root_dir)
        was_training = backbone.training
        try:
            paths = self.write(backbone.eval(), images, out, device=pl_module.device)
        finally:
            backbone.train(was_training)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                for name, path in paths.items():
                    if path.suffix == ".png":
                        logger.log_image(f"url/{name}", [str(path)])

    def training_images(self, datamodule) -> torch.Tensor:
        """Up to ``num_samples`` images (N×3×H×W in [0, 1], CPU) from the DataModule's training loader."""
        chunks, n = [], 0
        for batch in datamodule.train_dataloader():
            images = _images_of(batch)
            if images is None:
                raise ValueError("URLFigures: the training batches hold no 'image' tensor")
            chunks.append(images[: self.num_samples - n].detach().float().cpu())
            n += len(chunks[-1])
            if n >= self.num_samples:
                break
        if not chunks:
            raise ValueError("URLFigures: the training loader is empty")
        return torch.cat(chunks)

    @torch.no_grad()
    def confidences(self, backbone: torch.nn.Module, images: torch.Tensor, device) -> torch.Tensor:
        """N×K confidences s of N×3×H×W images in [0, 1] (one view each; the backbone in eval mode)."""
        out = []
        for start in range(0, len(images), self.batch_size):
            x = to_model_range(images[start : start + self.batch_size].to(device))
            out.append(backbone.forward_with_confidence(x)[1].float().cpu())
        return torch.cat(out)

    def levels(self, size: int) -> list[tuple[str, int | None]]:
        """(name, degraded size or None) per quality level, full quality first."""
        return [(f"{size}px", None)] + [(f"{s}px", s) for s in self.sizes if s < size]

    def write(self, backbone: torch.nn.Module, images: torch.Tensor, out: Path,
              device: str | torch.device = "cpu") -> dict[str, Path]:
        """Computes the confidences per quality level and writes the two figures and the JSON into ``out``."""
        from datamodules.transforms import resize_tensor
        from lrface.url_figures import (
            confidence_stats,
            plot_confidence_histograms,
            plot_uncertainty_heatmaps,
            write_confidence_stats,
        )

        h, w = images.shape[-2:]
        levels = self.levels(min(h, w))
        degraded = {name: images if s is None else resize_tensor(resize_tensor(images, (s, s)), (h, w))
                    for name, s in levels}
        conf = {name: self.confidences(backbone, x, device) for name, x in degraded.items()}
        full = conf[levels[0][0]]
        self.stats = confidence_stats(conf)
        paths = {
            "confidence_histograms": plot_confidence_histograms(full, out / "confidence_histograms.png",
                                                                bins=self.bins, dpi=self.dpi),
            "uncertainty_heatmaps": plot_uncertainty_heatmaps(
                torch.stack([degraded[name][: self.num_faces] for name, _ in levels], dim=1),
                torch.stack([conf[name][: self.num_faces] for name, _ in levels], dim=1),
                out / "uncertainty_heatmaps.png", levels=[name.replace("px", " px") for name, _ in levels],
                dpi=self.dpi),
        }
        paths["confidence_stats"] = write_confidence_stats(out / "confidence_stats.json", self.stats,
                                                           extra={"num_samples": len(images),
                                                                  "image_size": [int(h), int(w)]})
        self.results = {"url_confidence": {f"{name}/{key}": float(v[key]) for name, v in
                                           self.stats["per_level"].items() for key in ("mean_s", "mean_log_s")}}
        return paths
