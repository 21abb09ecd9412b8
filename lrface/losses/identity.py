"""Identity, race and attribute losses of the seed paper (Gat, Benaim, Wolf, ``seeds/000_*.txt``), Eq. 4–10.

Generation side (§3.2, minimised over the StyleGAN latent together with PULSE's L_SR):
- :func:`theta`: the angle θ(F(i), F(j)) between two feature vectors;
- :func:`sim` (Eq. 4): sim(i, j, tgt) = ‖σ((θ(F(i), F(j)) − α_thr)/γ_temp) − tgt‖;
- :func:`L_sim` (Eq. 5), :func:`L_race` (Eq. 6), :func:`L_att` (Eq. 7), their weighted sum (Eq. 8:
  :func:`pulse_constraint_loss`, :class:`PulseConstraints` as a ``PulseSearch`` extra loss) and the rejection rule
  (:func:`rejected`).

Training side (§3.3, minimised over F, C_R, C_A):
- :func:`L_siam` (the unnumbered display of §3.3), :func:`L_race_class` (Eq. 9), :func:`L_attribute_class` with the
  Appendix C weights (:func:`attribute_class_weights`), and the Eq. 10 total (:func:`feature_extractor_loss`).

Units: the paper writes θ and α_thr without a unit but quotes angles in degrees (Table 1, "a separator at 70°"), and
the official code computes the comparer logit as 0.1·(θ° − 65); so angles, α_thr and γ_temp are in **degrees** by
default (``unit="rad"`` switches all three to radians). Defaults α_thr = 65°, γ_temp = 10° are the official code's;
the paper finds α_thr per F by brute-force search (``lrface.metrics.angles.best_angle_threshold``).

The paper writes ‖·‖ / ‖·‖₂ of scalars, i.e. absolute values; the official code used squares in places, exposed as
``squared=True``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ALPHA_THR",
    "GAMMA_TEMP",
    "REJECT_THRESHOLD",
    "AttributeWeights",
    "L_att",
    "L_attribute_class",
    "L_race",
    "L_race_class",
    "L_siam",
    "L_sim",
    "PulseConstraints",
    "attribute_class_weights",
    "feature_extractor_loss",
    "pulse_constraint_loss",
    "rejected",
    "sim",
    "theta",
]

#: Default threshold angle α_thr in degrees (official code's comparer; the paper searches it per F, Alg. 1).
ALPHA_THR = 65.0
#: Default confidence temperature γ_temp in degrees (official code: logit = 0.1·(θ° − 65)).
GAMMA_TEMP = 10.0
#: The paper's rejection constant (§3.2: "we reject I if ... any of L_sim, L_race, L_att are above a constant (= 0.1)").
REJECT_THRESHOLD = 0.1

CONSTRAINT_NAMES = ("L_sim", "L_race", "L_att")

# Keeps the gradient of ‖x‖ finite (zero) at x = 0 while changing the norm by at most 1e-12.
_NORM_TINY = 1e-24


def _safe_norm(x: Tensor) -> Tensor:
    return (x.pow(2).sum(-1) + _NORM_TINY).sqrt()


def _check_unit(unit: str) -> None:
    if unit not in ("deg", "rad"):
        raise ValueError(f"unit must be 'deg' or 'rad', got {unit!r}")


def theta(f1: Tensor, f2: Tensor, unit: str = "deg") -> Tensor:
    """θ(F(i), F(j)): the angle between feature vectors (Eq. 2, 4), differentiable everywhere.

    Computed as 2·atan2(‖â − b̂‖, ‖â + b̂‖) on the L2-normalised features: exact at every angle and with bounded
    gradients, where arccos(cos) has an infinite derivative at 0° and 180° (the official code's unclamped arccos
    produced NaNs there). Same values as ``lrface.metrics.angles.angles_deg``.

    Args:
        f1: B×D (or D) features.
        f2: B×D (or D, or 1×D, broadcast) features.
        unit: ``"deg"`` or ``"rad"``.

    Returns:
        B angles (scalar for D-vectors) in [0, 180] degrees (or [0, π]), dtype at least fp32.
    """
    _check_unit(unit)
    dtype = torch.promote_types(torch.promote_types(f1.dtype, f2.dtype), torch.float32)
    a = F.normalize(f1.to(dtype), dim=-1)
    b = F.normalize(f2.to(device=f1.device, dtype=dtype), dim=-1)
    angle = 2.0 * torch.atan2(_safe_norm(a - b), _safe_norm(a + b))
    return torch.rad2deg(angle) if unit == "deg" else angle


def _as_target(tgt: float | str | Tensor, like: Tensor) -> Tensor | float:
    if isinstance(tgt, str):
        if tgt not in ("same", "different"):
            raise ValueError(f"tgt must be 0/'same', 1/'different' or a tensor, got {tgt!r}")
        return 0.0 if tgt == "same" else 1.0
    if isinstance(tgt, Tensor):
        return tgt.to(device=like.device, dtype=like.dtype)
    return float(tgt)


def sim(
    f1: Tensor,
    f2: Tensor,
    tgt: float | str | Tensor = 0.0,
    alpha_thr: float = ALPHA_THR,
    gamma_temp: float = GAMMA_TEMP,
    unit: str = "deg",
) -> Tensor:
    """Eq. 4: sim(i, j, tgt) = ‖σ((θ(F(i), F(j)) − α_thr)/γ_temp) − tgt‖, on features f1 = F(i), f2 = F(j).

    tgt = 0 ("same") is minimised when the features are parallel, tgt = 1 ("different") when they are orthogonal
    (or beyond): σ(·) is the confidence that i and j are different persons. The norm of a scalar is its absolute
    value, so the loss is σ(x) for tgt 0 and 1 − σ(x) for tgt 1; fractional targets in [0, 1] are allowed.

    Args:
        f1: B×D features F(i).
        f2: B×D (or 1×D / D, broadcast) features F(j).
        tgt: 0 or ``"same"``, 1 or ``"different"``, or a B tensor of targets.
        alpha_thr: threshold angle α_thr (degrees unless ``unit="rad"``).
        gamma_temp: temperature γ_temp (same unit as α_thr); must be > 0.
        unit: unit of θ, α_thr and γ_temp.

    Returns:
        B per-pair values in [0, 1].
    """
    if gamma_temp <= 0:
        raise ValueError(f"gamma_temp must be > 0, got {gamma_temp}")
    angle = theta(f1, f2, unit=unit)
    confidence = torch.sigmoid((angle - alpha_thr) / gamma_temp)
    return (confidence - _as_target(tgt, confidence)).abs()


def L_sim(
    f_gen: Tensor,
    f_ref: Tensor,
    alpha_thr: float = ALPHA_THR,
    gamma_temp: float = GAMMA_TEMP,
    tgt: float | str | Tensor = 0.0,
    unit: str = "deg",
) -> Tensor:
    """Eq. 5: L_sim(I_r) = sim(I_r, I, 0), the feature similarity loss of the generated image I to I_r.

    The paper fixes tgt = 0 (make I the same person as I_r); ``tgt=1`` pushes I away from I_r instead.

    Args:
        f_gen: B×D features f_I of the generated images.
        f_ref: B×D (or 1×D / D) features F(I_r) of the reference images (normally detached).
        alpha_thr: α_thr (degrees by default).
        gamma_temp: γ_temp (degrees by default).
        tgt: see :func:`sim`.
        unit: ``"deg"`` or ``"rad"``.

    Returns:
        B per-sample losses in [0, 1].
    """
    return sim(f_ref, f_gen, tgt=tgt, alpha_thr=alpha_thr, gamma_temp=gamma_temp, unit=unit)


def _squared_or_abs(x: Tensor, squared: bool) -> Tensor:
    return x.pow(2) if squared else x.abs()


def L_race(
    logits_race: Tensor, target_race: int | Tensor, activation: str = "softmax", squared: bool = False
) -> Tensor:
    """Eq. 6: L_race(r) = ‖C_R(f_I)[r] − 1‖₂, through the race classifier's probability of race r.

    C_R(f_I)[r] is a probability; C_R is trained with cross-entropy (Eq. 9), so it is the softmax over the 7 races
    (default). ``activation="sigmoid"`` gives the per-class sigmoid the official code's BCE-trained head implies.

    Args:
        logits_race: B×K race logits C_R(f_I) (K = 7, FairFace order).
        target_race: the desired race r: an int for all samples or a B (or 1) tensor of class indices.
        activation: ``"softmax"`` (paper) or ``"sigmoid"``.
        squared: (p − 1)² instead of |p − 1| (official-code variant).

    Returns:
        B per-sample losses 1 − p_r (or its square) in [0, 1].
    """
    if activation == "softmax":
        probs = torch.softmax(logits_race.float(), dim=-1)
    elif activation == "sigmoid":
        probs = torch.sigmoid(logits_race.float())
    else:
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    b, k = probs.shape
    target = torch.as_tensor(target_race, dtype=torch.long, device=probs.device).reshape(-1).expand(b)
    if bool(((target < 0) | (target >= k)).any()):
        raise ValueError(f"target_race must be in [0, {k}), got {target.tolist()}")
    p = probs.gather(1, target[:, None]).squeeze(1)
    return _squared_or_abs(p - 1.0, squared)


def _attribute_mask(target_values: Tensor, mask: Tensor | None) -> Tensor:
    finite = torch.isfinite(target_values)
    return finite if mask is None else mask.to(device=target_values.device, dtype=torch.bool) & finite


def L_att(
    logits_att: Tensor, target_values: Tensor, mask: Tensor | None = None, squared: bool = False
) -> Tensor:
    """Eq. 7: L_att(AV) = 1/|AV| Σ_{(att, val) ∈ AV} ‖C_A(f_I)[att] − val‖₂, with C_A(f_I)[att] = σ(logit).

    AV is given per sample as a value table plus a mask of the constrained attributes (|AV| = the mask's row sum).
    A sample with no constrained attribute gets 0.

    Args:
        logits_att: B×A attribute logits C_A(f_I) (A = 40, CelebA order).
        target_values: B×A (or 1×A / A, broadcast) desired values val in {0, 1}; NaN marks "unconstrained".
        mask: B×A (broadcastable) bool, True where the attribute is in AV; default: the finite entries of
            ``target_values``.
        squared: (p − val)² instead of |p − val| (official-code variant).

    Returns:
        B per-sample losses in [0, 1].
    """
    probs = torch.sigmoid(logits_att.float())
    values = target_values.to(device=probs.device, dtype=probs.dtype).expand_as(probs)
    m = _attribute_mask(values, mask).expand_as(probs)
    # Masked entries are zeroed before the arithmetic so a NaN "unconstrained" value cannot poison the gradient.
    values = torch.where(m, values, torch.zeros_like(values))
    dist = torch.where(m, _squared_or_abs(probs - values, squared), torch.zeros_like(probs))
    count = m.sum(1)
    return dist.sum(1) / count.clamp(min=1).to(probs.dtype)


def pulse_constraint_loss(
    l_sim: Tensor | None = None,
    l_race: Tensor | None = None,
    l_att: Tensor | None = None,
    lambdas: Sequence[float] = (1.0, 1.0, 1.0),
) -> Tensor:
    """The constraint part of Eq. 8: λ1·L_sim(I_r) + λ2·L_race(r) + λ3·L_att(AV) (L_SR is added by ``PulseSearch``).

    Args:
        l_sim: B values of Eq. 5, or None (not optimised).
        l_race: B values of Eq. 6, or None.
        l_att: B values of Eq. 7, or None.
        lambdas: (λ1, λ2, λ3).

    Returns:
        B per-sample weighted sums.
    """
    terms = [(lam, t) for lam, t in zip(lambdas, (l_sim, l_race, l_att)) if t is not None]
    if not terms:
        raise ValueError("pulse_constraint_loss needs at least one term")
    total = torch.zeros_like(terms[0][1])
    for lam, t in terms:
        total = total + float(lam) * t
    return total


def rejected(
    terms: Mapping[str, Tensor | float],
    threshold: float = REJECT_THRESHOLD,
    names: Iterable[str] | None = None,
) -> Tensor:
    """The paper's rejection rule (§3.2): reject I if, at the end of optimisation, any active constraint exceeds 0.1.

    "Above" is strict: a term equal to the threshold passes.

    Args:
        terms: ``{name: B values}`` (e.g. ``PulseSearch.search(...)["losses"]`` with the per-term entries of
            :meth:`PulseConstraints.as_extra_losses`, or :attr:`PulseConstraints.last_terms`).
        threshold: the constant (0.1).
        names: the active constraints to check; default: whichever of ``L_sim``, ``L_race``, ``L_att`` are in
            ``terms``.

    Returns:
        B bool, True where the image is rejected.
    """
    names = [n for n in CONSTRAINT_NAMES if n in terms] if names is None else list(names)
    if not names:
        raise ValueError(f"no constraint to check: terms has {sorted(terms)}, expected some of {CONSTRAINT_NAMES}")
    missing = [n for n in names if n not in terms]
    if missing:
        raise KeyError(f"rejected: terms lack {missing}; have {sorted(terms)}")
    values = [torch.as_tensor(terms[n]).detach().reshape(-1) for n in names]
    out = torch.zeros_like(values[0], dtype=torch.bool)
    for v in values:
        out = out | (v > threshold)
    return out


def _expand_rows(x: Tensor, n: int, what: str) -> Tensor:
    """Match x's rows to n images: as is, broadcast from 1 row, or repeated per restart (PulseSearch layout)."""
    rows = x.shape[0]
    if rows == n:
        return x
    if rows == 1:
        return x.expand(n, *x.shape[1:])
    if n % rows == 0:
        # PulseSearch stacks the R restarts of thumbnail b contiguously (repeat_interleave), so repeat likewise.
        return x.repeat_interleave(n // rows, dim=0)
    raise ValueError(f"{what} has {rows} rows; cannot match {n} images (need 1, {n} or a divisor of {n})")


class PulseConstraints:
    """Eq. 8's constraints as a ``PulseSearch`` extra loss: images B×3×R×R in [0, 1] → B per-sample losses.

    f_I = F(align_fn(I)) is computed once per call and fed to the active terms: L_sim (Eq. 5) toward
    ``reference_features``, L_race (Eq. 6) toward ``target_race`` through C_R, L_att (Eq. 7) toward
    ``target_attributes`` through C_A. A term is active when its target is given and its λ is non-zero; at least one
    must be. Deliberately not an ``nn.Module``, so F, C_R and C_A (trained elsewhere, e.g. in Alg. 2 between
    meta-epochs) are not registered twice in a module's state dict.

    During each call F, C_R and C_A are put in eval mode (``eval_mode=True``) and their parameters stop requiring
    gradients (only the latent is optimised); both are restored afterwards.

    Use either ``PulseSearch(..., extra_losses=[(1.0, "constraints", pc)])`` (one entry; per-term values of the last
    call in :attr:`last_terms`) or ``extra_losses=pc.as_extra_losses()`` (one entry per active term, weighted by its λ,
    sharing one F forward per step; then ``search(...)["losses"]`` holds ``L_sim``/``L_race``/``L_att`` of the
    returned images and ``rejected(out["losses"])`` applies the paper's rule).

    Targets with one row per thumbnail are repeated over the restarts (``PulseSearch`` gives B·R images, restarts of
    a thumbnail contiguous); one row broadcasts to all images.

    Args:
        F: feature extractor, B×3×h×w in [0, 1] → B×D (the net normalises itself).
        C_R: race classifier, B×D → B×7 logits (needed for L_race).
        C_A: attribute classifier, B×D → B×40 logits (needed for L_att).
        align_fn: B×3×R×R in [0, 1] → B×3×h×w aligned faces for F (e.g. a differentiable 5-point warp to 112);
            None passes the images unchanged.
        lambdas: (λ1, λ2, λ3).
        alpha_thr: α_thr of Eq. 4 (degrees unless ``unit="rad"``).
        gamma_temp: γ_temp of Eq. 4.
        tgt: target of L_sim (paper: 0, "same").
        reference_features: 1, B or B·R rows × D, F(I_r) (detached; see :meth:`features`).
        target_race: int or a tensor of 1, B or B·R race indices.
        target_attributes: ``{attribute index: 0/1}`` for all images, or a tensor (A, or 1/B/B·R rows × A) of values
            with NaN for unconstrained attributes.
        attribute_mask: optional bool mask with the shape of a tensor ``target_attributes``.
        race_activation: see :func:`L_race`.
        squared: squared distances in L_race / L_att (official-code variant).
        unit: ``"deg"`` or ``"rad"`` for θ, α_thr, γ_temp.
        eval_mode: run F, C_R, C_A in eval mode during the call.
    """

    def __init__(
        self,
        F: Callable[[Tensor], Tensor],
        C_R: Callable[[Tensor], Tensor] | None = None,
        C_A: Callable[[Tensor], Tensor] | None = None,
        align_fn: Callable[[Tensor], Tensor] | None = None,
        lambdas: Sequence[float] = (1.0, 1.0, 1.0),
        alpha_thr: float = ALPHA_THR,
        gamma_temp: float = GAMMA_TEMP,
        tgt: float | str = 0.0,
        reference_features: Tensor | None = None,
        target_race: int | Tensor | None = None,
        target_attributes: Mapping[int, float] | Tensor | None = None,
        attribute_mask: Tensor | None = None,
        race_activation: str = "softmax",
        squared: bool = False,
        unit: str = "deg",
        eval_mode: bool = True,
    ) -> None:
        if len(lambdas) != 3:
            raise ValueError(f"lambdas must be (λ1, λ2, λ3), got {lambdas}")
        _check_unit(unit)
        self.F, self.C_R, self.C_A, self.align_fn = F, C_R, C_A, align_fn
        self.lambdas = tuple(float(x) for x in lambdas)
        self.alpha_thr, self.gamma_temp, self.tgt, self.unit = float(alpha_thr), float(gamma_temp), tgt, unit
        self.race_activation, self.squared, self.eval_mode = race_activation, bool(squared), bool(eval_mode)
        self.reference_features = None if reference_features is None else reference_features.detach()
        if self.reference_features is not None and self.reference_features.dim() == 1:
            self.reference_features = self.reference_features[None]
        self.target_race = None if target_race is None else torch.as_tensor(target_race, dtype=torch.long).reshape(-1)
        self.target_attributes = target_attributes
        self.attribute_mask = attribute_mask
        if self.target_race is not None and C_R is None:
            raise ValueError("target_race given but no race classifier C_R")
        if target_attributes is not None and C_A is None:
            raise ValueError("target_attributes given but no attribute classifier C_A")
        targets = (self.reference_features, self.target_race, self.target_attributes)
        self.active = tuple(n for n, lam, t in zip(CONSTRAINT_NAMES, self.lambdas, targets) if t is not None and lam)
        if not self.active:
            raise ValueError("PulseConstraints: no active constraint (give a target and a non-zero λ for at least one "
                             "of L_sim / L_race / L_att)")
        self.last_terms: dict[str, Tensor] = {}
        self._cache: tuple[Tensor, int, dict[str, Tensor]] | None = None

    # -- helpers -------------------------------------------------------------------------------------------------

    def _modules(self) -> list[nn.Module]:
        out: list[nn.Module] = []
        for m in (self.F, self.C_R, self.C_A):
            if isinstance(m, nn.Module) and all(m is not o for o in out):
                out.append(m)
        return out

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        modules = self._modules()
        params = list({id(p): p for m in modules for p in m.parameters()}.values())
        flags = [p.requires_grad for p in params]
        modes = [m.training for m in modules]
        for p in params:
            p.requires_grad_(False)
        if self.eval_mode:
            for m in modules:
                m.eval()
        try:
            yield
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
            for m, mode in zip(modules, modes):
                m.train(mode)

    def features(self, images: Tensor) -> Tensor:
        """f = F(align_fn(images)) with the models frozen (gradients flow to ``images`` only).

        Args:
            images: B×3×R×R in [0, 1].

        Returns:
            B×D features (wrap in ``torch.no_grad()`` to compute ``reference_features``).
        """
        with self._frozen():
            x = self.align_fn(images) if self.align_fn is not None else images
            return self.F(x)

    def _attribute_targets(self, n: int, n_attr: int, device: torch.device) -> tuple[Tensor, Tensor]:
        t = self.target_attributes
        if isinstance(t, Mapping):
            values = torch.full((1, n_attr), float("nan"), device=device)
            for k, v in t.items():
                if not 0 <= int(k) < n_attr:
                    raise ValueError(f"attribute index {k} out of range [0, {n_attr})")
                values[0, int(k)] = float(v)
            mask = torch.isfinite(values)
        else:
            values = torch.as_tensor(t, dtype=torch.float32, device=device)
            values = values[None] if values.dim() == 1 else values
            mask = torch.isfinite(values) if self.attribute_mask is None else (
                torch.as_tensor(self.attribute_mask, device=device).to(torch.bool).reshape(values.shape)
            )
        if values.shape[1] != n_attr:
            raise ValueError(f"target_attributes has {values.shape[1]} attributes, C_A predicts {n_attr}")
        return _expand_rows(values, n, "target_attributes"), _expand_rows(mask, n, "attribute_mask")

    # -- losses --------------------------------------------------------------------------------------------------

    def terms(self, images: Tensor) -> dict[str, Tensor]:
        """The active terms, differentiable w.r.t. ``images``.

        Args:
            images: N×3×R×R in [0, 1].

        Returns:
            ``{name: N values}`` for each name in :attr:`active`.
        """
        n = images.shape[0]
        with self._frozen():
            x = self.align_fn(images) if self.align_fn is not None else images
            f = self.F(x)
            out: dict[str, Tensor] = {}
            if "L_sim" in self.active:
                ref = _expand_rows(self.reference_features.to(f.device), n, "reference_features")
                out["L_sim"] = L_sim(f, ref, self.alpha_thr, self.gamma_temp, tgt=self.tgt, unit=self.unit)
            if "L_race" in self.active:
                race = _expand_rows(self.target_race.to(f.device), n, "target_race")
                out["L_race"] = L_race(self.C_R(f), race, activation=self.race_activation, squared=self.squared)
            if "L_att" in self.active:
                logits = self.C_A(f)
                values, mask = self._attribute_targets(n, logits.shape[1], f.device)
                out["L_att"] = L_att(logits, values, mask, squared=self.squared)
        self.last_terms = {k: v.detach() for k, v in out.items()}
        return out

    def __call__(self, images: Tensor) -> Tensor:
        """Eq. 8's constraint sum λ1·L_sim + λ2·L_race + λ3·L_att for each image.

        Args:
            images: N×3×R×R in [0, 1].

        Returns:
            N per-sample losses.
        """
        t = self.terms(images)
        return pulse_constraint_loss(t.get("L_sim"), t.get("L_race"), t.get("L_att"), self.lambdas)

    def _cached_terms(self, images: Tensor) -> dict[str, Tensor]:
        # PulseSearch calls every extra loss on the same images tensor within a step: one F forward serves all.
        if self._cache is not None and self._cache[0] is images and self._cache[1] == images._version:
            return self._cache[2]
        out = self.terms(images)
        self._cache = (images, images._version, out)
        return out

    def clear_cache(self) -> None:
        """Drop the cached images / terms of :meth:`as_extra_losses` (frees their graph after a search)."""
        self._cache = None

    def as_extra_losses(self) -> list[tuple[float, str, Callable[[Tensor], Tensor]]]:
        """One ``PulseSearch`` extra-loss entry ``(λ_k, name, fn)`` per active term, sharing one F forward per step."""
        weights = dict(zip(CONSTRAINT_NAMES, self.lambdas))

        def entry(name: str) -> Callable[[Tensor], Tensor]:
            def fn(images: Tensor) -> Tensor:
                return self._cached_terms(images)[name]

            fn.__name__ = name
            return fn

        return [(weights[name], name, entry(name)) for name in self.active]

    def rejected(self, terms: Mapping[str, Tensor] | None = None, threshold: float = REJECT_THRESHOLD) -> Tensor:
        """:func:`rejected` over the active terms (default: :attr:`last_terms`)."""
        return rejected(self.last_terms if terms is None else terms, threshold, names=self.active)


# -- training F (§3.3) -------------------------------------------------------------------------------------------


def L_siam(
    f_gt: Tensor | None,
    f_i: Tensor,
    f_i_prime: Tensor | None,
    f_flip: Tensor | None,
    alpha_thr: float = ALPHA_THR,
    gamma_temp: float = GAMMA_TEMP,
    unit: str = "deg",
    reduction: str = "mean",
    has_i_prime: Tensor | None = None,
) -> Tensor:
    """The siamese angle loss of §3.3 (the display after Eq. 8; the paper's tag (9) is on L_race^class):

    L_siam = 1/N [Σ_{i, i_GT} sim(i_GT, i, 1) + Σ_{i, i'} sim(i, i', 1) + Σ_{i, i_T} sim(i, i_T, 0)]

    over a batch of N lookalikes i (PULSE + L_sim upscales of i_GT's thumbnail), their sources i_GT, lookalikes i'
    of another image of the same identity, and horizontal flips i_T of i: F learns to call i different from i_GT and
    from i' (tgt 1) and the same as its own flip (tgt 0). All three sums share the 1/N; a term passed as None is
    left out (still divided by N), e.g. when a lookalike has no i'.

    Args:
        f_gt: N×D features of i_GT, or None.
        f_i: N×D features of the lookalikes i.
        f_i_prime: N×D features of i', or None.
        f_flip: N×D features of flip(i), or None.
        alpha_thr: α_thr (degrees by default; Alg. 1 re-estimates it every epoch).
        gamma_temp: γ_temp.
        unit: ``"deg"`` or ``"rad"``.
        reduction: ``"mean"`` (1/N Σ, the paper), ``"sum"`` or ``"none"`` (N per-lookalike sums).
        has_i_prime: N bools when only some lookalikes have an i' (an identity with one image): ``f_i_prime`` then
            holds the M = ``has_i_prime.sum()`` existing i' in batch order and sim(i, i', 1) is added to those rows
            only, under the same 1/N.

    Returns:
        a scalar, or N values for ``reduction="none"``.
    """
    kw = {"alpha_thr": alpha_thr, "gamma_temp": gamma_temp, "unit": unit}
    per = torch.zeros(f_i.shape[0], dtype=torch.promote_types(f_i.dtype, torch.float32), device=f_i.device)
    if f_gt is not None:
        per = per + sim(f_gt, f_i, 1.0, **kw)
    if f_i_prime is not None and has_i_prime is not None:
        rows = torch.as_tensor(has_i_prime, device=f_i.device).bool().nonzero().squeeze(1)
        if rows.numel() != f_i_prime.shape[0]:
            raise ValueError(f"{f_i_prime.shape[0]} i' features for {rows.numel()} rows with has_i_prime")
        if rows.numel():
            per = per.index_add(0, rows, sim(f_i[rows], f_i_prime, 1.0, **kw).to(per.dtype))
    elif f_i_prime is not None:
        per = per + sim(f_i, f_i_prime, 1.0, **kw)
    if f_flip is not None:
        per = per + sim(f_i, f_flip, 0.0, **kw)
    return _reduce(per, reduction)


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def L_race_class(logits_race: Tensor, target_race: Tensor, reduction: str = "mean") -> Tensor:
    """Eq. 9: L_race^class = 1/N Σ_i CE(C_R(F(i)), r_i), on FairFace.

    Args:
        logits_race: N×7 logits of C_R (computed in fp32).
        target_race: N class indices (FairFace order).
        reduction: ``"mean"`` (paper), ``"sum"`` or ``"none"``.

    Returns:
        a scalar, or N values.
    """
    return F.cross_entropy(logits_race.float(), target_race.long(), reduction=reduction)


class AttributeWeights(NamedTuple):
    """Per-attribute weights of the positive (value 1) and negative (value 0) class, each A (= 40)."""

    pos: Tensor
    neg: Tensor


def attribute_class_weights(
    rates_or_labels: Tensor,
    method: str = "inverse",
    beta: float = 0.9999,
    n_samples: int | None = None,
    eps: float = 1e-6,
) -> AttributeWeights:
    """Appendix C's class-imbalance weights for the attribute classifier C_A.

    The paper says only "Inverse Class Frequency [17]" (citing Cui et al., "Class-Balanced Loss Based on Effective
    Number of Samples"), "based on CelebA's statistics"; it gives no formula. Each attribute is a 2-class problem with
    positive frequency p, so:

    - ``"inverse"`` (default; literal inverse class frequency, and the official code): w⁺ = 1/p, w⁻ = 1/(1 − p)
      (mean weight over the data 2);
    - ``"balanced"``: w⁺ = 1/(2p), w⁻ = 1/(2(1 − p)), the same normalised to a mean weight of 1 over the data
      (scikit-learn's ``class_weight="balanced"``);
    - ``"effective"`` (Cui et al.): w_c = (1 − β)/(1 − β^{n_c}) with n⁺ = p·n, n⁻ = (1 − p)·n, normalised so that
      w⁺ + w⁻ = 2 (their "sum to the number of classes"); β → 1 tends to inverse frequency normalised the same way
      (w⁺ = 2(1 − p), w⁻ = 2p), β = 0 gives 1, 1.

    Frequencies are clamped to [eps, 1 − eps] so an attribute absent from the data gets a large finite weight.

    Args:
        rates_or_labels: A positive rates in [0, 1], or N×A labels (0/1, or CelebA's −1/1) whose column means are
            taken.
        method: ``"inverse"``, ``"balanced"`` or ``"effective"``.
        beta: β of ``"effective"``.
        n_samples: n for ``"effective"`` when rates are given (labels give it themselves).
        eps: frequency clamp.

    Returns:
        :class:`AttributeWeights` (pos, neg), each A float32.
    """
    x = torch.as_tensor(rates_or_labels, dtype=torch.float64)
    if x.dim() == 2:
        n = x.shape[0]
        p = (x > 0).double().mean(0)
    elif x.dim() == 1:
        n = n_samples
        p = x
        if bool(((p < 0) | (p > 1)).any()):
            raise ValueError(f"positive rates must be in [0, 1], got min {float(p.min())}, max {float(p.max())}")
    else:
        raise ValueError(f"expected A rates or N×A labels, got shape {tuple(x.shape)}")
    p = p.clamp(eps, 1.0 - eps)
    if method == "inverse":
        pos, neg = 1.0 / p, 1.0 / (1.0 - p)
    elif method == "balanced":
        pos, neg = 0.5 / p, 0.5 / (1.0 - p)
    elif method == "effective":
        if n is None:
            raise ValueError("method='effective' needs the number of samples: pass labels or n_samples")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        # (1 − β)/(1 − β^n) via expm1: stays accurate for β close to 1.
        def cb(count: torch.Tensor) -> torch.Tensor:
            if beta == 0.0:
                return torch.ones_like(count)
            return (1.0 - beta) / (-torch.expm1(count * math.log(beta)))

        pos, neg = cb(p * n), cb((1.0 - p) * n)
        scale = 2.0 / (pos + neg)
        pos, neg = pos * scale, neg * scale
    else:
        raise ValueError(f"method must be 'inverse', 'balanced' or 'effective', got {method!r}")
    return AttributeWeights(pos.float(), neg.float())


def L_attribute_class(
    logits_att: Tensor,
    targets: Tensor,
    weights: AttributeWeights | Sequence[Tensor] | None = None,
    mask: Tensor | None = None,
    kind: str = "bce",
    reduction: str = "mean",
) -> Tensor:
    """L_attribute^class (§3.3, Eq. 10): Eq. 9 with C_A for C_R, as a class-weighted multi-label loss.

    Per element: w · ℓ(logit, y) with w = y·w⁺ + (1 − y)·w⁻ (Appendix C, :func:`attribute_class_weights`) and ℓ the
    binary cross-entropy on the logit (``kind="bce"``, the multi-label form of the paper's CE) or the official code's
    (σ(logit) − y)² (``kind="mse"``). Per sample the weighted losses are averaged over the (masked) attributes — the
    paper does not say mean or sum over the 40; mean keeps the 10× weight of Eq. 10 comparable to the race CE.

    Args:
        logits_att: N×A logits of C_A (computed in fp32).
        targets: N×A labels in [0, 1].
        weights: (w⁺, w⁻), each A; None for unweighted.
        mask: N×A bool of labelled entries (default all).
        kind: ``"bce"`` or ``"mse"``.
        reduction: ``"mean"`` over samples (1/N Σ, the paper), ``"sum"`` or ``"none"`` (N values).

    Returns:
        a scalar, or N values.
    """
    logits = logits_att.float()
    y = targets.to(device=logits.device, dtype=logits.dtype)
    if kind == "bce":
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    elif kind == "mse":
        loss = (torch.sigmoid(logits) - y).pow(2)
    else:
        raise ValueError(f"kind must be 'bce' or 'mse', got {kind!r}")
    if weights is not None:
        w_pos, w_neg = (torch.as_tensor(w, dtype=logits.dtype, device=logits.device) for w in weights)
        loss = loss * (y * w_pos + (1.0 - y) * w_neg)
    if mask is None:
        per = loss.mean(1)
    else:
        m = mask.to(device=logits.device, dtype=torch.bool).expand_as(loss)
        per = torch.where(m, loss, torch.zeros_like(loss)).sum(1) / m.sum(1).clamp(min=1).to(loss.dtype)
    return _reduce(per, reduction)


def feature_extractor_loss(
    l_arc: Tensor,
    l_siam: Tensor | None = None,
    l_race_class: Tensor | None = None,
    l_attribute_class: Tensor | None = None,
    weights: Sequence[float] = (10.0, 10.0, 10.0),
) -> tuple[Tensor, dict[str, Any]]:
    """Eq. 10: L_arc + 10·L_siam + 10·L_race^class + 10·L_attribute^class, minimised over F, C_R, C_A.

    A term passed as None counts as 0 (Appendix A: L_siam is taken as 0 in the first meta-epoch of Alg. 2).

    Args:
        l_arc: the ArcFace loss (scalar).
        l_siam: :func:`L_siam` (scalar) or None.
        l_race_class: :func:`L_race_class` (scalar) or None.
        l_attribute_class: :func:`L_attribute_class` (scalar) or None.
        weights: the weights of the three auxiliary terms (paper: 10, 10, 10; official code 0.2).

    Returns:
        (total, ``{"L_arc", "L_siam", "L_race_class", "L_attribute_class": detached value or None}``).
    """
    if len(weights) != 3:
        raise ValueError(f"weights must have 3 entries (siam, race, attribute), got {weights}")
    total = l_arc
    parts: dict[str, Any] = {"L_arc": l_arc.detach()}
    for name, w, t in zip(("L_siam", "L_race_class", "L_attribute_class"), weights,
                          (l_siam, l_race_class, l_attribute_class)):
        parts[name] = None if t is None else t.detach()
        if t is not None:
            total = total + float(w) * t
    return total, parts
