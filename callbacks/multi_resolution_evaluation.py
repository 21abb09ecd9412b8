"""Multi-resolution face-recognition evaluation of BTNet and its baselines (seed 004 §4; methods.md §1.7–1.9).

* ``.bin`` pair sets at every resolution pair r1&r2 (:func:`evaluate_multi_resolution_bin`): the first image of each
  pair is shrunk from 112 px to r1×r1, the second to r2×r2 (the authors' ``eval/verification_multi_reso.py``), then
  insightface's 10-fold accuracy of flip-sum embeddings and the cosine's ROC AUC. The paper's Table 2 reports the
  accuracy averaged over the benchmarks per pair setting (the callback's ``average@r1&r2``).
* QMUL-SurvFace at native sizes (:func:`evaluate_survface_multi_resolution`): a BTNet routes every image by
  :func:`lrface.branch_selection.select_branches` for each resolution indicator × selection strategy (Fig. 8; the
  paper's best is ``max+ceil``) and resizes it to the chosen branch's side; 1:N TPIR20@FPIR and AUC with a prototype
  gallery, 1:1 TAR@FAR and AUC, as :func:`callbacks.evaluation.evaluate_survface`, plus the share of images per branch.

Who sees what (:func:`embed_at_resolution`): a BTNet takes an r×r image as it is (its forward picks branch r, or
TNet at 112); a plain IResNet (φ_hr, φ_mr, φ_r) only takes its ``input_size``, so the r×r image is resized up to it
first, as φ_mr saw its training images. Resizing everywhere is ``datamodules.transforms.resize_tensor`` (area when
shrinking, clamped bicubic when growing).

:class:`MultiResolutionEvaluation` runs both at the end of a fit and writes ``evaluation.json`` / ``evaluation.md``
(``{set: {metric: value}}``, the FaceEvaluation layout) that :func:`lrface.btnet_report.write_btnet_report` reads.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from callbacks.atomic_checkpoint import atomic_write_text
from callbacks.evaluation import SURVFACE_FARS, SURVFACE_FPIRS, evaluate_pairs, to_markdown
from datamodules.errors import skip_collate
from datamodules.transforms import resize_tensor
from lrface.branch_selection import INDICATORS, STRATEGIES, canonical_strategy, select_branches
from lrface.inference import embed_flip_sum, to_model_range
from lrface.metrics.identification import open_set_identification
from lrface.metrics.multi_resolution import pair_key
from lrface.metrics.verification import verify_pairs

__all__ = ["DEFAULT_PAIRS", "MultiResolutionEvaluation", "RoutedEmbeddings", "embed_at_resolution", "embed_routed",
           "evaluate_multi_resolution_bin", "evaluate_survface_multi_resolution", "is_btnet", "write_results"]

#: the paper's Table 2 settings: cross-resolution 112&r, same-resolution r&r
DEFAULT_PAIRS = ((112, 7), (112, 14), (112, 28), (7, 7), (14, 14), (28, 28), (112, 112))
#: set-name prefixes in evaluation.json
AVERAGE, SURVFACE = "average", "qmul_survface"
#: the plain model's only SurvFace entry: every image resized to its input size
RESIZE = "resize"


def is_btnet(model: nn.Module) -> bool:
    """True for a resolution-routed model (:class:`lrface.nets.btnet.BTNet`: ``branches`` and ``branch_for``)."""
    return hasattr(model, "branches") and callable(getattr(model, "branch_for", None))


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def embed_at_resolution(model: nn.Module, images: torch.Tensor, flip: bool = True) -> np.ndarray:
    """Embeddings of r×r faces as the model consumes them.

    Args:
        model: a BTNet (fed the r×r image directly; an r with no branch and ≠ its trunk size → the model's
            ValueError) or a plain network with ``input_size`` (the image is resized to input_size first).
        images: B×3×r×r in [0, 1].
        flip: flip-sum test-time augmentation (insightface).

    Returns:
        B×D float32 numpy embeddings (not normalised).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be B×3×r×r; got {tuple(images.shape)}")
    x = images.to(_device(model)).float()
    if is_btnet(model):
        model.branch_for(int(x.shape[-1]))  # fail early with the model's own message
    else:
        size = getattr(model, "input_size", None)
        if size is None:
            raise TypeError(f"{type(model).__name__} is neither a BTNet nor a network with an input_size")
        x = resize_tensor(x, (int(size), int(size)))
    emb = embed_flip_sum(model, x) if flip else model(to_model_range(x)).float()
    return emb.cpu().numpy().astype(np.float32, copy=False)


def _check_pairs(pairs: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    out = []
    for pair in pairs:
        r1, r2 = (int(r) for r in pair)
        if r1 <= 0 or r2 <= 0:
            raise ValueError(f"pair resolutions must be positive; got {tuple(pair)}")
        if (r1, r2) not in out:
            out.append((r1, r2))
    if not out:
        raise ValueError("no resolution pairs to evaluate")
    return out


@torch.no_grad()
def evaluate_multi_resolution_bin(model: nn.Module, bin_path: str | Path,
                                  pairs: Sequence[Sequence[int]] = DEFAULT_PAIRS, batch_size: int = 128,
                                  device: str | torch.device = "cpu", image_size: int = 112,
                                  flip: bool = True) -> dict[str, dict[str, float]]:
    """One ``.bin`` set at every resolution pair (methods.md §1.9).

    The first image of every pair is ``resize_tensor(img, (r1, r1))``, the second ``(r2, r2)``, from the set's image
    at ``image_size`` (112). Each (pair side, resolution) combination is embedded once and shared by every setting
    that uses it: the default 7 settings cost 8 embedding passes (sides × distinct resolutions), not 14.

    Args:
        model: a BTNet or a plain network (:func:`embed_at_resolution`).
        bin_path: an insightface ``.bin`` set (≥ 10 pairs for the 10-fold protocol).
        pairs: (r1, r2) settings.
        batch_size, device: embedding batch size and device.
        image_size: the side the ``.bin`` images are brought to before shrinking (112, their stored size).
        flip: flip-sum embeddings.

    Returns:
        {``"r1&r2"``: {``accuracy``, ``accuracy_std``, ``threshold`` (10-fold, :func:`verify_pairs`), ``auc`` (ROC
        AUC of the cosine)}}.
    """
    from datamodules.ms1m import VerificationPairs

    settings = _check_pairs(pairs)
    resolutions = {0: sorted({r1 for r1, _ in settings}), 1: sorted({r2 for _, r2 in settings})}
    dataset = VerificationPairs(bin_path, image_size=image_size)
    model = model.to(device).eval()
    chunks: dict[tuple[int, int], list[np.ndarray]] = {(s, r): [] for s, rs in resolutions.items() for r in rs}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=skip_collate):
        for side, key in enumerate(("image1", "image2")):
            images = batch[key].to(device).float()
            for r in resolutions[side]:
                chunks[(side, r)].append(embed_at_resolution(model, resize_tensor(images, (r, r)), flip))
    emb = {k: np.concatenate(v) for k, v in chunks.items()}
    issame = dataset.issame
    out: dict[str, dict[str, float]] = {}
    for r1, r2 in settings:
        e1, e2 = emb[(0, r1)], emb[(1, r2)]
        res = verify_pairs(e1, e2, issame)
        out[pair_key(r1, r2)] = {"accuracy": float(res["accuracy"]), "accuracy_std": float(res["accuracy_std"]),
                                 "threshold": float(res["threshold"]),
                                 "auc": float(evaluate_pairs(e1, e2, issame, ())["auc"])}
    return out


def _survface_images(root: str | Path):
    """Every SurvFace test image once, at native size: the verification images used by a pair, then gallery, mated
    and unmated probes. Returns (dataset, verification pair indices P×2, {part: slice}, {part: ids}, issame)."""
    from datamodules.qmul_survface import SurvFaceIdentification, SurvFaceImages, SurvFaceVerification

    ver = SurvFaceVerification(root)
    ident = SurvFaceIdentification(root)
    names: dict[str, int] = {}
    for pair in ver.pairs:
        for name in pair:
            names.setdefault(name, len(names))
    paths = [ver.image_dir / n for n in names]
    pair_index = np.array([[names[a], names[b]] for a, b in ver.pairs], dtype=np.int64).reshape(-1, 2)
    slices, ids = {}, {}
    for part in ("gallery", "mated_probe", "unmated_probe"):
        slices[part] = slice(len(paths), len(paths) + len(ident[part]))
        paths += ident[part].paths
        ids[part] = ident[part].identities
    images = SurvFaceImages(paths, np.zeros(len(paths), dtype=np.int64), name="survface/multi_resolution")
    return images, pair_index, slices, ids, ver.issame


def _group_by_shape(images: Sequence[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for k, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(k)
    return groups


class RoutedEmbeddings:
    """Embeddings of N images, each computed once per side it is routed to (:func:`embed_routed`).

    Attributes:
        rows: {side: N int64, image i's row in ``cache[side]`` or -1 if never routed there}.
        cache: {side: M_side×D float32}.
    """

    def __init__(self, rows: dict[int, np.ndarray], cache: dict[int, np.ndarray]):
        self.rows, self.cache = rows, cache

    def assemble(self, route: np.ndarray) -> np.ndarray:
        """N×D embeddings of one routing (N branch sides, each among the embedded ones)."""
        route = np.asarray(route)
        out = None
        for side, rows in self.rows.items():
            mask = route == side
            if mask.any():
                part = self.cache[side][rows[mask]]
                if out is None:
                    out = np.zeros((len(route), part.shape[1]), dtype=np.float32)
                out[mask] = part
        missing = ~np.isin(route, list(self.rows))
        if missing.any() or out is None:
            raise ValueError(f"route sends images to sides {sorted(set(route[missing].tolist()))} that were not "
                             f"embedded (embedded: {sorted(self.rows)})")
        return out


@torch.no_grad()
def embed_routed(model: nn.Module, images: Dataset, routes: Iterable[np.ndarray], batch_size: int = 128,
                 device: str | torch.device = "cpu", flip: bool = True) -> RoutedEmbeddings:
    """Embed native-size images at every side any routing sends them to, each (image, side) once.

    Args:
        model: a BTNet or a plain network (:func:`embed_at_resolution`).
        images: a dataset of items with ``image`` (3×h×w in [0, 1], native size) and ``index``.
        routes: N-length int arrays of sides (e.g. :func:`select_branches` per rule); every image is decoded once
            and, for each side it appears at in any route, resized to side×side and embedded.
        batch_size, device, flip: embedding settings.
    """
    from datamodules.qmul_survface import native_collate

    routes = [np.asarray(r, dtype=np.int64) for r in routes]
    n = len(images)
    if any(r.shape != (n,) for r in routes):
        raise ValueError(f"every route must give one side per image ({n}); got shapes {[r.shape for r in routes]}")
    rows: dict[int, np.ndarray] = {}
    for side in sorted({int(s) for r in routes for s in np.unique(r)}):
        need = np.zeros(n, dtype=bool)
        for route in routes:
            need |= route == side
        rows[side] = np.where(need, np.cumsum(need) - 1, -1)
    cache: dict[int, np.ndarray] = {}
    model = model.to(device).eval()
    for batch in DataLoader(images, batch_size=batch_size, shuffle=False, collate_fn=native_collate):
        index = batch["index"].numpy()
        batch_images = list(batch["image"])
        for side, row in rows.items():
            wanted = np.flatnonzero(row[index] >= 0)
            if not len(wanted):
                continue
            picked = [batch_images[k] for k in wanted]
            resized = torch.empty(len(picked), 3, side, side, device=device)
            for members in _group_by_shape(picked).values():  # one resize per native size
                group = torch.stack([picked[k] for k in members]).to(device).float()
                resized[members] = resize_tensor(group, (side, side))
            emb = embed_at_resolution(model, resized, flip)
            if side not in cache:
                cache[side] = np.zeros((int(row.max()) + 1, emb.shape[1]), dtype=np.float32)
            cache[side][row[index[wanted]]] = emb
    return RoutedEmbeddings(rows, cache)


@torch.no_grad()
def evaluate_survface_multi_resolution(model: nn.Module, root: str | Path, indicators: Sequence[str] = INDICATORS,
                                       strategies: Sequence[str] = STRATEGIES, batch_size: int = 128,
                                       device: str | torch.device = "cpu",
                                       flip: bool = True) -> dict[str, dict[str, float]]:
    """QMUL-SurvFace 1:N and 1:1 at native resolution, per branch-selection rule (seed 004 §4.3.2, Fig. 8).

    A BTNet routes each image, for every ``indicator+strategy``, to ``select_branches(native size, (*resolutions,
    trunk_size))`` and sees it resized to that branch's side. Embeddings are cached per (image, branch side): each
    image is decoded once and embedded at most once per side across all combinations. A plain network gets one
    entry, ``"resize"``, every image resized to its ``input_size``.

    Args:
        model: a BTNet or a plain network with ``input_size``.
        root: the ``QMUL-SurvFace/`` release folder.
        indicators: ``"max"`` / ``"min"`` / ``"avg"`` (BTNet only).
        strategies: ``"floor"`` (``"bottom"``) / ``"near"`` / ``"ceil"`` (BTNet only).
        batch_size, device, flip: embedding settings.

    Returns:
        {``"{indicator}+{strategy}"`` or ``"resize"``: {``identification/tpir20@fpir=x`` (x = 0.3, 0.2, 0.1, 0.01),
        ``identification/auc`` (open-set, prototype gallery, rank 20), ``verification/tar@far=x`` (0.3, 0.1, 0.01,
        0.001), ``verification/auc``, and for a BTNet ``branch_share/<r>`` (fraction of all evaluated images routed
        to branch r)}}.
    """
    images, pair_index, slices, ids, issame = _survface_images(root)
    sizes = images.native_sizes()
    routed = is_btnet(model)
    if routed:
        branches = (*model.resolutions, int(model.trunk_size))
        names = [f"{i}+{canonical_strategy(s)}" for i in indicators for s in strategies]
        routes = {name: select_branches(sizes, branches, *name.split("+")) for name in dict.fromkeys(names)}
    else:
        branches = (int(model.input_size),)
        routes = {RESIZE: np.full(len(images), branches[0], dtype=np.int64)}

    cached = embed_routed(model, images, routes.values(), batch_size, device, flip)
    out: dict[str, dict[str, float]] = {}
    for name, route in routes.items():
        emb = cached.assemble(route)
        metrics: dict[str, float] = {}
        probes = np.concatenate([emb[slices["mated_probe"]], emb[slices["unmated_probe"]]])
        probe_ids = np.concatenate([ids["mated_probe"], np.full(len(ids["unmated_probe"]), -1)])
        res = open_set_identification(probes, probe_ids, emb[slices["gallery"]], ids["gallery"],
                                      fpirs=SURVFACE_FPIRS, rank=20, gallery="prototypes")
        for fpir, tpir in res["tpir"].items():
            metrics[f"identification/tpir20@fpir={fpir:g}"] = float(tpir)
        metrics["identification/auc"] = float(res["auc"])
        ver = evaluate_pairs(emb[pair_index[:, 0]], emb[pair_index[:, 1]], issame, SURVFACE_FARS)
        metrics.update({f"verification/{k}": float(v) for k, v in ver.items()})
        if routed:
            metrics.update({f"branch_share/{side}": float(np.mean(route == side)) for side in branches})
        out[name] = metrics
    return out


class MultiResolutionEvaluation(pl.Callback):
    """At the end of a fit: every ``.bin`` set at every resolution pair, their average, and QMUL-SurvFace per
    branch-selection rule, written to ``<run dir>/evaluation.json`` / ``evaluation.md``.

    The evaluated model is ``pl_module.btnet`` if the module has one (BTNet training), else ``pl_module.backbone``
    (the baselines φ_hr, φ_mr, φ_r trained as plain recognition models).

    Set names: ``"{bin stem}@{r1&r2}"`` ({accuracy, accuracy_std, threshold, auc}), ``"average@{r1&r2}"`` (the mean
    accuracy and AUC over the ``.bin`` sets: the paper's Table 2 "average over benchmarks"),
    ``"qmul_survface@{indicator}+{strategy}"`` (``"qmul_survface@resize"`` for a plain model), then whatever
    :meth:`extra_results` adds.

    Args:
        bins: paths of ``.bin`` sets.
        pairs: (r1, r2) resolution settings.
        survface_root: a QMUL-SurvFace release folder (None = skip).
        indicators, strategies: the branch-selection rules to evaluate on SurvFace (BTNet only).
        batch_size: embedding batch size.
    """

    def __init__(self, bins: Sequence[str] = (), pairs: Sequence[Sequence[int]] = DEFAULT_PAIRS,
                 survface_root: str | None = None, indicators: Sequence[str] = INDICATORS,
                 strategies: Sequence[str] = STRATEGIES, batch_size: int = 128):
        self.bins = [Path(b) for b in bins]
        self.pairs = _check_pairs(pairs)
        self.survface_root = survface_root
        self.indicators, self.strategies = list(indicators), [canonical_strategy(s) for s in strategies]
        for indicator in self.indicators:
            if indicator not in INDICATORS:
                raise ValueError(f"unknown resolution indicator {indicator!r}; expected one of {INDICATORS}")
        self.batch_size = batch_size
        self.results: dict[str, dict[str, float]] = {}

    @staticmethod
    def model_of(pl_module: pl.LightningModule) -> nn.Module:
        """``pl_module.btnet`` if present, else ``pl_module.backbone``."""
        model = getattr(pl_module, "btnet", None)
        return model if model is not None else pl_module.backbone

    def evaluate(self, model: nn.Module, device: str | torch.device = "cpu") -> dict[str, dict[str, float]]:
        """All protocols on ``model`` → {set: {metric: value}} (also kept in ``self.results``)."""
        results: dict[str, dict[str, float]] = {}
        per_bin = {}
        for path in self.bins:
            per_bin[path.stem] = evaluate_multi_resolution_bin(model, path, self.pairs, self.batch_size, device)
            results.update({f"{path.stem}@{key}": m for key, m in per_bin[path.stem].items()})
        if per_bin:
            for r1, r2 in self.pairs:
                key = pair_key(r1, r2)
                results[f"{AVERAGE}@{key}"] = {metric: float(np.mean([m[key][metric] for m in per_bin.values()]))
                                               for metric in ("accuracy", "auc")}
        if self.survface_root:
            sf = evaluate_survface_multi_resolution(model, self.survface_root, self.indicators, self.strategies,
                                                    self.batch_size, device)
            results.update({f"{SURVFACE}@{name}": m for name, m in sf.items()})
        results.update(self.extra_results(model))
        self.results = results
        return results

    def extra_results(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """BTNet's compute and storage (Fig. 4–5, :mod:`lrface.btnet_cost`): ``cost@<r>px`` with the GFLOPs of φ_hr
        and φ_bt on an r×r input and the millions of parameters stored for branch r; nothing for a plain model."""
        if not is_btnet(model):
            return {}
        from lrface.btnet_cost import flops_table, parameter_table

        params = parameter_table(model)
        return {f"cost@{r}px": {**row, **params.get(r, {})} for r, row in flops_table(model).items()}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        model = self.model_of(pl_module)
        was_training = model.training
        try:
            self.evaluate(model, pl_module.device)
        finally:
            model.train(was_training)
        write_results(Path(trainer.default_root_dir), self.results)
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                rows = [[s, k, v] for s, m in self.results.items() for k, v in m.items()]
                logger.log_table("multi_resolution_evaluation", columns=["set", "metric", "value"], data=rows)


def write_results(run_dir: str | Path, results: Mapping[str, Mapping[str, float]]) -> None:
    """``evaluation.json`` and ``evaluation.md`` (FaceEvaluation's layout) into ``run_dir``, atomically."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "evaluation.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(run_dir / "evaluation.md", to_markdown(dict(results)))
