"""Linear-probe ROC AUC of an embedding: how much of a labelled factor a frozen feature space carries.

Seed 003 (DisentangledAE / MAD, supplementary Tables 1–2) reports "Expr. rec. AUC" on AffectNet for the expression
embedding f_e (high = expression is recoverable) and for its complement f_¬e (should fall towards chance), next to LFW
verification accuracy. The supplementary does not say how that AUC was read out of an embedding. Our choice, the
standard linear-evaluation protocol for representations:

- standardise every feature with the *train* mean and standard deviation (constant features are left centred);
- fit a multinomial logistic regression (softmax over the train classes, cross-entropy + ``weight_decay``/2 · ‖W‖²
  on the weights, bias unpenalised) full-batch with Adam, in float64, from a seeded small random start;
- on the test set, score each class c by the predicted probability p(c | x) and compute the one-vs-rest ROC AUC
  (positives: test items of class c; negatives: all other test items), with
  :func:`lrface.metrics.verification.roc_auc` (ties count 1/2);
- report their unweighted ("macro") mean over the classes that are in the train set and have at least one positive and
  one negative test item. With two classes both one-vs-rest AUCs equal the binary AUC, so the mean is that AUC.

A linear probe is deliberately weak: it measures what is linearly available, not what a deep classifier could dig out,
which is the sense in which f_¬e "loses" expression. Items labelled −1 (unknown) are dropped from both sets.
"""

from __future__ import annotations

import numpy as np
import torch

from lrface.metrics.tsne import finite_matrix as _features
from lrface.metrics.verification import roc_auc

__all__ = ["fit_softmax_probe", "linear_probe_auc"]


def _labels(y, n: int, name: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    a = np.asarray(y)
    if a.shape != (n,):
        raise ValueError(f"{name} must hold one label per row ({n}); got shape {a.shape}")
    if a.size and not np.all(a == np.round(a)):
        raise ValueError(f"{name} must be integer class indices (−1 = unknown)")
    a = a.astype(np.int64)
    if np.any(a < -1):
        raise ValueError(f"{name} must be ≥ −1 (−1 = unknown); found {a.min()}")
    return a


def fit_softmax_probe(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    epochs: int = 300,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch multinomial logistic regression with Adam (float64).

    Args:
        x: N×D standardised features.
        y: N class indices in [0, n_classes).
        n_classes: number of outputs C.
        epochs: full-batch Adam steps.
        lr: Adam learning rate.
        weight_decay: L2 coefficient λ of the penalty λ/2 · ‖W‖² (bias excluded).
        seed: seeds the N(0, 0.01²) initial weights.

    Returns:
        (W D×C, b C).
    """
    with torch.inference_mode(False), torch.enable_grad():  # callers evaluate under no_grad / inference_mode
        return _fit(x, y, n_classes, epochs, lr, weight_decay, seed)


def _fit(x, y, n_classes, epochs, lr, weight_decay, seed) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    weight = (0.01 * torch.randn(x.shape[1], n_classes, generator=gen, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ weight + bias, yt) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        opt.step()
    return weight.detach(), bias.detach()


def linear_probe_auc(
    train_x, train_y, test_x, test_y, epochs: int = 300, lr: float = 0.1, weight_decay: float = 1e-4, seed: int = 0
) -> dict:
    """Fit a linear softmax probe on (train_x, train_y) and report one-vs-rest ROC AUCs on (test_x, test_y).

    Args:
        train_x: N×D features (numpy or torch).
        train_y: N int labels, −1 = unknown (dropped).
        test_x: M×D features.
        test_y: M int labels, −1 = unknown (dropped).
        epochs: full-batch Adam steps.
        lr: Adam learning rate.
        weight_decay: L2 coefficient on the probe's weights.
        seed: seeds the probe's initial weights (the result is deterministic for a seed).

    Returns:
        {"auc": macro mean of the per-class AUCs (NaN when no class qualifies),
         "auc_per_class": {class: AUC} for the qualifying classes,
         "skipped_classes": {class: reason} for classes seen in train or test that have no AUC,
         "accuracy": top-1 accuracy on the kept test items (items of classes absent from train count as errors),
         "n_train", "n_test": items kept after dropping −1 labels,
         "n_classes": number of train classes (the probe's outputs)}.
    """
    xtr = _features(train_x, "train_x")
    xte = _features(test_x, "test_x")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_x and test_x must have the same feature size; got {xtr.shape[1]} and {xte.shape[1]}")
    ytr = _labels(train_y, xtr.shape[0], "train_y")
    yte = _labels(test_y, xte.shape[0], "test_y")
    keep_tr = ytr >= 0
    keep_te = yte >= 0
    xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
    classes = np.unique(ytr)
    if classes.size < 2:
        raise ValueError(f"the probe needs at least 2 labelled classes in train; got {classes.tolist()}")
    if yte.size == 0:
        raise ValueError("test_y has no labelled items (all −1 or empty)")

    mean = xtr.mean(axis=0)
    std = xtr.std(axis=0)
    std[std == 0] = 1.0
    ztr = (xtr - mean) / std
    zte = (xte - mean) / std
    index = {int(c): i for i, c in enumerate(classes)}
    weight, bias = fit_softmax_probe(
        ztr, np.array([index[int(c)] for c in ytr]), classes.size, epochs, lr, weight_decay, seed
    )
    probs = torch.softmax(torch.from_numpy(zte) @ weight + bias, dim=1).numpy()
    predicted = classes[np.argmax(probs, axis=1)]

    per_class: dict[int, float] = {}
    skipped: dict[int, str] = {}
    for c in np.union1d(classes, np.unique(yte)).tolist():
        positives = int(np.sum(yte == c))
        if c not in index:
            skipped[c] = "absent from train"
        elif positives == 0:
            skipped[c] = "absent from test"
        elif positives == yte.size:
            skipped[c] = "no negative test items"
        else:
            per_class[c] = roc_auc(probs[:, index[c]], yte == c)
    return {
        "auc": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "auc_per_class": per_class,
        "skipped_classes": skipped,
        "accuracy": float(np.mean(predicted == yte)),
        "n_train": int(ytr.size),
        "n_test": int(yte.size),
        "n_classes": int(classes.size),
    }
