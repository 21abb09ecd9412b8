"""An IJB-C-TinyFace-style 1:1 covariate verification protocol (RAN supplementary §3).

The RAN paper (Fang et al., ECCV 2020) builds "IJB-C TinyFace" from IJB-C: a face counts as low-resolution when the
distance between the midpoint of its eyes and the midpoint of its mouth corners lies strictly between 10 and 30 px
(7,985 faces). Each LR face is paired with up to 20 non-repeating other faces of the same subject (all of them when
the subject has fewer), giving 158,338 positive pairs; the negatives are the 39,584,639 pairs of IJB-C's own 1:1
covariate protocol, and TAR is reported at FAR 1e-7 … 1e-1.

IJB-C's covariate negative list is a fixed file of the IJB-C release that we cannot ship or rebuild, so
:func:`build_covariate_protocol` draws its own: for each LR face, up to ``negatives_per_face`` faces of other
subjects. Numbers from this protocol are therefore *not* comparable with the paper's Table 1 (the negatives, the
faces and the scale all differ); they compare methods with each other on the same protocol file.

TAR@FAR rule (:func:`evaluate_covariate`): with Q negatives and a target FAR, at most k = ⌊FAR·Q⌋ false accepts are
allowed; the threshold τ is the (k+1)-th largest negative score, so at most k negatives score above it (exactly k
without ties), and TAR is the fraction of positives with score > τ. When FAR·Q < 1 the only admissible operating
point has zero false accepts, which says nothing about the target FAR (0 out of Q is as consistent with 1e-7 as with
1/Q): such a FAR is not resolvable with Q negatives and is reported as NaN. IJB-C's 39.6 M negatives resolve 1e-7;
a protocol with 1,000 negatives per LR face resolves FAR ≥ 1 / (1000·L) only.

Pure numpy / torch; the dataset side (CelebA faces shrunk to IJB-C-like sizes) is
:mod:`datamodules.covariate_faces`.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrface.metrics.verification import _np, roc_auc

__all__ = [
    "COVARIATE_FARS",
    "CovariateProtocol",
    "build_covariate_protocol",
    "evaluate_covariate",
    "eye_mouth_distance",
    "pair_cosines",
]

COVARIATE_FARS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
_FORMAT_VERSION = 1


def eye_mouth_distance(landmarks) -> np.ndarray:
    """Distance between the eyes' midpoint and the mouth corners' midpoint (the supplementary's size criterion).

    Args:
        landmarks: N×5×2 (x, y) points in the order left eye, right eye, nose, left mouth, right mouth
            (numpy or torch).

    Returns:
        N float64 distances in the landmarks' pixel units.
    """
    points = _np(landmarks, np.float64)
    if points.ndim != 3 or points.shape[1:] != (5, 2):
        raise ValueError(f"expected N×5×2 landmarks, got shape {points.shape}")
    eyes = points[:, 0:2].mean(axis=1)
    mouth = points[:, 3:5].mean(axis=1)
    return np.linalg.norm(eyes - mouth, axis=1)


@dataclass
class CovariateProtocol:
    """A 1:1 covariate protocol over a list of N faces.

    Attributes:
        lr_faces: L int64 indices of the selected low-resolution faces, ascending.
        positives: P×2 int64 same-subject pairs; column 0 is the LR face.
        negatives: Q×2 int64 different-subject pairs; column 0 is the LR face.
        n_faces: N, the length of the face list the indices point into (checked against embeddings / datasets).
    """

    lr_faces: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    n_faces: int

    def __post_init__(self):
        self.lr_faces = np.asarray(self.lr_faces, dtype=np.int64).reshape(-1)
        self.positives = np.asarray(self.positives, dtype=np.int64).reshape(-1, 2)
        self.negatives = np.asarray(self.negatives, dtype=np.int64).reshape(-1, 2)
        self.n_faces = int(self.n_faces)
        for name in ("lr_faces", "positives", "negatives"):
            values = getattr(self, name)
            if values.size and (values.min() < 0 or values.max() >= self.n_faces):
                raise ValueError(f"{name} holds face indices outside [0, {self.n_faces}): "
                                 f"min {values.min()}, max {values.max()}")

    def used_faces(self) -> np.ndarray:
        """Ascending indices of every face the protocol touches (LR faces and both sides of every pair)."""
        return np.unique(np.concatenate([self.lr_faces, self.positives.reshape(-1), self.negatives.reshape(-1)]))

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (uncompressed) atomically: a ``.tmp`` sibling, then ``os.replace``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, version=np.int64(_FORMAT_VERSION), n_faces=np.int64(self.n_faces), lr_faces=self.lr_faces,
                     positives=self.positives, negatives=self.negatives)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CovariateProtocol:
        """Read a file written by :meth:`save`; anything else raises ``ValueError`` naming the file and the problem."""
        path = Path(path)
        expected = "an .npz written by CovariateProtocol.save (version, n_faces, lr_faces, positives, negatives)"
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{path}: not a covariate protocol file ({exc}); expected {expected}") from None
        missing = [k for k in ("version", "n_faces", "lr_faces", "positives", "negatives") if k not in arrays]
        if missing:
            raise ValueError(f"{path}: missing array(s) {', '.join(missing)}; expected {expected}")
        if int(arrays["version"]) != _FORMAT_VERSION:
            raise ValueError(f"{path}: format version {int(arrays['version'])}; expected {_FORMAT_VERSION}")
        for key, ndim in (("lr_faces", 1), ("positives", 2), ("negatives", 2)):
            a = arrays[key]
            if not np.issubdtype(a.dtype, np.integer) or a.ndim != ndim or (ndim == 2 and a.shape[1] != 2):
                want = "a 1-D integer array" if ndim == 1 else "an integer K×2 array"
                raise ValueError(f"{path}: {key} is {a.dtype} with shape {a.shape}; expected {want}")
        try:
            return cls(arrays["lr_faces"], arrays["positives"], arrays["negatives"], int(arrays["n_faces"]))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def build_covariate_protocol(landmarks, identities, low: float = 10.0, high: float = 30.0,
                             positives_per_face: int = 20, negatives_per_face: int = 1000,
                             seed: int = 0) -> CovariateProtocol:
    """Select the LR faces and draw their positive and negative pairs (supp. §3).

    LR faces: ``low < eye_mouth_distance < high`` (strict, both ends). Positives: for each LR face (ascending), the
    other faces of its subject in a seeded random order, skipping a partner already paired with it (an LR partner that
    drew this face first), until ``positives_per_face`` are taken or the subject is exhausted (then all of them).
    No self pairs, no duplicate unordered pairs. Negatives: for each LR face, up to ``negatives_per_face`` distinct
    faces of other subjects drawn uniformly without replacement (all of them when fewer); unordered duplicates (two
    LR faces that drew each other) are kept once. Partners of either kind may be of any size, as in IJB-C.

    Args:
        landmarks: N×5×2 landmarks in each face's own pixels (numpy or torch).
        identities: N subject ids (any integers).
        low: exclusive lower bound of the eye–mouth distance (px).
        high: exclusive upper bound (px).
        positives_per_face: at most this many positives per LR face (20 in the paper).
        negatives_per_face: at most this many negatives per LR face.
        seed: RNG seed; the protocol depends only on it and the inputs.

    Returns:
        :class:`CovariateProtocol` over the N faces.
    """
    ids = _np(identities).reshape(-1)
    dist = eye_mouth_distance(landmarks)
    if len(ids) != len(dist):
        raise ValueError(f"{len(dist)} landmark rows but {len(ids)} identities")
    if not low < high:
        raise ValueError(f"need low < high, got ({low}, {high})")
    n = len(ids)
    rng = np.random.default_rng(seed)
    lr = np.flatnonzero((dist > low) & (dist < high)).astype(np.int64)

    order = np.argsort(ids, kind="stable")
    uniq, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    subject = np.searchsorted(uniq, ids)  # dense subject index per face
    members = [order[s:s + c] for s, c in zip(starts, counts)]

    positives: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for i in lr.tolist():
        candidates = members[subject[i]]
        taken = 0
        for j in rng.permutation(candidates).tolist():
            if taken >= positives_per_face:
                break
            key = (min(i, j), max(i, j))
            if j == i or key in seen:
                continue
            seen.add(key)
            positives.append((i, j))
            taken += 1

    negatives: list[np.ndarray] = []
    for i in lr.tolist():
        n_same = int(counts[subject[i]])
        n_other = n - n_same
        if n_other <= 0 or negatives_per_face <= 0:
            continue
        if n_other <= negatives_per_face:
            partners = np.flatnonzero(subject != subject[i])
        else:
            # at most n_same of the draws are same-subject faces, so enough others always remain
            draw = rng.choice(n, size=min(n, negatives_per_face + n_same), replace=False)
            partners = draw[subject[draw] != subject[i]][:negatives_per_face]
        negatives.append(np.stack([np.full(len(partners), i, dtype=np.int64), partners.astype(np.int64)], axis=1))
    neg = np.concatenate(negatives) if negatives else np.zeros((0, 2), dtype=np.int64)
    if len(neg):
        keys = np.minimum(neg[:, 0], neg[:, 1]) * n + np.maximum(neg[:, 0], neg[:, 1])
        _, first = np.unique(keys, return_index=True)
        neg = neg[np.sort(first)]
    pos = np.asarray(positives, dtype=np.int64).reshape(-1, 2)
    return CovariateProtocol(lr, pos, neg, n)


def pair_cosines(embeddings, pairs, chunk: int = 65536) -> np.ndarray:
    """Cosine similarity of embedding pairs, in chunks (Q can be tens of millions).

    Args:
        embeddings: N×D (numpy or torch; need not be normalised; a zero row scores 0).
        pairs: K×2 indices into the rows.
        chunk: pairs per block.

    Returns:
        K float64 cosines.
    """
    emb = _np(embeddings, np.float32)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if emb.ndim != 2:
        raise ValueError(f"expected N×D embeddings, got shape {emb.shape}")
    norms = np.maximum(np.linalg.norm(emb.astype(np.float64), axis=1), np.finfo(np.float64).tiny)
    out = np.empty(len(pairs), dtype=np.float64)
    for s in range(0, len(pairs), chunk):
        a, b = pairs[s:s + chunk, 0], pairs[s:s + chunk, 1]
        dots = np.einsum("ij,ij->i", emb[a].astype(np.float64), emb[b].astype(np.float64))
        out[s:s + chunk] = dots / (norms[a] * norms[b])
    return out


def _far_threshold(neg_desc: np.ndarray, far: float) -> float:
    """The (k+1)-th largest negative score, k = ⌊FAR·Q⌋; NaN when k < 1 (unresolvable), -inf when k ≥ Q."""
    q = len(neg_desc)
    k = int(np.floor(far * q * (1.0 + 1e-9)))  # the slack absorbs 0.29*100 = 28.999999999999996
    if q == 0 or k < 1:
        return float("nan")
    if k >= q:
        return float("-inf")
    return float(neg_desc[k])


def evaluate_covariate(embeddings, protocol: CovariateProtocol,
                       fars: Sequence[float] = COVARIATE_FARS) -> dict[str, float]:
    """TAR@FAR and ROC AUC of the protocol's cosine scores.

    Args:
        embeddings: N×D face embeddings, row i for face i of the protocol's face list (numpy or torch).
        protocol: the pairs.
        fars: target false accept rates.

    Returns:
        dict with ``tar@far=<far:g>`` per FAR (NaN when FAR·Q < 1 or there are no positives; see the module
        docstring for the threshold rule), ``auc`` (NaN without both kinds of pairs), ``n_lr_faces``,
        ``n_positives``, ``n_negatives``.
    """
    emb = _np(embeddings, np.float32)
    if emb.ndim != 2 or len(emb) != protocol.n_faces:
        raise ValueError(f"expected {protocol.n_faces}×D embeddings (one row per face of the protocol), "
                         f"got shape {emb.shape}")
    pos = pair_cosines(emb, protocol.positives)
    neg = pair_cosines(emb, protocol.negatives)
    neg_desc = np.sort(neg)[::-1]
    out: dict[str, float] = {}
    for far in fars:
        tau = _far_threshold(neg_desc, far)
        out[f"tar@far={far:g}"] = float(np.mean(pos > tau)) if len(pos) and not np.isnan(tau) else float("nan")
    if len(pos) and len(neg):
        labels = np.r_[np.ones(len(pos), dtype=bool), np.zeros(len(neg), dtype=bool)]
        out["auc"] = roc_auc(np.r_[pos, neg], labels)
    else:
        out["auc"] = float("nan")
    out.update(n_lr_faces=len(protocol.lr_faces), n_positives=len(pos), n_negatives=len(neg))
    return out
