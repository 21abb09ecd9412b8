"""How far apart two landmark detectors put the same face's points, in inter-ocular distances.

Detectors disagree on *which* points they give, so every source is first mapped to one common set,
:data:`COMMON_POINTS` = (left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner), "left"
meaning image-left (MTCNN's, YuNet's and the ArcFace template's order); a point a source does not give is NaN:

=========================  ==================================  =====================  ==================
source                     eye centres                         nose tip               mouth corners
=========================  ==================================  =====================  ==================
MTCNN, YuNet (5 points)    points 0, 1                         point 2                points 3, 4
dlib 5-point               mean of the two corners of each     — (point 4 is the      —
                           eye: (2, 3) image-left, (0, 1)      base of the nose, a
                           image-right                         different point)
dlib 68-point (iBUG)       mean of the six contour points      point 30               points 48, 54
                           36–41 image-left, 42–47 right
=========================  ==================================  =====================  ==================

An eye centre as the mean of two corners (or of a contour) is where a 5-point detector's "eye" lands on a frontal
face; on a turned face the two differ by a fraction of the eye's width, part of what is measured.

:func:`agreement` then gives, per common point both sources have, the Euclidean distance divided by the inter-ocular
distance (distance between the eye centres, averaged over the two sources so the measure is symmetric), and their
mean — the normalised mean error of face-alignment benchmarks (300-W's, with eye centres).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["COMMON_POINTS", "EYES", "agreement", "agreement_table", "from_dlib5", "from_dlib68", "from_five_point",
           "interocular", "to_common"]

COMMON_POINTS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
EYES = ("left_eye", "right_eye")
FORMATS = ("five_point", "dlib5", "dlib68")


def _points(landmarks, n: int, what: str) -> np.ndarray:
    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.shape != (n, 2) or not np.isfinite(arr).all():
        raise ValueError(f"{what}: expected {n}×2 finite (x, y) landmarks, got shape {arr.shape}")
    return arr


def from_five_point(landmarks) -> np.ndarray:
    """MTCNN / YuNet / ArcFace order 5×2 → the common 5×2 (the same points)."""
    return _points(landmarks, 5, "five-point landmarks").copy()


def from_dlib5(landmarks) -> np.ndarray:
    """dlib ``shape_predictor_5_face_landmarks`` 5×2 → the common 5×2 (eye centres; nose and mouth NaN)."""
    p = _points(landmarks, 5, "dlib 5-point landmarks")
    out = np.full((5, 2), np.nan)
    out[0], out[1] = p[2:4].mean(0), p[0:2].mean(0)
    return out


def from_dlib68(landmarks) -> np.ndarray:
    """dlib ``shape_predictor_68_face_landmarks`` (iBUG 300-W order) 68×2 → the common 5×2."""
    p = _points(landmarks, 68, "dlib 68-point landmarks")
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def to_common(landmarks, fmt: str) -> np.ndarray:
    """Any supported format (``"five_point"``, ``"dlib5"``, ``"dlib68"``) → the common 5×2 (NaN where absent)."""
    convert = {"five_point": from_five_point, "dlib5": from_dlib5, "dlib68": from_dlib68}.get(fmt)
    if convert is None:
        raise ValueError(f"landmark format: expected one of {FORMATS}, got {fmt!r}")
    return convert(landmarks)


def interocular(common) -> float:
    """Distance between the two eye centres of a common 5×2."""
    p = np.asarray(common, dtype=np.float64)
    return float(np.linalg.norm(p[1] - p[0]))


def agreement(a, b) -> dict[str, float]:
    """Distances between two sources' common 5×2 landmarks of one face, in inter-ocular distances.

    Returns:
        ``{point: d / iod}`` for every common point both give (NaN for the others), ``mean`` over those points,
        ``eyes`` over the two eye centres, and ``iod`` (pixels, the two sources' mean).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != (5, 2) or b.shape != (5, 2):
        raise ValueError(f"expected two common 5×2 landmark sets, got {a.shape} and {b.shape}")
    iod = 0.5 * (interocular(a) + interocular(b))
    if not np.isfinite(iod) or iod <= 0:
        raise ValueError(f"both sources need two distinct eye centres; got inter-ocular distance {iod}")
    d = np.linalg.norm(a - b, axis=1) / iod
    out = {name: float(v) for name, v in zip(COMMON_POINTS, d)}
    out["mean"] = float(np.nanmean(d))
    out["eyes"] = float(d[:2].mean())
    out["iod"] = iod
    return out


def agreement_table(landmarks: Mapping[str, Mapping[str, np.ndarray | None]],
                    pairs: Sequence[tuple[str, str]] | None = None) -> dict:
    """Every pair of sources on every photo.

    Args:
        landmarks: ``{source: {photo: common 5×2, or None where the source found no face}}``; all sources must name
            the same photos.
        pairs: source pairs to compare (default: every pair, in the mapping's order).

    Returns:
        ``{"per_photo": {"a vs b": {photo: agreement dict or None}}, "mean": {"a vs b": {"mean", "eyes", <points>,
        "photos": compared, "missing": photos a source missed}}}``; means are over the photos both sources found.
    """
    sources = list(landmarks)
    photos = list(landmarks[sources[0]]) if sources else []
    for s in sources:
        if list(landmarks[s]) != photos:
            raise ValueError(f"landmark source {s!r} covers photos {list(landmarks[s])}, expected {photos}")
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(sources) for b in sources[i + 1:]]
    per_photo, means = {}, {}
    for a, b in pairs:
        for s in (a, b):
            if s not in landmarks:
                raise ValueError(f"unknown landmark source {s!r}; known: {sources}")
        key = f"{a} vs {b}"
        rows = {p: (agreement(landmarks[a][p], landmarks[b][p])
                    if landmarks[a][p] is not None and landmarks[b][p] is not None else None) for p in photos}
        per_photo[key] = rows
        found = [r for r in rows.values() if r is not None]
        summary = {k: (float(np.nanmean([r[k] for r in found])) if found and any(np.isfinite(r[k]) for r in found)
                       else float("nan")) for k in ("mean", "eyes", *COMMON_POINTS)}
        summary["photos"] = len(found)
        summary["missing"] = [p for p, r in rows.items() if r is None]
        means[key] = summary
    return {"per_photo": per_photo, "mean": means}
