"""The seed paper's evaluation (``seeds/000_*.txt`` §4, Tables 1–3, Fig. 5) as ``Trainer.predict``.

Every sample of :class:`datamodules.upscaling_eval.UpscalingEvalDataModule` is processed by the ranks it is sharded
to (so a 3,000-pair evaluation with the 1024 px StyleGAN spreads over GPUs and nodes); per-sample records go to
:class:`callbacks.upscaling_report.UpscalingReport`, which gathers them and writes the tables.

What each set gets (the strategies of §4):

``pairs`` (CelebA-Same / CelebA-Diff)
    the angle θ(F(i1), F(i2)) under F_baseline and F_ours.
``celeba`` (I_GT)
    i_LR = PULSE's bicubic downscale of I_GT to ``thumbnail_size``, then one search per strategy:
    ``L_SR`` (Eq. 3; Table 1's PULSE-Pairs and Table 3's first row), ``Lookalike-Baseline`` /
    ``Lookalike-Ours`` (L_SR + L_sim(I_r) with F_baseline / F_ours, I_r chosen by ``table1_reference``; Table 1),
    ``F_baseline + L_sim(I_LR)``, ``F_ours + L_sim(I_LR)`` (I_r chosen by ``reid_reference``) and
    ``F_ours + L_att(a)`` (Eq. 7 with C_A of F_ours toward I_GT's own values of the judged attributes) for Table 3.
    Recorded: θ(F(I_GT), F(I)) under both extractors for the Table 1 strategies, the attribute judge's verdict on
    every Table 3 result and on I_GT itself.
``fairface``
    ``L_SR``, ``F_baseline + L_sim(I_LR)``, ``F_ours + L_sim(I_LR)``, ``F_ours + L_race(r)`` (Eq. 6 with C_R of
    F_ours toward the image's labelled race r); the race judge's verdict on each result and on the original.

Choices the paper leaves open (all in config):

- I_r of L_sim. Table 1 writes L_sim(I_GT) (the ground truth is the reference: ``table1_reference: gt``), Tables 2–3
  write L_sim(I_LR) (the thumbnail, bicubically upscaled to the generator's resolution: ``reid_reference: lr``).
  When both are equal the searches are shared, not repeated.
- α_thr of each F's L_sim (Eq. 4): ``auto`` runs Alg. 1's ``calc-best-angle-threshold`` with that F on CelebA-train
  same / different pairs in the evaluation framing; a number is used as given.
- L_att(a): ``attribute_mode: each`` searches once per judged attribute with that attribute's target alone (the
  paper's "a given attribute-value pair a"); ``joint`` searches once with all of them (5× cheaper).
- Every strategy of a sample starts from the same seed (``seed + uid``): the comparison between strategies is
  paired, differences come from the losses, not from the start latent.
- Images reach F through the fixed similarity from the generator's template to the ArcFace crop
  (:class:`lrface.align.FixedAlignment`), originals and results alike. The judges see the images as generated
  (FFHQ framing at the generator's resolution), the framing they were trained on.
- Independent judges (issue #12, ``judges``): dlib's face-recognition ResNet and the Cydral gender network score
  every result against I_GT (CelebA pairs: image 1 against image 2) — :mod:`lrface.judge_scores`. The faces are
  placed by the generator's template, not found by a detector (``judges.landmarks: detect`` runs dlib's detector
  instead; its misses are counted as unscored faces).

Nothing here is trained; the generator, F_baseline, F_ours and the judges stay out of ``state_dict`` (as in
:class:`lightning_modules.pulse_search.PulseSearchModule`).
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from lightning_modules.frozen_nets import FrozenNets
from lrface.labels import CELEBA_ATTRIBUTES
from lrface.losses.identity import PulseConstraints, theta
from lrface.lookalike import make_thumbnails
from lrface.nets.dlib_backbone import DLIB_F_NAMES
from lrface.pulse import PulseSearch, gaussian_fit
from lrface.weights import feature_gamma_temp

EXTRACTORS = ("F_baseline", "F_ours")
PAPER_ATTRIBUTES = ("Arched_Eyebrows", "Male", "Narrow_Eyes", "Smiling", "Wearing_Lipstick")
REFERENCES = ("gt", "lr")
ATTRIBUTE_MODES = ("joint", "each")


@dataclass(frozen=True)
class Strategy:
    """One way of upscaling a thumbnail: which F (None for plain PULSE), which term, which reference for L_sim."""

    name: str
    features: str | None = None
    term: str = "sr"  # sr | sim | race | att
    reference: str | None = None

    @property
    def key(self) -> tuple:
        """Identical searches share a key (and are run once)."""
        return self.features, self.term, self.reference


def celeba_strategies(table1_reference: str, reid_reference: str, attributes: bool) -> list[Strategy]:
    """Table 1's three upscalings of I_GT, then Table 3's (when an attribute judge is given)."""
    out = [Strategy("L_SR"),
           Strategy("Lookalike-Baseline", "F_baseline", "sim", table1_reference),
           Strategy("Lookalike-Ours", "F_ours", "sim", table1_reference)]
    if attributes:
        out += [Strategy("F_baseline + L_sim(I_LR)", "F_baseline", "sim", reid_reference),
                Strategy("F_ours + L_sim(I_LR)", "F_ours", "sim", reid_reference),
                Strategy("F_ours + L_att(a)", "F_ours", "att")]
    return out


def fairface_strategies(reid_reference: str) -> list[Strategy]:
    """Table 2's four strategies."""
    return [Strategy("L_SR"),
            Strategy("F_baseline + L_sim(I_LR)", "F_baseline", "sim", reid_reference),
            Strategy("F_ours + L_sim(I_LR)", "F_ours", "sim", reid_reference),
            Strategy("F_ours + L_race(r)", "F_ours", "race")]


class UpscalingEvaluationModule(FrozenNets, pl.LightningModule):
    """Tables 1–3 of the seed paper as a ``predict_step`` (see the module docstring).

    Args:
        generator: StyleGAN checkpoint (``lrface.weights.load_generator``) or module; FFHQ framing.
        baseline: F_baseline's checkpoint (``lrface.weights.load_feature_extractor``), or ``"dlib"``: dlib's
            pretrained face ResNet as the F the lookalikes are compared with (F_ours' against real-face features).
        ours: F_ours' checkpoint, with its race (C_R) and attribute (C_A) classifiers.
        race_judge: the independent race classifier (``lrface.judges.load_judge``); None leaves Table 2 out.
        attribute_judge: the independent attribute classifier; None leaves Table 3 out.
        judge_options: ``{"race": {...}, "attributes": {...}}`` keyword arguments of ``lrface.judges.load_judge``
            for judges given as plain state dicts (e.g. FairFace's official ``res34_fair_align_multi_7_20190809.pt``:
            ``{"race": {"task": "race", "arch": "resnet34", "input_size": 224}}``); our JudgeModule checkpoints
            carry their own.
        thumbnail_size: side of I_LR (paper: 32 for the 1024 px generator).
        search: ``lrface.pulse.PulseSearch`` kwargs (``steps``, ``eps``, ``lr``, ``restarts``, ...).
        gaussian_fit: PULSE's ``gaussian_fit.pt``; None → computed in setup from ``fit_samples`` mapping draws.
        fit_samples, fit_batch: the computed fit's draws and batch.
        lambdas: ``{"sim", "race", "att"}`` — λ1, λ2, λ3 of Eq. 8 for the strategy's one active term.
        alpha_thr: ``{"F_baseline": ..., "F_ours": ...}``: degrees, or ``"auto"`` (Alg. 1 on CelebA-train pairs).
        gamma_temp: γ_temp of Eq. 4 in degrees; None: each F's own (``lrface.weights.feature_gamma_temp``: 10°, dlib's
            3.8°).
        table1_reference: I_r of Lookalike-*: ``"gt"`` (the paper's L_sim(I_GT)) or ``"lr"``.
        reid_reference: I_r of the re-identification strategies: ``"lr"`` (the paper's L_sim(I_LR)) or ``"gt"``.
        attributes: the CelebA attributes of Table 3 (paper: five).
        attribute_mode: ``"each"`` (one L_att search per attribute) or ``"joint"``.
        keep_images: images kept per set and rank for the sample grids.
        seed: per-sample seed offset (seed + uid).
        align_size: side of the crop fed to F; None → F's input size.
        alpha_batch_size: pairs per F forward when estimating α_thr.
        judges: the independent package judges, :func:`lrface.judge_scores.parse_judges`: ``{"dlib": auto|true|false,
            "gender": auto|true|false, "landmarks": template|detect, "backend": dlib|torch}``; ``auto`` (default) is
            on when the ``judges`` extra is installed, ``true`` fails at setup when it is not.
    """

    def __init__(self, generator: str | nn.Module, baseline: str, ours: str, race_judge: str | None = None,
                 attribute_judge: str | None = None, judge_options: Mapping[str, Mapping[str, Any]] | None = None,
                 thumbnail_size: int = 32, search: Mapping[str, Any] | None = None,
                 gaussian_fit: str | None = None, fit_samples: int = 100_000, fit_batch: int = 10_000,
                 lambdas: Mapping[str, float] | None = None, alpha_thr: Mapping[str, Any] | None = None,
                 gamma_temp: float | None = None, table1_reference: str = "gt", reid_reference: str = "lr",
                 attributes: Sequence[str] = PAPER_ATTRIBUTES, attribute_mode: str = "each", keep_images: int = 8,
                 seed: int = 0, align_size: int | None = None, alpha_batch_size: int = 64,
                 judges: Mapping[str, Any] | bool | None = None):
        super().__init__()
        for name, path in (("baseline", baseline), ("ours", ours), ("race_judge", race_judge),
                           ("attribute_judge", attribute_judge), ("gaussian_fit", gaussian_fit)):
            if path is not None and not (name in ("baseline", "ours") and str(path).lower() in DLIB_F_NAMES) \
                    and not Path(path).exists():
                raise FileNotFoundError(f"module.{name}: {path} does not exist")
        if not isinstance(generator, nn.Module) and not Path(generator).exists():
            raise FileNotFoundError(f"module.generator: {generator} does not exist")
        for name, value in (("table1_reference", table1_reference), ("reid_reference", reid_reference)):
            if value not in REFERENCES:
                raise ValueError(f"module.{name} must be one of {REFERENCES}, got {value!r}")
        if attribute_mode not in ATTRIBUTE_MODES:
            raise ValueError(f"module.attribute_mode must be one of {ATTRIBUTE_MODES}, got {attribute_mode!r}")
        unknown = [a for a in attributes if a not in CELEBA_ATTRIBUTES]
        if unknown:
            raise ValueError(f"module.attributes: unknown CelebA attributes {unknown}")
        self.save_hyperparameters(ignore=["generator"] if isinstance(generator, nn.Module) else None)
        self.generator_source, self.paths = generator, {"F_baseline": baseline, "F_ours": ours}
        self.judge_paths = {"race": race_judge, "attributes": attribute_judge}
        self.judge_options = {k: dict(v or {}) for k, v in dict(judge_options or {}).items()}
        self.thumbnail_size = int(thumbnail_size)
        self.search_kwargs = dict(search or {})
        self.gaussian_fit_path, self.fit_samples, self.fit_batch = gaussian_fit, int(fit_samples), int(fit_batch)
        lam = {"sim": 1.0, "race": 1.0, "att": 1.0, **dict(lambdas or {})}
        self.lambdas = {k: float(v) for k, v in lam.items()}
        self.alpha_config = {"F_baseline": "auto", "F_ours": "auto", **dict(alpha_thr or {})}
        self.gamma_temp = None if gamma_temp is None else float(gamma_temp)
        self.table1_reference, self.reid_reference = table1_reference, reid_reference
        self.attributes = tuple(attributes)
        self.attribute_index = [CELEBA_ATTRIBUTES.index(a) for a in self.attributes]
        self.attribute_mode = attribute_mode
        self.keep_images, self.seed = int(keep_images), int(seed)
        self.align_size, self.alpha_batch_size = align_size, int(alpha_batch_size)
        from lrface.judge_scores import parse_judges

        self.judges_config = parse_judges(dict(judges) if isinstance(judges, Mapping) else judges)
        self.judge_info: dict[str, Any] = {}
        self._nets: dict[str, Any] = {"G": generator} if isinstance(generator, nn.Module) else {}
        self._fit: dict[str, Tensor] | None = None
        self.alpha_thr: dict[str, float] = {}
        self.alpha_info: dict[str, dict[str, float]] = {}
        self._kept: dict[str, int] = {}
        self._clock: float | None = None

    # -- frozen helpers (lightning_modules.frozen_nets) ------------------------------------------------------------

    def _where(self) -> torch.device:
        return self._trainer.strategy.root_device if self._trainer is not None else self.device

    def _say(self, text: str) -> None:
        if self._trainer is None or self.trainer.is_global_zero:
            print(f"[seed000] {text}", flush=True)

    def setup(self, stage: str) -> None:
        from lrface.align import FixedAlignment
        from lrface.judges import load_judge
        from lrface.weights import load_feature_extractor

        device = self._where()
        gen = self.generator.eval().requires_grad_(False).to(device)
        if self._fit is None:
            if self.gaussian_fit_path is not None:
                from lrface.upscale import load_gaussian_fit

                self._fit = {k: v.to(device) for k, v in load_gaussian_fit(self.gaussian_fit_path).items()}
            else:  # seeded: every rank computes the same fit
                self._fit = gaussian_fit(gen, n_samples=self.fit_samples, batch=self.fit_batch, seed=0, device=device)
        for name, path in self.paths.items():
            if name not in self._nets:
                nets = load_feature_extractor(path)
                for net in nets:
                    if net is not None:
                        net.eval().requires_grad_(False).to(device)
                self._nets[name] = nets
        ours = self._nets["F_ours"]
        if self.judge_paths["race"] is not None and ours.C_R is None:
            raise ValueError(f"module.ours: {self.paths['F_ours']} has no race classifier (race_classifier.*), which "
                             "L_race(r) of Table 2 needs")
        if self.judge_paths["attributes"] is not None and ours.C_A is None:
            raise ValueError(f"module.ours: {self.paths['F_ours']} has no attribute classifier "
                             "(attribute_classifier.*), which L_att(a) of Table 3 needs")
        for task, path in self.judge_paths.items():
            key = f"judge_{task}"
            if path is not None and key not in self._nets:
                judge = load_judge(path, **self.judge_options.get(task, {}))
                self._nets[key] = judge.eval().requires_grad_(False).to(device)
        if "judge_panel" not in self._nets:
            from lrface.judge_scores import JudgePanel

            panel = JudgePanel(self.judges_config, say=self._say)
            self._nets["judge_panel"] = panel
            self.judge_info = {"independent judges": ", ".join(panel.names) or "none",
                               "judges' face placement": panel.landmarks, **{
                                   f"judges.{k} skipped": v for k, v in panel.skipped.items()}}
        if "align" not in self._nets:
            size = self.align_size or int(getattr(self._nets["F_baseline"].F, "input_size", 112))
            self._nets["align"] = FixedAlignment.for_generator(gen, size=size).to(device)
        if not self.alpha_thr:
            self._set_alpha_thresholds()

    def _set_alpha_thresholds(self) -> None:
        """α_thr per F: given, or Alg. 1's brute-force search on CelebA-train pairs (this rank's share, gathered)."""
        auto = [name for name in EXTRACTORS if str(self.alpha_config[name]).lower() == "auto"]
        for name in EXTRACTORS:
            if name not in auto:
                self.alpha_thr[name] = float(self.alpha_config[name])
        if not auto:
            return
        from torch.utils.data import DataLoader, Subset

        from datamodules.errors import skip_collate
        from lrface.metrics.angles import best_angle_threshold, separation_accuracy

        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is None or not hasattr(dm, "alpha_pairs"):
            raise ValueError("alpha_thr 'auto' needs the evaluation DataModule's CelebA-train pairs; give numbers "
                             "instead (module.alpha_thr.F_baseline=..., module.alpha_thr.F_ours=...)")
        rank, world = self.trainer.global_rank, self.trainer.world_size
        start = time.perf_counter()
        rows: list[tuple[str, int, int, float]] = []
        for label, pairs in zip((1, 0), dm.alpha_pairs()):
            share = Subset(pairs, list(range(rank, len(pairs), world)))
            for batch in DataLoader(share, batch_size=self.alpha_batch_size, collate_fn=skip_collate):
                a, b = batch["image1"].to(self._where()), batch["image2"].to(self._where())
                for name in auto:
                    angles = self._angles(name, a, b)
                    rows += [(name, label, int(i), float(v)) for i, v in zip(batch["index"].tolist(), angles)]
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * world
            torch.distributed.all_gather_object(parts, rows)
            rows = [r for part in parts for r in part]
        for name in auto:
            same = np.array([v for n, lab, _, v in sorted(rows) if n == name and lab == 1])
            diff = np.array([v for n, lab, _, v in sorted(rows) if n == name and lab == 0])
            alpha = best_angle_threshold(same, diff)
            self.alpha_thr[name] = alpha
            self.alpha_info[name] = {"alpha_thr": alpha, "train_accuracy": separation_accuracy(same, diff, alpha),
                                     "pairs": float(same.size + diff.size)}
        self._say("α_thr (Alg. 1, CelebA-train pairs): " + ", ".join(
            f"{n} {self.alpha_thr[n]:.1f}° (train acc {self.alpha_info[n]['train_accuracy']:.3f})" for n in auto)
            + f" [{time.perf_counter() - start:.1f} s]")

    # -- pieces ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _embed(self, name: str, images: Tensor) -> Tensor:
        return self._nets[name].F(self._nets["align"](images.float())).float()

    @torch.no_grad()
    def _angles(self, name: str, a: Tensor, b: Tensor) -> list[float]:
        return theta(self._embed(name, a), self._embed(name, b)).cpu().tolist()

    def _five_points(self, images: Tensor) -> np.ndarray:
        """5×2: where the generator's template puts the five landmarks in images of this side."""
        from lrface.align import generator_resolution, generator_template

        template = generator_template(self.generator).detach().double().cpu().numpy()
        return template * (images.shape[-1] / generator_resolution(self.generator))

    @torch.no_grad()
    def _judge_scores(self, reference: Tensor, rows: Mapping[str, Tensor | list[Tensor]]) -> list[dict[str, Any]]:
        """Per sample ``{row: lrface.judge_scores.compare dict}`` (a list of them where a row has one search per
        attribute); empty dicts when no independent judge is active. Shared searches are judged once."""
        panel = self._nets.get("judge_panel")
        n = reference.shape[0]
        if panel is None or not panel.active:
            return [{} for _ in range(n)]
        from lrface.judge_scores import compare

        ref = panel.score(reference, self._five_points(reference))
        judged: dict[int, list[dict]] = {}
        out: list[dict[str, Any]] = [{} for _ in range(n)]
        for name, images in rows.items():
            per_search = []
            for im in images if isinstance(images, list) else [images]:
                if id(im) not in judged:
                    judged[id(im)] = compare(ref, panel.score(im, self._five_points(im)))
                per_search.append(judged[id(im)])
            for j in range(n):
                out[j][name] = [c[j] for c in per_search] if isinstance(images, list) else per_search[0][j]
        return out

    def _upscaled(self, thumbs: Tensor) -> Tensor:
        from lrface.align import generator_resolution

        size = generator_resolution(self.generator)
        return F_.interpolate(thumbs, size=(size, size), mode="bicubic", align_corners=False).clamp(0.0, 1.0)

    def _constraints(self, s: Strategy, hr: Tensor, thumbs: Tensor, targets: Mapping[str, Any]
                     ) -> PulseConstraints | None:
        if s.term == "sr":
            return None
        nets = self._nets[s.features]
        gamma = self.gamma_temp if self.gamma_temp is not None else feature_gamma_temp(nets.F)
        kw: dict[str, Any] = dict(align_fn=self._nets["align"], alpha_thr=self.alpha_thr[s.features],
                                  gamma_temp=gamma)
        if s.term == "sim":
            ref = hr if s.reference == "gt" else self._upscaled(thumbs)
            return PulseConstraints(nets.F, lambdas=(self.lambdas["sim"], 0.0, 0.0),
                                    reference_features=self._embed(s.features, ref), **kw)
        if s.term == "race":
            return PulseConstraints(nets.F, nets.C_R, lambdas=(0.0, self.lambdas["race"], 0.0),
                                    target_race=targets["race"], **kw)
        return PulseConstraints(nets.F, None, nets.C_A, lambdas=(0.0, 0.0, self.lambdas["att"]),
                                target_attributes=targets["attributes"], **kw)

    def _search(self, thumbs: Tensor, seeds: list[int], constraints: PulseConstraints | None) -> dict[str, Any]:
        fit = {k: v.clone() for k, v in self._fit.items()}
        extra = constraints.as_extra_losses() if constraints is not None else None
        out = PulseSearch(self.generator, fit, **self.search_kwargs, extra_losses=extra).search(thumbs, seeds)
        if constraints is not None:
            constraints.clear_cache()
        return out

    def _attribute_targets(self, attributes: Tensor, only: int | None = None) -> Tensor:
        """B×40 targets: the judged attributes' true values (one of them with ``only``), NaN elsewhere."""
        targets = torch.full_like(attributes, float("nan"))
        cols = self.attribute_index if only is None else [self.attribute_index[only]]
        targets[:, cols] = attributes[:, cols]
        return targets

    def _run_strategies(self, strategies: list[Strategy], hr: Tensor, seeds: list[int],
                        targets: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Every strategy's search on this batch: ``{name: {"images", "downscale_loss", "converged"}}`` (shared
        searches run once; L_att in ``each`` mode runs one search per attribute, ``images`` then a list)."""
        thumbs = make_thumbnails(hr, self.thumbnail_size)
        done: dict[tuple, dict[str, Any]] = {}
        out: dict[str, dict[str, Any]] = {}
        for s in strategies:
            if s.key not in done:
                tick = time.perf_counter()
                if s.term == "att" and self.attribute_mode == "each":
                    runs = [self._search(thumbs, seeds, self._constraints(
                        s, hr, thumbs, {"attributes": self._attribute_targets(targets["attributes"], k)}))
                        for k in range(len(self.attributes))]
                    done[s.key] = {"images": [r["images"].detach() for r in runs],
                                   "downscale_loss": torch.stack([r["downscale_loss"] for r in runs]).mean(0),
                                   "converged": torch.stack([r["converged"] for r in runs]).all(0)}
                else:
                    t = dict(targets)
                    if s.term == "att":
                        t["attributes"] = self._attribute_targets(targets["attributes"])
                    r = self._search(thumbs, seeds, self._constraints(s, hr, thumbs, t))
                    done[s.key] = {"images": r["images"].detach(), "downscale_loss": r["downscale_loss"],
                                   "converged": r["converged"]}
                done[s.key]["seconds"] = time.perf_counter() - tick
            out[s.name] = done[s.key]
        out["_thumbs"] = {"images": thumbs}
        return out

    # -- predict -----------------------------------------------------------------------------------------------------

    def on_predict_start(self) -> None:
        self._kept, self._clock = {}, time.perf_counter()

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """Per-sample records (see :class:`callbacks.upscaling_report.UpscalingReport` for their use):
        ``set``, ``uid`` and, per set, ``angles`` ({extractor: θ°} for pairs; {Table 1 set: {extractor: θ°}} for
        CelebA), ``issame``, ``race`` / ``race_pred`` ({strategy or "originals": judged race}), ``attributes`` /
        ``attributes_pred`` ({strategy or "originals": 0/1 per judged attribute}), ``judge_scores`` ({strategy,
        or "pair": the independent judges' :func:`lrface.judge_scores.compare` of I_GT and the result}), ``search``
        ({strategy: {downscale_loss, converged}}), and for the first ``keep_images`` samples ``images`` ({column:
        3×R×R})."""
        name = batch["set"][0]
        tick = time.perf_counter()
        # predict runs under inference_mode; the searches need autograd on fresh (non-inference) tensors
        with torch.inference_mode(False), torch.enable_grad():
            if name == "pairs":
                records = self._pairs(batch)
            elif name == "celeba":
                records = self._celeba(batch)
            elif name == "fairface":
                records = self._fairface(batch)
            else:
                raise ValueError(f"unknown evaluation set {name!r} (expected pairs, celeba or fairface)")
        total = self.trainer.num_predict_batches[dataloader_idx] if self._trainer is not None else "?"
        self._say(f"{name}: batch {batch_idx + 1}/{total} ({len(records)} samples, "
                  f"{time.perf_counter() - tick:.1f} s; {time.perf_counter() - (self._clock or tick):.0f} s so far)")
        return records

    def _uids(self, batch: Mapping[str, Any]) -> list[int]:
        return [int(u) for u in torch.as_tensor(batch["uid"]).reshape(-1).tolist()]

    def _pairs(self, batch: Mapping[str, Any]) -> list[dict]:
        a, b = batch["image1"].clone().float().to(self._where()), batch["image2"].clone().float().to(self._where())
        angles = {n: self._angles(n, a, b) for n in EXTRACTORS}
        same = torch.as_tensor(batch["issame"]).reshape(-1).tolist()
        judged = self._judge_scores(a, {"pair": b})
        records = [{"set": "pairs", "uid": u, "issame": bool(same[j]), "angles": {n: angles[n][j] for n in EXTRACTORS}}
                   for j, u in enumerate(self._uids(batch))]
        for rec, scores in zip(records, judged):
            if scores:
                rec["judge_scores"] = scores
        return records

    def _keep(self, name: str, n: int) -> list[bool]:
        kept = self._kept.get(name, 0)
        flags = [kept + j < self.keep_images for j in range(n)]
        self._kept[name] = kept + sum(flags)
        return flags

    @staticmethod
    def _search_stats(results: Mapping[str, Any], j: int) -> dict[str, dict[str, float]]:
        return {k: {"downscale_loss": float(v["downscale_loss"][j]), "converged": bool(v["converged"][j]),
                    "seconds_per_batch": float(v["seconds"])}
                for k, v in results.items() if not k.startswith("_")}

    def _celeba(self, batch: Mapping[str, Any]) -> list[dict]:
        hr = batch["image"].clone().float().to(self._where())
        attrs = batch["attributes"].clone().float().to(self._where())
        uids = self._uids(batch)
        seeds = [self.seed + u for u in uids]
        strategies = celeba_strategies(self.table1_reference, self.reid_reference, "judge_attributes" in self._nets)
        results = self._run_strategies(strategies, hr, seeds, {"attributes": attrs})
        angles: dict[str, dict[str, list[float]]] = {}
        with torch.no_grad():
            gt = {n: self._embed(n, hr) for n in EXTRACTORS}
            for set_name in ("PULSE-Pairs", "Lookalike-Baseline", "Lookalike-Ours"):
                images = results["L_SR" if set_name == "PULSE-Pairs" else set_name]["images"]
                angles[set_name] = {n: theta(gt[n], self._embed(n, images)).cpu().tolist() for n in EXTRACTORS}
            judged: dict[str, Tensor] = {}
            if "judge_attributes" in self._nets:
                judge = self._nets["judge_attributes"]
                cols = self.attribute_index
                judged["originals"] = judge.predict_attributes(hr)[:, cols]
                for s in [strategies[0]] + strategies[3:]:  # Table 3: L_SR and its own three strategies
                    images = results[s.name]["images"]
                    if isinstance(images, list):  # one search per attribute: judge attribute k on search k
                        judged[s.name] = torch.stack([judge.predict_attributes(im)[:, c]
                                                      for im, c in zip(images, cols)], dim=1)
                    else:
                        judged[s.name] = judge.predict_attributes(images)[:, cols]
        scores = self._judge_scores(hr, {s.name: results[s.name]["images"] for s in strategies})
        keep = self._keep("celeba", len(uids))
        records = []
        for j, u in enumerate(uids):
            rec: dict[str, Any] = {
                "set": "celeba", "uid": u, "identity": int(torch.as_tensor(batch["identity"]).reshape(-1)[j]),
                "seed": seeds[j], "angles": {k: {n: v[n][j] for n in EXTRACTORS} for k, v in angles.items()},
                "attributes": [int(x) for x in attrs[j, self.attribute_index].round().tolist()],
                "search": self._search_stats(results, j)}
            if judged:
                rec["attributes_pred"] = {k: [int(x) for x in v[j].tolist()] for k, v in judged.items()}
            if scores[j]:
                rec["judge_scores"] = scores[j]
            if keep[j]:
                rec["images"] = self._images(hr, results, j)
            records.append(rec)
        return records

    def _fairface(self, batch: Mapping[str, Any]) -> list[dict]:
        hr = batch["image"].clone().float().to(self._where())
        race = torch.as_tensor(batch["race"]).reshape(-1).long().clone().to(self._where())
        uids = self._uids(batch)
        seeds = [self.seed + u for u in uids]
        judged: dict[str, Tensor] = {}
        results: dict[str, Any] = {}
        if "judge_race" in self._nets:
            strategies = fairface_strategies(self.reid_reference)
            results = self._run_strategies(strategies, hr, seeds, {"race": race})
            judge = self._nets["judge_race"]
            with torch.no_grad():
                judged["originals"] = judge.predict_race(hr)
                for s in strategies:
                    judged[s.name] = judge.predict_race(results[s.name]["images"])
            scores = self._judge_scores(hr, {s.name: results[s.name]["images"] for s in strategies})
        else:
            scores = [{} for _ in uids]
        keep = self._keep("fairface", len(uids))
        records = []
        for j, u in enumerate(uids):
            rec = {"set": "fairface", "uid": u, "seed": seeds[j], "race": int(race[j]),
                   "race_pred": {k: int(v[j]) for k, v in judged.items()}, "search": self._search_stats(results, j)}
            if scores[j]:
                rec["judge_scores"] = scores[j]
            if keep[j] and results:
                rec["images"] = self._images(hr, results, j)
            records.append(rec)
        return records

    @staticmethod
    def _images(hr: Tensor, results: Mapping[str, Any], j: int) -> dict[str, Tensor]:
        """One sample's images for the grids: I_GT, I_LR and every strategy's result (L_att: the first search)."""
        out = {"I_GT": hr[j].detach().float().cpu(), "I_LR": results["_thumbs"]["images"][j].detach().float().cpu()}
        for k, v in results.items():
            if not k.startswith("_"):
                images = v["images"][0] if isinstance(v["images"], list) else v["images"]
                out[k] = images[j].detach().float().cpu()
        return out
