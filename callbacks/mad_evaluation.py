"""End-of-fit evaluation of a MAD run (seed 003, supplementary §3–7): the per-run numbers of Tables 1–2 and the
figures, written to the run directory as ``mad_evaluation.json`` / ``.md`` and PNGs, and logged to W&B.

Faces come from a CelebA copy (real or synthetic), aligned as the training data: the seeded subsets below are the
same for every run of an experiment, so runs (rows A–F, S / J) are compared on identical faces. Numbers
(:mod:`lrface.mad_evaluation`):

* ``reconstruction``: ``rmse_train`` / ``rmse_test`` (0..255) on ``n_rmse`` train / test faces;
* ``random_samples``: ``fd_recognition`` — the Fréchet distance of ``n_fd`` random samples P(z) to as many test faces
  in the feature space of our recognition network (``recognition``: a ``.ckpt`` / ``backbone.pth``), or
  ``fd_pixels8`` (8×8 area-downsampled pixels) without one. Not an FID: no Inception weights exist offline;
* after a disentanglement phase (``disent`` / ``joint``; in phase ``ae`` E is untrained and these are skipped):
  ``verification@<bin>`` and ``verification@average`` — 10-fold accuracy from f_id (``identity``), f_¬id
  (``not_identity``) and z; ``expression_probe`` — the linear-probe expression AUC (4 CelebA expression classes,
  :func:`lrface.mad_labels.expression_labels`) from f_e (``expression_auc``) and f_¬e (``not_expression_auc``),
  fitted on ``n_probe_train`` train faces, scored on ``n_probe_test`` test faces; also from z (``z_auc``: what the
  autoencoder's code holds at all) and from the faces' 16×16 pixels (``pixels16_auc``: what is linearly readable
  from the images themselves).

Figures: ``mad_samples.png`` (random faces, Fig. 2), ``mad_inputs.png`` / ``mad_reconstructions.png`` (one strip
each of the same ``n_figure`` test faces; the pipeline report stacks the strips of several runs into Fig. 3's
before / after), ``mad_reconstructions_disentangled.png`` (P(G(E(Q(x))))), ``mad_tsne.png`` (Fig. 4–5: f_e / f_¬e
coloured by expression, f_id / f_¬id by identity, for the ``tsne_identities`` test identities with most faces) and
``mad_interpolations_<k>.png`` (Fig. 6, :mod:`lrface.mad_figures`).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from callbacks.atomic_checkpoint import atomic_write_text
from callbacks.evaluation import to_markdown
from datamodules.errors import skip_collate
from lrface.io import atomic_write_bytes, image_grid_png
from lrface.mad_evaluation import (
    embed,
    factor_probe_auc,
    factor_verification,
    factor_views,
    random_sample_fd,
    reconstruction_rmse,
    resize_to,
)
from lrface.mad_figures import interpolation_grid, tsne_figure
from lrface.mad_labels import expression_labels
from lrface.metrics.frechet import pixel_features
from lrface.metrics.linear_probe import linear_probe_auc
from lrface.nets.mad import Z_DIM, MADNet

__all__ = ["EXPRESSION_NAMES", "MADEvaluation"]

EXPRESSION_NAMES = {0: "neutral, closed", 1: "neutral, open", 2: "smile, closed", 3: "smile, open"}


def _load(dataset, indices: np.ndarray, batch_size: int) -> dict[str, torch.Tensor]:
    """Stack the ``image`` / ``identity`` / ``attributes`` of dataset items ``indices`` (CPU tensors)."""
    out: dict[str, list[torch.Tensor]] = {"image": [], "identity": [], "attributes": []}
    loader = DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=batch_size, shuffle=False,
                        collate_fn=skip_collate)
    for batch in loader:
        for key in out:
            out[key].append(batch[key])
    return {k: torch.cat(v) for k, v in out.items()}


def _pick(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n_total, size=min(n, n_total), replace=False))


class MADEvaluation(pl.Callback):
    """Args:
        celeba_root: the CelebA copy to draw faces from.
        align: its alignment (as the training data: ``True`` / ``"arcface"`` / ``"ffhq"``).
        bins: ``.bin`` verification sets (112 px; resized to the network's side).
        recognition: a recognition checkpoint for the Fréchet distance (None: 8×8 pixels).
        n_rmse, n_fd, n_probe_train, n_probe_test: faces per measurement.
        n_tsne, tsne_identities, tsne_perplexity: t-SNE sizes (expression panel: n_tsne faces; identity panel: up to
            n_tsne faces of the ``tsne_identities`` identities with most test faces).
        n_figure: faces in the reconstruction strips; n_samples: random faces.
        interpolation_pairs, interpolation_steps: Fig. 6 blocks and their steps.
        seed: subsets, prior samples and t-SNE.
        batch_size: encoding batch size.
    """

    def __init__(self, celeba_root: str, align: bool | str = True, bins: Sequence[str] = (),
                 recognition: str | None = None, n_rmse: int = 500, n_fd: int = 1000, n_probe_train: int = 2000,
                 n_probe_test: int = 2000, n_tsne: int = 500, tsne_identities: int = 10, tsne_perplexity: float = 30.0,
                 n_figure: int = 10, n_samples: int = 32, interpolation_pairs: int = 2, interpolation_steps: int = 10,
                 seed: int = 0, batch_size: int = 128):
        self.celeba_root, self.align = celeba_root, align
        self.bins = [Path(b) for b in bins]
        self.recognition = recognition
        self.n_rmse, self.n_fd = int(n_rmse), int(n_fd)
        self.n_probe_train, self.n_probe_test = int(n_probe_train), int(n_probe_test)
        self.n_tsne, self.tsne_identities, self.tsne_perplexity = int(n_tsne), int(tsne_identities), tsne_perplexity
        self.n_figure, self.n_samples = int(n_figure), int(n_samples)
        self.interpolation_pairs, self.interpolation_steps = int(interpolation_pairs), int(interpolation_steps)
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.results: dict[str, dict[str, float]] = {}
        self.figures: dict[str, Path] = {}

    # -- data ----------------------------------------------------------------------------------------------------

    def _splits(self, size: int):
        from datamodules.celeba import CelebAAnnotations, CelebADataset

        ann = CelebAAnnotations(self.celeba_root)
        return (CelebADataset(self.celeba_root, "train", image_size=size, align=self.align, annotations=ann),
                CelebADataset(self.celeba_root, "test", image_size=size, align=self.align, annotations=ann))

    def _features(self, device):
        if not self.recognition:
            return None, "fd_pixels8"
        from lrface.weights import FaceFeatures, load_frozen_recognition

        trunk, _ = load_frozen_recognition(self.recognition)
        features = FaceFeatures(trunk, getattr(trunk, "input_size", 112)).to(device).eval()
        return features, "fd_recognition"

    # -- evaluation ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, net: MADNet, has_factors: bool, out_dir: str | Path) -> dict[str, dict[str, float]]:
        """Every number and figure of one run into ``out_dir``; returns (and keeps) {set: {metric: value}}."""
        out_dir = Path(out_dir)
        device = next(net.parameters()).device
        size = int(net.input_size)
        train, test = self._splits(size)
        rng = np.random.default_rng(self.seed)
        results: dict[str, dict[str, float]] = {}

        rmse_train = _load(train, _pick(len(train), self.n_rmse, rng), self.batch_size)
        rmse_test = _load(test, _pick(len(test), max(self.n_rmse, self.n_fd), rng), self.batch_size)
        results["reconstruction"] = {
            "rmse_train": float(reconstruction_rmse(net, rmse_train["image"], self.batch_size).mean()),
            "rmse_test": float(reconstruction_rmse(net, rmse_test["image"][: self.n_rmse], self.batch_size).mean())}
        features, fd_key = self._features(device)
        results["random_samples"] = {fd_key: random_sample_fd(net, rmse_test["image"][: self.n_fd], features,
                                                              n=self.n_fd, seed=self.seed,
                                                              batch_size=self.batch_size)}
        self.figures = self._image_figures(net, test, out_dir, has_factors)
        if has_factors:
            results.update(self._factor_results(net, train, test, rng))
            self.figures.update(self._factor_figures(net, test, out_dir))
        self.results = results
        atomic_write_text(out_dir / "mad_evaluation.json", json.dumps(
            {"results": results, "figures": {k: p.name for k, p in self.figures.items()}}, indent=2) + "\n")
        atomic_write_text(out_dir / "mad_evaluation.md", to_markdown(results))
        return results

    def _factor_results(self, net: MADNet, train, test, rng: np.random.Generator) -> dict[str, dict[str, float]]:
        results: dict[str, dict[str, float]] = {}
        if self.bins:
            from datamodules.ms1m import VerificationPairs

            per_bin = {}
            for path in self.bins:
                codes: list[tuple[dict, dict]] = []
                pairs = VerificationPairs(path, image_size=112)
                for batch in DataLoader(pairs, batch_size=self.batch_size, shuffle=False):
                    codes.append((embed(net, batch["image1"], self.batch_size),
                                  embed(net, batch["image2"], self.batch_size)))
                c1, c2 = ({k: torch.cat([c[side][k] for c in codes]) for k in codes[0][side]} for side in (0, 1))
                per_bin[path.stem] = factor_verification(c1, c2, pairs.issame)
                results[f"verification@{path.stem}"] = per_bin[path.stem]
            keys = next(iter(per_bin.values())).keys()
            results["verification@average"] = {k: float(np.mean([m[k] for m in per_bin.values()])) for k in keys}
        tr = _load(train, _pick(len(train), self.n_probe_train, rng), self.batch_size)
        te = _load(test, _pick(len(test), self.n_probe_test, rng), self.batch_size)
        y_tr, y_te = expression_labels(tr["attributes"]), expression_labels(te["attributes"])
        probe = factor_probe_auc(embed(net, tr["image"], self.batch_size), y_tr, embed(net, te["image"],
                                 self.batch_size), y_te, views=("expression", "not_expression", "z"), seed=self.seed)
        # what a linear probe reads from the faces themselves: the ceiling the autoencoder's code is measured against
        probe["pixels16"] = linear_probe_auc(pixel_features(resize_to(tr["image"], net.input_size), 16).numpy(),
                                             y_tr.numpy(), pixel_features(resize_to(te["image"], net.input_size),
                                                                          16).numpy(), y_te.numpy(), seed=self.seed)
        results["expression_probe"] = {f"{view}_{k}": float(probe[view][k]) for view in probe
                                       for k in ("auc", "accuracy")}
        return results

    def _image_figures(self, net: MADNet, test, out_dir: Path, has_factors: bool) -> dict[str, Path]:
        figures: dict[str, Path] = {}
        rng = np.random.default_rng(self.seed + 1)
        faces = _load(test, _pick(len(test), self.n_figure, rng), self.batch_size)["image"]
        x = resize_to(faces, net.input_size).to(next(net.parameters()).device)
        z = net.encode(x * 2 - 1)
        strips = {"mad_inputs": x, "mad_reconstructions": (net.decode(z) + 1) / 2}
        if has_factors:
            from lrface.nets.mad import Disentangler

            strips["mad_reconstructions_disentangled"] = (net.decode(net.reentangle(
                Disentangler.concat(net.factors(z)))) + 1) / 2
        prior = torch.randn(self.n_samples, Z_DIM, generator=torch.Generator().manual_seed(self.seed))
        strips["mad_samples"] = (net.decode(prior.to(x.device)) + 1) / 2
        for name, images in strips.items():
            nrow = 8 if name == "mad_samples" else len(images)
            path = out_dir / f"{name}.png"
            atomic_write_bytes(path, image_grid_png(images, nrow=nrow))
            figures[name] = path
        return figures

    def _factor_figures(self, net: MADNet, test, out_dir: Path) -> dict[str, Path]:
        from lrface.metrics.tsne import tsne

        figures: dict[str, Path] = {}
        rng = np.random.default_rng(self.seed + 2)
        expr = _load(test, _pick(len(test), self.n_tsne, rng), self.batch_size)
        ids, counts = np.unique(test.identities, return_counts=True)
        top = ids[np.argsort(-counts, kind="stable")[: self.tsne_identities]]
        members = np.flatnonzero(np.isin(test.identities, top))[: self.n_tsne]
        idn = _load(test, members, self.batch_size)
        ve = factor_views(embed(net, expr["image"], self.batch_size))
        vi = factor_views(embed(net, idn["image"], self.batch_size))
        y_e, y_i = expression_labels(expr["attributes"]).numpy(), idn["identity"].numpy()
        panels = {}
        for title, view, labels in (("f_e (expression)", ve["expression"], y_e),
                                    ("f_¬e (all but expression)", ve["not_expression"], y_e),
                                    ("f_id (identity)", vi["identity"], y_i),
                                    ("f_¬id (all but identity)", vi["not_identity"], y_i)):
            perplexity = min(self.tsne_perplexity, (len(view) - 1) / 3)  # t-SNE needs perplexity < N − 1
            if len(view) >= 4 and perplexity > 1:
                panels[title] = (tsne(view.numpy(), perplexity=perplexity, seed=self.seed), labels)
        if panels:
            figures["mad_tsne"] = tsne_figure(panels, out_dir / "mad_tsne.png", label_names=None)
        rng = np.random.default_rng(self.seed + 3)
        for k in range(self.interpolation_pairs):
            a, b = rng.choice(len(test), size=2, replace=False)
            pair = _load(test, np.array([a, b]), 2)["image"]
            pair = resize_to(pair, net.input_size)
            grid = interpolation_grid(net, pair[0], pair[1], self.interpolation_steps)
            path = out_dir / f"mad_interpolations_{k}.png"
            atomic_write_bytes(path, image_grid_png(grid, nrow=self.interpolation_steps + 2))
            figures[f"mad_interpolations_{k}"] = path
        return figures

    # -- Lightning -----------------------------------------------------------------------------------------------

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        was_training = pl_module.training
        try:
            self.evaluate(pl_module.net.eval(), pl_module.hparams.phase != "ae", trainer.default_root_dir)
        finally:
            pl_module.train(was_training)  # the module's train() keeps a frozen phase's networks in eval mode
        flat: dict[str, Any] = {f"mad/{s}/{k}": v for s, m in self.results.items() for k, v in m.items()}
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=trainer.global_step)
            if hasattr(logger, "log_image"):
                for name, path in self.figures.items():
                    logger.log_image(f"mad/{name}", [str(path)])
