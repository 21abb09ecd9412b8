"""URL's uncertainty-guided pair score: per-sub-embedding cosines weighted by both images' confidences.

Shi et al., "Towards Universal Representation Learning for Deep Face Recognition" (seed 001; ``reference/methods.md``
§3): the embedding f is split into K sub-embeddings f^(k), each with a confidence s^(k) = 1/σ^(k)² > 0. At test time a
pair (1, 2) is scored as

    score = Σ_k w_k · cos(f1^(k), f2^(k)),   w_k = s1^(k)·s2^(k) / Σ_k' s1^(k')·s2^(k'),

so a sub-embedding that either image is unsure of counts little. The weights are a convex combination, so the score
stays in [-1, 1] like a cosine; with equal confidences it is the mean of the K sub-cosines.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["confidence_summary", "confidence_weighted_scores", "sub_embedding_cosines"]


def _array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        x = x.numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N×D embeddings or N×K confidences); got shape {a.shape}")
    return a


def sub_embedding_cosines(emb1, emb2, k: int) -> np.ndarray:
    """Cosine of every pair's k-th sub-embeddings.

    Args:
        emb1: N×D embeddings (numpy or torch; the raw, un-normalised embedding is fine).
        emb2: N×D embeddings.
        k: number of sub-embeddings K (D divisible by K).

    Returns:
        N×K float64 cosines; an all-zero sub-embedding has cosine 0 with anything.
    """
    a, b = _array(emb1, "emb1"), _array(emb2, "emb2")
    if a.shape != b.shape:
        raise ValueError(f"emb1 and emb2 must have the same shape N×D; got {a.shape} and {b.shape}")
    n, d = a.shape
    if k < 1 or d % k:
        raise ValueError(f"embedding size {d} cannot be split into K={k} sub-embeddings of equal size")
    a, b = a.reshape(n, k, d // k), b.reshape(n, k, d // k)
    tiny = np.finfo(np.float64).tiny
    a = a / np.maximum(np.linalg.norm(a, axis=2, keepdims=True), tiny)
    b = b / np.maximum(np.linalg.norm(b, axis=2, keepdims=True), tiny)
    return np.sum(a * b, axis=2)


def confidence_weighted_scores(emb1, conf1, emb2, conf2) -> np.ndarray:
    """URL's test-time similarity of N pairs.

    Args:
        emb1: N×D embeddings of the first images (numpy or torch).
        conf1: N×K confidences s^(k) > 0 of the first images (K = ``conf1.shape[1]``, D divisible by K).
        emb2: N×D embeddings of the second images.
        conf2: N×K confidences of the second images.

    Returns:
        N float64 scores in [-1, 1] (higher = more likely the same identity).

    Raises:
        ValueError: mismatched shapes, D not divisible by K, or a confidence that is not finite and > 0.
    """
    e1, e2 = _array(emb1, "emb1"), _array(emb2, "emb2")
    s1, s2 = _array(conf1, "conf1"), _array(conf2, "conf2")
    if s1.shape != s2.shape:
        raise ValueError(f"conf1 and conf2 must have the same shape N×K; got {s1.shape} and {s2.shape}")
    if e1.shape[0] != s1.shape[0] or e2.shape[0] != s2.shape[0]:
        raise ValueError(f"embeddings {e1.shape} / {e2.shape} and confidences {s1.shape} / {s2.shape}: one N×K "
                         "confidence row per N×D embedding")
    for name, s in (("conf1", s1), ("conf2", s2)):
        bad = ~(np.isfinite(s) & (s > 0))
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise ValueError(f"{name}[{i}, {j}] = {s[i, j]}: confidences must be finite and > 0 (s = exp(·))")
    cos = sub_embedding_cosines(e1, e2, s1.shape[1])
    # Rescale by the row maximum before multiplying: s can reach e^7 per image, and only the ratios matter.
    w = (s1 / s1.max(axis=1, keepdims=True)) * (s2 / s2.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return np.sum(w * cos, axis=1)


def confidence_summary(*confidences) -> dict[str, float | list[float]]:
    """How confident a URL model is on a set of images (e.g. one quality level).

    Args:
        *confidences: N_i×K confidence arrays (numpy or torch), pooled.

    Returns:
        dict with ``mean_s`` (mean over images and sub-embeddings of s), ``mean_log_s`` (of log s: the scale on which a
        drop reads as a factor), ``mean_uncertainty`` (of 1/s), ``per_sub_embedding`` (K means of s) and ``n`` images.
    """
    if not confidences:
        raise ValueError("confidence_summary needs at least one N×K array")
    arrays = [_array(c, "confidences") for c in confidences]
    if len({a.shape[1] for a in arrays}) != 1:
        raise ValueError(f"confidence arrays disagree on K: {[a.shape for a in arrays]}")
    s = np.concatenate(arrays)
    if s.size == 0:
        raise ValueError("confidence_summary got no images")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError("confidences must be finite and > 0 (s = exp(·))")
    return {"mean_s": float(s.mean()), "mean_log_s": float(np.log(s).mean()), "mean_uncertainty": float((1 / s).mean()),
            "per_sub_embedding": [float(v) for v in s.mean(axis=0)], "n": int(s.shape[0])}
