"""Face-recognition evaluation protocols on any backbone, as functions and as an end-of-training callback.

* ``.bin`` pair sets (LFW, CFP-FP, AgeDB-30, ...): insightface's 10-fold accuracy on flip-sum embeddings, plus
  ROC AUC and TAR@FAR of the cosine similarity.
* QMUL-SurvFace verification (5,320 + 5,320 pairs): TAR@FAR 0.3 / 0.1 / 0.01 / 0.001 and ROC AUC.
* QMUL-SurvFace open-set identification: TPIR at rank 20 for FPIR 0.3 / 0.2 / 0.1 / 0.01 and its AUC, with the
  gallery as per-identity prototypes (BTNet's evaluation) or as images; and the closed-set identification of the mated
  probes against the gallery (TinyFace-style CMC rank-1 / rank-5, ``identification/rank1`` / ``rank5``).

URL models (a backbone with ``forward_with_confidence``, :class:`lrface.nets.url.URLNet`) get every pair protocol
twice: with the cosine of the whole embeddings (the plain keys) and with URL's uncertainty-guided score
(:func:`lrface.metrics.confidence_score.confidence_weighted_scores`), under the same key prefixed ``url/``
(``url/accuracy``, ``url/auc``, ``url/verification/tar@far=0.1``). They also report ``confidence/mean_s`` and
``confidence/mean_log_s``, the mean confidence over the images and sub-embeddings, per ``.bin`` set and per degraded
size (``lfw@14px``): whether confidence drops on degraded inputs, as the paper's uncertainty maps show. Non-URL models
give exactly the keys they always did.

Native low-resolution images are resized to the backbone's input size (bicubic) before embedding, as a plain
recognition network must see them; BTNet's resolution branches route by native size instead (its own module).
``lrface evaluate`` and ``lrface embed`` call these functions with a checkpoint; :class:`FaceEvaluation` runs them on
the trained backbone when a fit ends and writes ``evaluation.json`` / ``evaluation.md`` into the run directory.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from callbacks.atomic_checkpoint import atomic_write_text
from datamodules.errors import skip_collate
from lrface.inference import embed_flip_sum, to_model_range
from lrface.metrics.confidence_score import confidence_summary, confidence_weighted_scores
from lrface.metrics.identification import cmc, open_set_identification
from lrface.metrics.verification import pair_distances, roc_auc, tar_at_far, verify_pairs, verify_scores

SURVFACE_FARS = (0.3, 0.1, 0.01, 0.001)
SURVFACE_FPIRS = (0.3, 0.2, 0.1, 0.01)
CMC_RANKS = (1, 5)
BIN_FARS = (1e-3, 1e-2, 1e-1)
#: ``embed_dataset`` returns the confidences of image key ``k`` under ``k + CONFIDENCE``; metric keys of the
#: confidence-weighted score are the cosine's keys with ``URL_PREFIX``.
CONFIDENCE, URL_PREFIX = "/confidence", "url/"


def has_confidence(backbone: nn.Module) -> bool:
    """True for URL models (:class:`lrface.nets.url.URLNet`): the backbone also predicts per-sub-embedding s."""
    return callable(getattr(backbone, "forward_with_confidence", None))


@torch.no_grad()
def _embed_batch(backbone: nn.Module, images: torch.Tensor, flip: bool,
                 with_confidence: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not with_confidence:
        return (embed_flip_sum(backbone, images) if flip else backbone(to_model_range(images)).float()), None
    x = to_model_range(images)
    views = [backbone.forward_with_confidence(v) for v in ([x, torch.flip(x, dims=[3])] if flip else [x])]
    embedding = sum(e.float() for e, _ in views)
    # the mean keeps one view's scale (comparable with the training confidences); the pair score only uses ratios
    confidence = torch.stack([c.float() for _, c in views]).mean(0)
    return embedding, confidence


@torch.no_grad()
def embed_dataset(backbone: nn.Module, dataset: Dataset, keys: Sequence[str] = ("image",), batch_size: int = 128,
                  device: str | torch.device = "cpu", flip: bool = True, degrade_to: int | None = None,
                  confidence: bool | None = None) -> dict[str, np.ndarray]:
    """Flip-sum (or plain) embeddings of every item's ``keys`` images → {key: N×D float32}, in dataset order.

    ``degrade_to=s`` first shrinks each image to s×s (area) and brings it back to its size (bicubic, clamped): the
    thumbnail a low-resolution probe would be, seen by a network trained at full resolution.

    ``confidence`` (default: whether the backbone has ``forward_with_confidence``) also returns URL's confidences
    under ``key + "/confidence"`` (N×K float32). With ``flip`` the embedding is the sum of the two views' (as for any
    backbone) and the confidence the mean of the two views' s: it stays on one image's scale, so it compares with
    the confidences seen in training, and the pair score depends on ratios of s only.
    """
    from datamodules.transforms import resize_tensor

    with_confidence = has_confidence(backbone) if confidence is None else bool(confidence)
    if with_confidence and not has_confidence(backbone):
        raise TypeError(f"confidence=True needs a backbone with forward_with_confidence; got {type(backbone).__name__}")
    backbone = backbone.to(device).eval()
    names = [*keys, *(k + CONFIDENCE for k in keys)] if with_confidence else list(keys)
    out: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=skip_collate):
        for key in keys:
            images = batch[key].to(device).float()
            if degrade_to:
                images = resize_tensor(resize_tensor(images, (degrade_to, degrade_to)), tuple(images.shape[-2:]))
            emb, conf = _embed_batch(backbone, images, flip, with_confidence)
            out[key].append(emb.cpu().numpy())
            if conf is not None:
                out[key + CONFIDENCE].append(conf.cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _cosine(e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    # squared L2 of unit vectors is 2 - 2cos: reuse the protocol's own normalisation
    return 1.0 - pair_distances(e1, e2) / 2.0


def score_metrics(scores: np.ndarray, issame: np.ndarray, fars: Iterable[float]) -> dict[str, float]:
    """ROC AUC and TAR@FAR of pair similarity scores."""
    same = np.asarray(issame, bool)
    out = {"auc": roc_auc(scores, same)}
    out.update({f"tar@far={far:g}": t for far, t in tar_at_far(scores, same, fars=tuple(fars)).items()})
    return out


def evaluate_pairs(e1: np.ndarray, e2: np.ndarray, issame: np.ndarray, fars: Iterable[float]) -> dict[str, float]:
    """ROC AUC and TAR@FAR of the cosine similarity of P embedding pairs."""
    return score_metrics(_cosine(e1, e2), issame, fars)


def url_pair_scores(emb: dict[str, np.ndarray], key1: str = "image1", key2: str = "image2") -> np.ndarray:
    """URL's confidence-weighted score of the pairs in an :func:`embed_dataset` result (P)."""
    return confidence_weighted_scores(emb[key1], emb[key1 + CONFIDENCE], emb[key2], emb[key2 + CONFIDENCE])


def confidence_metrics(*confidences: np.ndarray) -> dict[str, float]:
    """``confidence/mean_s`` and ``confidence/mean_log_s`` over the images and sub-embeddings of N×K arrays."""
    summary = confidence_summary(*confidences)
    return {"confidence/mean_s": summary["mean_s"], "confidence/mean_log_s": summary["mean_log_s"]}


def evaluate_bin(backbone: nn.Module, path: str | Path, *, image_size: int = 112, batch_size: int = 128,
                 device: str | torch.device = "cpu", degrade_to: int | None = None) -> dict[str, float]:
    """One insightface ``.bin`` set: 10-fold accuracy / std / threshold, ROC AUC and TAR@FAR (optionally with both
    images of every pair degraded to ``degrade_to`` px and upsampled back)."""
    from datamodules.ms1m import VerificationPairs

    emb = embed_dataset(backbone, VerificationPairs(path, image_size=image_size), ("image1", "image2"), batch_size,
                        device, degrade_to=degrade_to)
    issame = VerificationPairs(path, image_size=image_size, lazy=True).issame
    result = verify_pairs(emb["image1"], emb["image2"], issame)
    out = {"accuracy": result["accuracy"], "accuracy_std": result["accuracy_std"], "threshold": result["threshold"]}
    out.update(evaluate_pairs(emb["image1"], emb["image2"], issame, BIN_FARS))
    if "image1" + CONFIDENCE in emb:
        scores = url_pair_scores(emb)
        result = verify_scores(scores, issame)
        url = {"accuracy": result["accuracy"], "accuracy_std": result["accuracy_std"], "threshold": result["threshold"]}
        url.update(score_metrics(scores, issame, BIN_FARS))
        out.update({URL_PREFIX + k: v for k, v in url.items()})
        out.update(confidence_metrics(emb["image1" + CONFIDENCE], emb["image2" + CONFIDENCE]))
    return out


def evaluate_survface(backbone: nn.Module, root: str | Path, *, image_size: int = 112, batch_size: int = 128,
                      device: str | torch.device = "cpu", gallery: str = "prototypes",
                      cmc_gallery: str = "images") -> dict[str, float]:
    """QMUL-SurvFace verification (TAR@FAR, AUC), open-set identification (TPIR20@FPIR, AUC, with ``gallery`` units)
    and the closed-set CMC rank-1 / rank-5 of the mated probes (``cmc_gallery`` units; TinyFace ranks images)."""
    from datamodules.qmul_survface import SurvFaceIdentification, SurvFaceVerification

    ver = SurvFaceVerification(root, image_size=image_size)
    emb = embed_dataset(backbone, ver, ("image1", "image2"), batch_size, device)
    out = {f"verification/{k}": v for k, v in evaluate_pairs(emb["image1"], emb["image2"], ver.issame,
                                                            SURVFACE_FARS).items()}
    url: dict[str, float] = {}
    if "image1" + CONFIDENCE in emb:
        url.update({f"{URL_PREFIX}verification/{k}": v
                    for k, v in score_metrics(url_pair_scores(emb), ver.issame, SURVFACE_FARS).items()})
        url.update(confidence_metrics(emb["image1" + CONFIDENCE], emb["image2" + CONFIDENCE]))

    ident = SurvFaceIdentification(root, image_size=image_size)
    parts = {p: (embed_dataset(backbone, ident[p], ("image",), batch_size, device, confidence=False)["image"],
                 ident[p].identities) for p in ("gallery", "mated_probe", "unmated_probe")}
    probe_emb = np.concatenate([parts["mated_probe"][0], parts["unmated_probe"][0]])
    probe_ids = np.concatenate([parts["mated_probe"][1], np.full(len(parts["unmated_probe"][1]), -1)])
    res = open_set_identification(probe_emb, probe_ids, *parts["gallery"], fpirs=SURVFACE_FPIRS, rank=20,
                                  gallery=gallery)
    for fpir, tpir in res["tpir"].items():
        out[f"identification/tpir20@fpir={fpir:g}"] = float(tpir)
    out["identification/auc"] = float(res["auc"])
    ranks = cmc(*parts["mated_probe"], *parts["gallery"], ranks=CMC_RANKS, gallery=cmc_gallery)
    out.update({f"identification/rank{k}": float(v) for k, v in ranks.items()})
    out.update(url)
    return out


def to_markdown(results: dict[str, dict[str, float]]) -> str:
    """``evaluation.md``: every set's metrics, then (URL models) the mean confidence per set and input quality."""
    lines = ["| set | metric | value |", "|---|---|---|"]
    for name, metrics in results.items():
        lines += [f"| {name} | {k} | {v:.4f} |" for k, v in metrics.items()]
    lines += _confidence_markdown(results)
    return "\n".join(lines) + "\n"


def _confidence_markdown(results: dict[str, dict[str, float]]) -> list[str]:
    rows = {name: m for name, m in results.items() if "confidence/mean_s" in m}
    if not rows:
        return []
    lines = ["", ("Mean URL confidence s over images and sub-embeddings; Δ log s: change against the same set at full "
                  "resolution (< 0: the model is less confident on the degraded pairs)."), "",
             "| set | mean s | mean log s | Δ log s |", "|---|---|---|---|"]
    for name, m in rows.items():
        full = rows.get(name.split("@")[0]) if "@" in name else None
        delta = f"{m['confidence/mean_log_s'] - full['confidence/mean_log_s']:+.4f}" if full else "–"
        lines.append(f"| {name} | {m['confidence/mean_s']:.4f} | {m['confidence/mean_log_s']:.4f} | {delta} |")
    return lines


class FaceEvaluation(pl.Callback):
    """At the end of a fit, evaluates ``pl_module.backbone`` on ``.bin`` sets and / or QMUL-SurvFace.

    Args:
        bins: paths of ``.bin`` sets.
        survface_root: a QMUL-SurvFace release folder (``None`` = skip).
        image_size: backbone input size (images are resized to it).
        gallery: ``"prototypes"`` or ``"images"`` for the open-set identification gallery.
        cmc_gallery: the same for the closed-set rank-1 / rank-5 of the mated probes (TinyFace: ``"images"``).
        degrade_to: also evaluate every ``.bin`` set with its pairs shrunk to each of these sizes and upsampled back
            (``lfw@14px``): how much of the resolution problem is left.

    URL models (``pl_module.backbone.forward_with_confidence``) also get the confidence-weighted scores (``url/``
    keys) and the mean confidences per set and size (``confidence/``); see the module docstring.
    """

    def __init__(self, bins: Sequence[str] = (), survface_root: str | None = None, image_size: int = 112,
                 batch_size: int = 128, gallery: str = "prototypes", degrade_to: Sequence[int] = (),
                 cmc_gallery: str = "images"):
        self.bins, self.survface_root = [Path(b) for b in bins], survface_root
        self.degrade_to = [int(s) for s in degrade_to]
        self.image_size, self.batch_size, self.gallery, self.cmc_gallery = image_size, batch_size, gallery, cmc_gallery
        self.results: dict[str, dict[str, float]] = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        backbone, device = pl_module.backbone, pl_module.device
        was_training = backbone.training
        for path in self.bins:
            for size in [None, *self.degrade_to]:
                name = path.stem if size is None else f"{path.stem}@{size}px"
                self.results[name] = evaluate_bin(backbone, path, image_size=self.image_size,
                                                  batch_size=self.batch_size, device=device, degrade_to=size)
        if self.survface_root:
            self.results["qmul_survface"] = evaluate_survface(backbone, self.survface_root, image_size=self.image_size,
                                                              batch_size=self.batch_size, device=device,
                                                              gallery=self.gallery, cmc_gallery=self.cmc_gallery)
        backbone.train(was_training)
        run_dir = Path(trainer.default_root_dir)
        atomic_write_text(run_dir / "evaluation.json", json.dumps(self.results, indent=2) + "\n")
        atomic_write_text(run_dir / "evaluation.md", to_markdown(self.results))
        for logger in trainer.loggers:
            if hasattr(logger, "log_table"):
                rows = [[s, k, v] for s, m in self.results.items() for k, v in m.items()]
                logger.log_table("evaluation", columns=["set", "metric", "value"], data=rows)


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], image_size: int):
        self.paths, self.image_size = list(paths), image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from datamodules.image_io import read_image, to_tensor
        from datamodules.transforms import resize_uint8

        return {"image": to_tensor(resize_uint8(read_image(self.paths[i]), self.image_size))}


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def embed_files(backbone: nn.Module, images: str | Path | None = None, bin_path: str | Path | None = None, *,
                image_size: int = 112, batch_size: int = 128, device: str = "cpu") -> tuple[np.ndarray, list[str]]:
    """Flip-sum embeddings (N×D) of every image under a folder (sorted, recursive) or of a ``.bin`` set's 2P images
    (pair order), with their names."""
    if (images is None) == (bin_path is None):
        raise ValueError("give exactly one of images=DIR or bin_path=FILE")
    if images is not None:
        paths = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"{images}: no {'/'.join(IMAGE_SUFFIXES)} images")
        emb = embed_dataset(backbone, _ImageFiles(paths, image_size), ("image",), batch_size, device,
                            confidence=False)["image"]
        return emb, [str(p.relative_to(images)) for p in paths]
    from datamodules.ms1m import VerificationPairs

    emb = embed_dataset(backbone, VerificationPairs(bin_path, image_size=image_size), ("image1", "image2"),
                        batch_size, device, confidence=False)
    both = np.stack([emb["image1"], emb["image2"]], axis=1).reshape(-1, emb["image1"].shape[1])
    return both, [f"{Path(bin_path).stem}[{i}]" for i in range(len(both))]
