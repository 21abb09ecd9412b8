"""Low-resolution reality check: face verification on real photos shrunk to a few pixels and brought back up.

Each photo's face is aligned once, at full resolution, by our MTCNN's five landmarks onto the ArcFace template
(:func:`lrface.align.align_face_np`, ``crop_size``² pixels — the crop our recognition networks expect). For every
size s the crop is shrunk to s×s by area averaging (PIL's box filter: each output pixel the exact mean of the input
area it covers) and brought back to ``crop_size``² by bicubic interpolation, both as 8-bit images, as a real
thumbnail would be. Alignment is not re-detected on the degraded crops: every scorer sees the same pixels, framed
by the full-resolution landmarks (the usual protocol of low-resolution benchmarks, which degrade aligned crops).

Scorers (:class:`DlibScorer`, :class:`NetworkScorer`) map a batch of crops to descriptors and a pair to a distance:

- dlib's face-recognition ResNet: its own 150² chip is cut from the (degraded, re-upscaled) crop with dlib's
  5-point landmarks of the full-resolution photo carried into the crop by the alignment similarity; Euclidean
  distance, same person below dlib's 0.6.
- our networks (F_baseline / F_ours / URL: a :class:`lrface.weights.FaceFeatures`; BTNet): cosine distance
  1 − cos of ``f(x) + f(flip(x))``. They have no calibrated threshold on real faces, so their accuracy is at the
  best threshold *on these very pairs* (an optimistic number, stated as such). BTNet gets the s×s thumbnail itself,
  resized to the branch :func:`lrface.branch_selection.select_branches` routes it to (that is its design), not the
  re-upscaled crop.

Per size and scorer (:func:`verification_scores`): accuracy (at the scorer's threshold, or the best one), the mean
distance of same-identity pairs, of different-identity pairs, and their gap (different − same; larger separates
better; in the scorer's own units, so compare gaps within a scorer, across sizes).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from lrface.align import arcface_template_np, estimate_similarity_np, transform_points_np, warp_np

__all__ = [
    "FULL",
    "DlibScorer",
    "NetworkScorer",
    "align_crop",
    "best_threshold",
    "degrade",
    "lowres_table",
    "pair_list",
    "table_markdown",
    "verification_scores",
]

FULL = "full"  # the row of undegraded crops


def align_crop(image: np.ndarray, five_points, crop_size: int = 112,
               carry=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The ArcFace-framed crop of one face.

    Args:
        image: H×W×3 uint8 RGB.
        five_points: 5×2 landmarks in MTCNN / ArcFace order.
        crop_size: the crop's side.
        carry: optional K×2 points of ``image`` (e.g. dlib's landmarks) to carry into the crop.

    Returns:
        (crop_size×crop_size×3 uint8, the carried K×2 points in crop pixels or None).
    """
    matrix = estimate_similarity_np(np.asarray(five_points, dtype=np.float64), arcface_template_np(crop_size))
    crop = warp_np(image, matrix, crop_size)
    return crop, (None if carry is None else transform_points_np(carry, matrix))


def degrade(crop: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """H×W×3 uint8 → (size×size×3 area-averaged thumbnail, H×W×3 its bicubic re-upscale), both uint8."""
    crop = np.asarray(crop)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"degrade: expected an H×W×3 uint8 crop, got {crop.dtype} {crop.shape}")
    if not 1 <= int(size) <= min(crop.shape[:2]):
        raise ValueError(f"degrade: size must be in [1, {min(crop.shape[:2])}] (the crop's side), got {size}")
    pil = Image.fromarray(crop)
    small = pil.resize((int(size), int(size)), Image.Resampling.BOX)
    back = small.resize((crop.shape[1], crop.shape[0]), Image.Resampling.BICUBIC)
    return np.asarray(small), np.asarray(back)


def pair_list(identities: Sequence[str], sources: Sequence[str] | None = None,
              skip_same_source: bool = True) -> tuple[list[tuple[int, int, bool]], int]:
    """Every unordered pair of photos, labelled same / different identity.

    Args:
        identities: one identity name per photo.
        sources: one source-photo name per photo (crops or re-encodings of one photograph share it).
        skip_same_source: leave out pairs of the same source photo (their "same" verdict is trivial).

    Returns:
        ([(i, j, same)], how many pairs were left out).
    """
    if sources is not None and len(sources) != len(identities):
        raise ValueError(f"{len(sources)} sources for {len(identities)} photos")
    sources = list(sources) if sources is not None else [str(i) for i in range(len(identities))]
    pairs, skipped = [], 0
    for i in range(len(identities)):
        for j in range(i + 1, len(identities)):
            if skip_same_source and sources[i] == sources[j]:
                skipped += 1
                continue
            pairs.append((i, j, identities[i] == identities[j]))
    return pairs, skipped


def best_threshold(distances, same) -> tuple[float, float]:
    """(accuracy, threshold) of the best rule ``distance < threshold ⇒ same`` over these pairs: the seed paper's
    Algorithm 1 search (:func:`lrface.metrics.angles.best_angle_threshold`, which works on any distance)."""
    from lrface.metrics.angles import best_angle_threshold, separation_accuracy

    d, y = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    threshold = best_angle_threshold(d[y], d[~y])
    return separation_accuracy(d[y], d[~y], threshold), float(threshold)


def verification_scores(distances, same, threshold: float | None = None) -> dict[str, float]:
    """Accuracy and the same / different distance gap of one scorer at one size.

    Args:
        distances: P pair distances.
        same: P bools.
        threshold: the scorer's own threshold (``distance < threshold ⇒ same``); None: the best on these pairs.

    Returns:
        ``accuracy``, ``threshold`` (the one used), ``best_threshold`` (``threshold`` is None), ``same_mean``,
        ``diff_mean``, ``gap`` = diff_mean − same_mean.
    """
    d, y = np.asarray(distances, dtype=np.float64), np.asarray(same, dtype=bool)
    if d.shape != y.shape or d.ndim != 1 or not y.any() or y.all():
        raise ValueError(f"need P distances and P labels with both same and different pairs; got {d.shape} "
                         f"distances, {int(y.sum())} same of {y.size}")
    if threshold is None:
        accuracy, used = best_threshold(d, y)
    else:
        accuracy, used = float(((d < threshold) == y).mean()), float(threshold)
    same_mean, diff_mean = float(d[y].mean()), float(d[~y].mean())
    return {"accuracy": accuracy, "threshold": used, "best_threshold": threshold is None, "same_mean": same_mean,
            "diff_mean": diff_mean, "gap": diff_mean - same_mean}


@dataclass
class DlibScorer:
    """dlib's descriptors of crops, through dlib's own chip (see the module docstring).

    Attributes:
        judge: a :class:`lrface.judges.DlibIdentityJudge` (backend ``dlib`` or ``torch``).
    """

    judge: object
    name: str = "dlib"

    @property
    def threshold(self) -> float:
        return float(self.judge.threshold)

    def embed(self, crops: np.ndarray, thumbnails: np.ndarray, dlib_landmarks: np.ndarray) -> np.ndarray:
        """N×S×S×3 uint8 crops (+ thumbnails, unused) + N×5×2 dlib-order landmarks in the crops → N×128."""
        chips = np.stack([self.judge.chip(c, p) for c, p in zip(crops, dlib_landmarks)])
        return self.judge.embed_chips(chips)

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), axis=-1)


@dataclass
class NetworkScorer:
    """One of our recognition networks as a scorer.

    Attributes:
        net: images B×3×h×w in [0, 1] → B×D (a :class:`lrface.weights.FaceFeatures`), or a
            :class:`lrface.nets.btnet.BTNet` (B×3×s×s in [-1, 1], s a branch or the trunk size) when ``btnet``.
        name: its column name.
        btnet: route each thumbnail to a BTNet branch (``strategy`` of :func:`lrface.branch_selection.select_branches`)
            instead of feeding the re-upscaled crop.
    """

    net: torch.nn.Module
    name: str
    btnet: bool = False
    strategy: str = "near"
    threshold = None  # no calibrated threshold on real faces: the best on the pairs

    def _input(self, crops: np.ndarray, thumbnails: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
        if not self.btnet:
            return x
        from lrface.branch_selection import select_branches

        side = int(thumbnails.shape[1])
        if side == crops.shape[1]:  # the undegraded row: TNet on the crop at its own size
            branch = self.net.trunk_size
        else:
            branch = int(select_branches([[side, side]], (*self.net.resolutions, self.net.trunk_size),
                                         strategy=self.strategy)[0])
            x = torch.from_numpy(np.ascontiguousarray(thumbnails)).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != branch:
            x = torch.nn.functional.interpolate(x, size=(branch, branch), mode="bicubic", align_corners=False,
                                                antialias=x.shape[-1] > branch).clamp(0, 1)
        return x.mul(2.0).sub(1.0)

    @torch.no_grad()
    def embed(self, crops: np.ndarray, thumbnails: np.ndarray, dlib_landmarks=None) -> np.ndarray:
        """N×S×S×3 uint8 crops and N×s×s×3 thumbnails → N×D unit descriptors of f(x) + f(flip(x))."""
        x = self._input(crops, thumbnails)
        e = self.net(x).float() + self.net(torch.flip(x, dims=[3])).float()
        return torch.nn.functional.normalize(e, dim=1).double().numpy()

    @staticmethod
    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """1 − cos between unit descriptors."""
        return 1.0 - (np.asarray(a) * np.asarray(b)).sum(-1)


def lowres_table(crops: np.ndarray, identities: Sequence[str], sizes: Sequence[int], scorers: Sequence,
                 dlib_landmarks: np.ndarray | None = None, sources: Sequence[str] | None = None,
                 skip_same_source: bool = True, progress: Callable[[str], None] | None = None) -> dict:
    """The reality-check table.

    Args:
        crops: N×S×S×3 uint8 aligned crops (:func:`align_crop`).
        identities: N identity names.
        sizes: the thumbnail sides s (each ≤ S); the undegraded crops are scored too, as row ``"full"``.
        scorers: :class:`DlibScorer` / :class:`NetworkScorer` (anything with ``name``, ``threshold``,
            ``embed(crops, thumbnails, dlib_landmarks)``, ``distance(a, b)``).
        dlib_landmarks: N×5×2 dlib-order landmarks in crop pixels (needed by a :class:`DlibScorer`).
        sources, skip_same_source: see :func:`pair_list`.

    Returns:
        ``{"rows": {size or "full": {scorer: verification_scores(...)}}, "pairs": {"same", "different", "skipped"},
        "distances": {row: {scorer: [P floats]}}, "pair_index": [[i, j, same]]}``.
    """
    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"crops: expected N×S×S×3 uint8 aligned faces, got {crops.dtype} {crops.shape}")
    if len(identities) != len(crops):
        raise ValueError(f"{len(identities)} identities for {len(crops)} crops")
    pairs, skipped = pair_list(identities, sources, skip_same_source)
    same = np.array([s for _, _, s in pairs], dtype=bool)
    ia, ib = np.array([i for i, _, _ in pairs]), np.array([j for _, j, _ in pairs])
    rows, distances = {}, {}
    for size in [FULL, *sorted({int(s) for s in sizes}, reverse=True)]:
        if size == FULL:
            thumbs, backs = crops, crops
        else:
            degraded = [degrade(c, size) for c in crops]
            thumbs, backs = np.stack([t for t, _ in degraded]), np.stack([b for _, b in degraded])
        row, drow = {}, {}
        for scorer in scorers:
            if progress:
                progress(f"{scorer.name} @ {size}")
            emb = scorer.embed(backs, thumbs, dlib_landmarks)
            d = scorer.distance(emb[ia], emb[ib])
            row[scorer.name] = verification_scores(d, same, scorer.threshold)
            drow[scorer.name] = [float(v) for v in d]
        rows[str(size)], distances[str(size)] = row, drow
    return {"rows": rows, "distances": distances,
            "pairs": {"same": int(same.sum()), "different": int((~same).sum()), "skipped": skipped},
            "pair_index": [[int(i), int(j), bool(s)] for i, j, s in pairs]}


def table_markdown(result: Mapping, omitted: Mapping[str, str] | None = None) -> str:
    """The table of :func:`lowres_table` as Markdown: a row per size, per scorer ``accuracy`` and ``gap``."""
    rows = result["rows"]
    scorers = list(next(iter(rows.values())))
    head = "| size (px) | " + " | ".join(f"{s} acc | {s} gap" for s in scorers) + " |"
    rule = "|---|" + "---:|---:|" * len(scorers)
    lines = [head, rule]
    for size, row in rows.items():
        cells = " | ".join(f"{row[s]['accuracy']:.3f} | {row[s]['gap']:+.3f}" for s in scorers)
        lines.append(f"| {size} | {cells} |")
    p = result["pairs"]
    notes = [f"{p['same']} same-identity and {p['different']} different-identity pairs"
             + (f" ({p['skipped']} pairs of crops / re-encodings of one photograph left out)" if p["skipped"] else "")
             + "."]
    for s in scorers:
        first = next(iter(rows.values()))[s]
        notes.append(f"{s}: " + ("accuracy at the best threshold on these pairs (optimistic), distance 1 − cos"
                                 if first["best_threshold"] else
                                 f"accuracy at its own threshold {first['threshold']:g}, Euclidean distance")
                     + "; gap = mean different − mean same distance.")
    for name, why in (omitted or {}).items():
        notes.append(f"{name}: left out — {why}.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
