"""Face identification (1:N) metrics: open-set TPIR@FPIR (QMUL-SurvFace), closed-set CMC and mAP (TinyFace).

Open-set protocol (``reference/face_recognition.md`` §6.3; NIST FRVT definitions, TPIR = 1 − FNIR):

* features are L2-normalised and compared by cosine similarity;
* a probe is *mated* if its identity has a unit in the gallery, otherwise (id < 0, or an id absent from the
  gallery) it is *unmated*;
* FPIR(t) = fraction of unmated probes whose best gallery score is ≥ t (``strict=True``: > t, as BTNet);
* TPIR(t, r) = fraction of mated probes whose true mate is within the top r gallery units **and** scores ≥ t;
* TPIR@FPIR=x is read off the (FPIR(t), TPIR(t)) curve over a threshold grid at the grid point whose FPIR is
  closest to x (BTNet ``dir_at_far``; ties to the lowest threshold) or, with ``fpir_rule="at_most"``, as the largest
  TPIR with FPIR ≤ x;
* AUC = trapezoidal area under TPIR-vs-FPIR over the grid points (BTNet: ``sklearn.metrics.auc(FAR, DIR)``).

Gallery units (``gallery=``): ``"prototypes"`` averages the *un-normalised* embeddings of each gallery identity and
L2-normalises the mean (BTNet, 1ho0jin1); ``"images"`` keeps every gallery image and a mate is the first correct image
within the top r (fvmassoli's port of the official MATLAB; a miss never counts as a hit, whereas that port scores a
miss as 0 and so accepts it at thresholds ≤ 0). Gallery ids < 0 are distractors: never a mate, and kept as single
images even in prototype mode (unknown identities cannot be averaged together).

Ranks: a mate's rank is the number of gallery units scoring strictly higher than it (ties resolved in its favour).
Scores are computed in probe chunks on the embeddings' device, so neither P×G matrix is held at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["cmc", "gallery_units", "mate_ranks", "mean_average_precision", "open_set_identification"]

_CHUNK = 2048


def _tensor(x, dtype=torch.float32) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype)


def _ids(x, n: int, what: str, device) -> torch.Tensor:
    ids = _tensor(x, torch.int64).reshape(-1).to(device)
    if ids.numel() != n:
        raise ValueError(f"{what}: {ids.numel()} ids for {n} embeddings")
    return ids


def gallery_units(gallery_emb, gallery_ids, gallery: str = "prototypes") -> tuple[torch.Tensor, torch.Tensor]:
    """The units probes are compared with.

    Args:
        gallery_emb: G×D gallery embeddings (raw, not necessarily normalised).
        gallery_ids: G int ids (< 0: distractor).
        gallery: ``"prototypes"`` (per-identity normalised mean of the raw embeddings) or ``"images"``.

    Returns:
        (units U×D L2-normalised fp32, unit ids U); prototypes are ordered by id, then the distractor images.
    """
    emb = _tensor(gallery_emb)
    if emb.ndim != 2:
        raise ValueError(f"gallery embeddings must be G×D; got {tuple(emb.shape)}")
    ids = _ids(gallery_ids, emb.shape[0], "gallery", emb.device)
    if gallery == "images":
        return F.normalize(emb, dim=1), ids
    if gallery != "prototypes":
        raise ValueError(f"gallery must be 'prototypes' or 'images'; got {gallery!r}")
    known = ids >= 0
    uniq, inverse = torch.unique(ids[known], return_inverse=True)
    sums = torch.zeros(len(uniq), emb.shape[1], dtype=emb.dtype, device=emb.device).index_add_(0, inverse, emb[known])
    counts = torch.bincount(inverse, minlength=len(uniq)).to(emb.dtype).unsqueeze(1)
    units = torch.cat([sums / counts, emb[~known]])
    return F.normalize(units, dim=1), torch.cat([uniq, ids[~known]])


def mate_ranks(
    probe_emb, probe_ids, units: torch.Tensor, unit_ids: torch.Tensor, rank: int | None = None
) -> dict[str, np.ndarray]:
    """Per-probe mate score and rank, and best score overall.

    Args:
        probe_emb: P×D probe embeddings.
        probe_ids: P int ids.
        units: U×D L2-normalised gallery units (:func:`gallery_units`).
        unit_ids: U ids.
        rank: if given, also return each probe's ``rank``-th best score (``rth_score``).

    Returns:
        dict of P-length float64/int64 numpy arrays: ``mated`` (bool), ``mate_score`` (best score among the probe's
        own units; -inf if unmated), ``rank`` (units scoring strictly above the mate, 0-based; -1 if unmated),
        ``max_score`` (best score over all units).
    """
    probes = _tensor(probe_emb).to(units.device)
    if probes.ndim != 2 or probes.shape[1] != units.shape[1]:
        raise ValueError(f"probe embeddings must be P×{units.shape[1]}; got {tuple(probes.shape)}")
    pids = _ids(probe_ids, probes.shape[0], "probe", units.device)
    if units.shape[0] == 0:
        raise ValueError("empty gallery")
    probes = F.normalize(probes, dim=1)
    known_ids = torch.unique(unit_ids[unit_ids >= 0])
    mated = (pids >= 0) & torch.isin(pids, known_ids)
    mate_score, mate_rank, max_score, rth_score = [], [], [], []
    for start in range(0, probes.shape[0], _CHUNK):
        s = probes[start : start + _CHUNK] @ units.T
        own = unit_ids.unsqueeze(0) == pids[start : start + _CHUNK].unsqueeze(1)
        g = torch.where(own, s, torch.full_like(s, float("-inf"))).amax(dim=1)
        mate_score.append(g)
        mate_rank.append((s > g.unsqueeze(1)).sum(dim=1))
        max_score.append(s.amax(dim=1))
        if rank is not None:
            rth_score.append(s.topk(min(rank, s.shape[1]), dim=1).values[:, -1])
    mated_np = mated.cpu().numpy()
    rank_np = torch.cat(mate_rank).cpu().numpy().astype(np.int64)
    rank_np[~mated_np] = -1
    out = {
        "mated": mated_np,
        "mate_score": torch.cat(mate_score).double().cpu().numpy(),
        "rank": rank_np,
        "max_score": torch.cat(max_score).double().cpu().numpy(),
    }
    if rank is not None:
        out["rth_score"] = torch.cat(rth_score).double().cpu().numpy()
    return out


def _count_at(values: np.ndarray, thresholds: np.ndarray, strict: bool) -> np.ndarray:
    v = np.sort(values)
    side = "right" if strict else "left"
    return len(v) - np.searchsorted(v, thresholds, side=side)


def open_set_identification(
    probe_emb,
    probe_ids,
    gallery_emb,
    gallery_ids,
    fpirs: Sequence[float] = (0.3, 0.2, 0.1, 0.01),
    rank: int = 20,
    gallery: str = "prototypes",
    thresholds: None | int | Sequence[float] | np.ndarray = None,
    strict: bool = False,
    fpir_rule: str = "closest",
) -> dict:
    """Open-set identification: TPIR (rank ``rank``) at the given FPIRs and the AUC of the TPIR-vs-FPIR curve.

    Args:
        probe_emb: P×D probe embeddings (mated and unmated together).
        probe_ids: P ids; -1 (any id < 0) or an id absent from the gallery marks an unmated probe.
        gallery_emb: G×D gallery embeddings.
        gallery_ids: G ids (< 0: distractor image).
        fpirs: FPIR operating points.
        rank: r of TPIR_r (20 for QMUL-SurvFace).
        gallery: ``"prototypes"`` or ``"images"`` (module doc).
        thresholds: ``None``: every distinct score of the probes plus one value beyond the extreme, so every
            achievable (FPIR, TPIR) point is on the curve; an int n: BTNet's grid, n values
            ``linspace(min(lowest r-th best score of a mated probe, lowest unmated max), highest unmated max)``;
            an array: that grid
            (e.g. fvmassoli's ``np.logspace(-4, 0, 4000)``).
        strict: count a score as accepted when > t (BTNet) instead of ≥ t.
        fpir_rule: ``"closest"`` (BTNet) or ``"at_most"`` (largest TPIR with FPIR ≤ target).

    Returns:
        dict with ``tpir`` {fpir: TPIR}, ``threshold`` {fpir: t used}, ``fpir_achieved`` {fpir: FPIR at t}, ``auc``,
        ``curve`` {``threshold``, ``fpir``, ``tpir``: arrays over the ascending grid}, ``rank1`` (fraction of mated
        probes whose mate ranks first), ``n_mated``, ``n_unmated``.
    """
    if fpir_rule not in ("closest", "at_most"):
        raise ValueError(f"fpir_rule must be 'closest' or 'at_most'; got {fpir_rule!r}")
    if rank < 1:
        raise ValueError(f"rank must be ≥ 1; got {rank}")
    units, unit_ids = gallery_units(gallery_emb, gallery_ids, gallery)
    r = mate_ranks(probe_emb, probe_ids, units, unit_ids, rank=rank)
    mated = r["mated"]
    n_mated, n_unmated = int(mated.sum()), int((~mated).sum())
    if n_mated == 0 or n_unmated == 0:
        raise ValueError(f"open-set identification needs mated and unmated probes; got {n_mated} and {n_unmated}")
    unmated_max = r["max_score"][~mated]
    in_top = r["rank"][mated] < rank
    # A mate outside the top r is never identified, whatever the threshold.
    genuine = np.where(in_top, r["mate_score"][mated], -np.inf)

    if thresholds is None:
        values = np.unique(np.concatenate([unmated_max, genuine[in_top]]))
        beyond = np.nextafter(values[0], -np.inf) if strict else np.nextafter(values[-1], np.inf)
        grid = np.sort(np.append(values, beyond))
    elif isinstance(thresholds, (int, np.integer)):
        low = min(r["rth_score"][mated].min(), unmated_max.min())
        grid = np.linspace(low, unmated_max.max(), int(thresholds))
    else:
        grid = np.sort(np.asarray(thresholds, dtype=np.float64).reshape(-1))
    fpir_curve = _count_at(unmated_max, grid, strict) / n_unmated
    tpir_curve = _count_at(genuine, grid, strict) / n_mated

    tpir, used, achieved = {}, {}, {}
    for target in fpirs:
        if fpir_rule == "closest":
            i = int(np.argmin(np.abs(fpir_curve - target)))  # first = lowest threshold among ties
        else:
            ok = np.nonzero(fpir_curve <= target)[0]
            i = int(ok[0]) if len(ok) else len(grid) - 1  # FPIR falls as t rises: the first one has the most TPIR
        tpir[target], used[target], achieved[target] = float(tpir_curve[i]), float(grid[i]), float(fpir_curve[i])
    # Descending thresholds make FPIR and TPIR both non-decreasing.
    auc = float(np.trapezoid(tpir_curve[::-1], fpir_curve[::-1]))
    return {
        "tpir": tpir,
        "threshold": used,
        "fpir_achieved": achieved,
        "auc": auc,
        "curve": {"threshold": grid, "fpir": fpir_curve, "tpir": tpir_curve},
        "rank1": float(np.mean(r["rank"][mated] == 0)),
        "n_mated": n_mated,
        "n_unmated": n_unmated,
    }


def _mated_ranks(probe_emb, probe_ids, gallery_emb, gallery_ids, gallery: str, ignore_unmated: bool):
    units, unit_ids = gallery_units(gallery_emb, gallery_ids, gallery)
    r = mate_ranks(probe_emb, probe_ids, units, unit_ids)
    if not r["mated"].all() and not ignore_unmated:
        raise ValueError(
            f"{int((~r['mated']).sum())} probes have no mate in the gallery (closed-set needs one for every probe; "
            "pass ignore_unmated=True to leave them out)"
        )
    if not r["mated"].any():
        raise ValueError("no probe has a mate in the gallery")
    return units, unit_ids, r


def cmc(
    probe_emb,
    probe_ids,
    gallery_emb,
    gallery_ids,
    ranks: Sequence[int] = (1, 5, 10, 20),
    gallery: str = "images",
    ignore_unmated: bool = False,
) -> dict[int, float]:
    """Closed-set cumulative match characteristic: fraction of probes whose mate is among the top k gallery units.

    Args:
        probe_emb: P×D probe embeddings, all with a mate in the gallery (TinyFace ``Probe``).
        probe_ids: P ids.
        gallery_emb: G×D gallery embeddings (TinyFace: ``Gallery_Match`` + ``Gallery_Distractor``).
        gallery_ids: G ids (< 0: distractor, e.g. TinyFace's -100).
        ranks: the k to report.
        gallery: ``"images"`` (TinyFace) or ``"prototypes"``.
        ignore_unmated: leave out probes without a mate instead of raising.

    Returns:
        {k: rate in [0, 1]}.
    """
    _, _, r = _mated_ranks(probe_emb, probe_ids, gallery_emb, gallery_ids, gallery, ignore_unmated)
    mate_rank = r["rank"][r["mated"]]
    return {int(k): float(np.mean(mate_rank < k)) for k in ranks}


def mean_average_precision(
    probe_emb, probe_ids, gallery_emb, gallery_ids, gallery: str = "images", ignore_unmated: bool = False
) -> float:
    """Mean over probes of the average precision of the gallery ranking (TinyFace mAP).

    AP = (1/R) Σ_j j / pos_j over the probe's R relevant units, pos_j the 1-based position of the j-th relevant unit
    in the descending ranking (ties ordered in the relevant units' favour, as for :func:`cmc`).

    Args:
        probe_emb, probe_ids, gallery_emb, gallery_ids, gallery, ignore_unmated: as :func:`cmc`.

    Returns:
        mAP in [0, 1].
    """
    units, unit_ids, r = _mated_ranks(probe_emb, probe_ids, gallery_emb, gallery_ids, gallery, ignore_unmated)
    keep = np.nonzero(r["mated"])[0]
    probes = F.normalize(_tensor(probe_emb).to(units.device)[torch.as_tensor(keep, device=units.device)], dim=1)
    pids = _tensor(probe_ids, torch.int64).reshape(-1).to(units.device)[torch.as_tensor(keep, device=units.device)]
    aps = []
    for start in range(0, probes.shape[0], _CHUNK):
        s = probes[start : start + _CHUNK] @ units.T
        relevant = unit_ids.unsqueeze(0) == pids[start : start + _CHUNK].unsqueeze(1)
        # Relevant first, then a stable sort by score: equal scores keep the relevant units in front.
        first = torch.argsort(relevant.to(torch.int8), dim=1, descending=True, stable=True)
        by_score = torch.argsort(torch.gather(s, 1, first), dim=1, descending=True, stable=True)
        hits = torch.gather(torch.gather(relevant, 1, first), 1, by_score).double()
        position = torch.arange(1, s.shape[1] + 1, dtype=torch.float64, device=s.device)
        precision = hits.cumsum(dim=1) / position
        aps.append((precision * hits).sum(dim=1) / hits.sum(dim=1))
    return float(torch.cat(aps).mean())
