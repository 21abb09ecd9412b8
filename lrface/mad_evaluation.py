"""MAD's measurements (seed 003, supplementary §7 Tables 1–2) on tensors: a trained :class:`lrface.nets.mad.MADNet`
and images in [0, 1]; the datasets are the caller's (:class:`callbacks.mad_evaluation.MADEvaluation`).

Table 1 columns:

* reconstruction RMSE (train / test): per image sqrt(mean((x − P(Q(x)))²)) on 0..255 pixel values, averaged
  (:func:`reconstruction_rmse`);
* "Random FID": the Fréchet distance between random samples P(z), z ~ N(0, I), and real test faces. Inception
  weights cannot be downloaded here, so the features are a face-recognition network's embeddings (ours) — or
  area-downsampled pixels when none is given — and the number is named for its feature space, never "FID"
  (:func:`random_sample_fd`);
* expression AUC and verification accuracy, as in Table 2 below, from f_e and f_id.

Table 2 columns: how much expression / identity information an embedding and its complement carry:

* verification accuracy on ``.bin`` pairs (insightface 10-fold protocol, :func:`lrface.metrics.verification.
  verify_pairs`) from f_id = E(Q(x))_identity and from f_¬id (pose, style and expression concatenated; the
  protocol L2-normalises the whole vector, so the 3 raw pose values weigh little beside the three unit vectors).
  No flip-sum: a mirrored face has the mirrored pose, which f_¬id would carry (:func:`factor_verification`);
* expression AUC from f_e and from f_¬e: the supplementary does not say how its AUC is read out of an embedding;
  here a linear probe (multinomial logistic regression) fitted on training faces predicts the expression class on
  test faces, and the macro one-vs-rest ROC AUC is reported (:func:`factor_probe_auc`,
  :func:`lrface.metrics.linear_probe.linear_probe_auc`).

Inputs are resized to the network's side with antialiased bilinear interpolation (the ``.bin`` sets are 112 px;
MAD may train at 64 / 128).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lrface.inference import to_model_range
from lrface.metrics.frechet import frechet_distance, pixel_features
from lrface.metrics.verification import verify_pairs
from lrface.nets.mad import FACTORS, Z_DIM, Disentangler, MADNet, complement

__all__ = ["VIEWS", "embed", "factor_probe_auc", "factor_verification", "factor_views", "random_sample_fd",
           "reconstruction_rmse", "resize_to"]

#: the embeddings Table 2 compares: each factor and its complement (f_¬k), plus z itself as a reference
VIEWS = ("z", *FACTORS, *(f"not_{name}" for name in FACTORS))


def _device(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


def resize_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """B×3×h×w in [0, 1] → B×3×size×size (antialiased bilinear when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = min(images.shape[-2:]) > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


@torch.no_grad()
def embed(net: MADNet, images: torch.Tensor, batch_size: int = 128, factors: bool = True) -> dict[str, torch.Tensor]:
    """Codes of N images: ``z`` = Q(x) (N×99) and, with ``factors``, ``f`` = E(z) concatenated (N×99), on the CPU.

    Args:
        net: a MADNet (eval mode is the caller's).
        images: N×3×h×w in [0, 1] (resized to ``net.input_size``).
    """
    device = _device(net)
    zs, fs = [], []
    for chunk in images.split(batch_size):
        x = to_model_range(resize_to(chunk.to(device).float(), net.input_size))
        z = net.encode(x)
        zs.append(z.float().cpu())
        if factors:
            fs.append(Disentangler.concat(net.factors(z)).float().cpu())
    out = {"z": torch.cat(zs) if zs else torch.zeros(0, Z_DIM)}
    if factors:
        out["f"] = torch.cat(fs) if fs else torch.zeros(0, Z_DIM)
    return out


def factor_views(codes: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{view: N×d} for :data:`VIEWS`: ``z``, each factor of ``f`` and each complement ``not_<factor>``."""
    f = codes["f"]
    views = {"z": codes["z"]}
    views.update({name: f[:, s] for name, s in FACTORS.items()})
    views.update({f"not_{name}": complement(f, name) for name in FACTORS})
    return views


@torch.no_grad()
def reconstruction_rmse(net: MADNet, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Per-image RMSE of P(Q(x)) in 0..255 units (Table 1's "Reconstruction RMSE"). N×3×S×S in [0, 1] → N."""
    device = _device(net)
    out = []
    for chunk in images.split(batch_size):
        x = resize_to(chunk.to(device).float(), net.input_size)
        recon = ((net.decode(net.encode(to_model_range(x))) + 1) / 2).clamp(0, 1)
        out.append(((recon - x) * 255.0).pow(2).flatten(1).mean(1).sqrt().cpu())
    return torch.cat(out).double().numpy()


@torch.no_grad()
def random_sample_fd(net: MADNet, real: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     n: int | None = None, seed: int = 0, batch_size: int = 128) -> float:
    """Fréchet distance between n random faces P(z), z ~ N(0, I) (seeded), and the real faces, in the space of
    ``features`` (B×3×S×S in [0, 1] → B×D; None: 8×8 area-downsampled pixels, :func:`pixel_features`).

    Args:
        real: N×3×h×w real faces in [0, 1] (resized to the network's side).
        n: number of samples (default: as many as real faces).
    """
    device = _device(net)
    features = features or pixel_features
    n = len(real) if n is None else int(n)
    z = torch.randn(n, Z_DIM, generator=torch.Generator().manual_seed(seed))
    fake_feats, real_feats = [], []
    for chunk in z.split(batch_size):
        fake = ((net.decode(chunk.to(device)) + 1) / 2).clamp(0, 1)
        fake_feats.append(features(fake).float().cpu())
    for chunk in real.split(batch_size):
        real_feats.append(features(resize_to(chunk.to(device).float(), net.input_size)).float().cpu())
    return frechet_distance(torch.cat(fake_feats), torch.cat(real_feats))


def factor_verification(codes1: Mapping[str, torch.Tensor], codes2: Mapping[str, torch.Tensor], issame,
                        views: tuple[str, ...] = ("identity", "not_identity", "z")) -> dict[str, float]:
    """10-fold verification accuracy of pairs (first images' codes, second images' codes) from each view.

    Returns:
        {view: accuracy}, {view + "_std": fold std}.
    """
    v1, v2 = factor_views(codes1), factor_views(codes2)
    out: dict[str, float] = {}
    for view in views:
        res = verify_pairs(v1[view].numpy(), v2[view].numpy(), np.asarray(issame, dtype=bool))
        out[view] = float(res["accuracy"])
        out[f"{view}_std"] = float(res["accuracy_std"])
    return out


def factor_probe_auc(train_codes: Mapping[str, torch.Tensor], train_labels, test_codes: Mapping[str, torch.Tensor],
                     test_labels, views: tuple[str, ...] = ("expression", "not_expression"),
                     **probe: Any) -> dict[str, dict[str, Any]]:
    """A linear probe per view (fitted on the training codes, scored on the test codes): {view: the probe's dict
    (``auc`` macro one-vs-rest, ``accuracy``, ``auc_per_class``, counts)}."""
    from lrface.metrics.linear_probe import linear_probe_auc

    train_v, test_v = factor_views(train_codes), factor_views(test_codes)
    return {view: linear_probe_auc(train_v[view].numpy(), np.asarray(train_labels), test_v[view].numpy(),
                                   np.asarray(test_labels), **probe) for view in views}
