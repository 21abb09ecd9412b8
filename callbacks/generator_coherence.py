"""Does a generator produce coherent faces, as judged by the seed paper's F and a race classifier on F?

For PULSE the generator's samples must be faces that F reads like photographs. Three judgements, each compared with
the same judgement on real aligned CelebA photographs (the numbers only mean something side by side):

- **race confidence**: the race classifier C_R on F's features gives its top class probability ≥ ``race_conf``
  (0.5 by default). C_R is the checkpoint's ``race_classifier`` when F has one (issue #6's multi-task F); otherwise a
  multinomial logistic-regression probe fitted here on F's features of the FairFace training split (stated in the
  report as ``race_classifier: probe``).
- **identity under flip**: θ(F(x), F(flip(x))) < α_thr — a face keeps its identity when mirrored.
- **identity under noise**: θ(F(G(w, n1)), F(G(w, n2))) < α_thr for two draws of the noise inputs — StyleGAN's noise
  should change hair strands and skin texture, not who the person is (real photographs: not applicable).

α_thr is the seed paper's Alg. 1 threshold (:func:`lrface.metrics.angles.best_angle_threshold`) on CelebA-test
same / different identity pairs, so "same identity" means what F's own verification threshold means.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F_

from lrface.align import FixedAlignment
from lrface.metrics.angles import angles_deg, best_angle_threshold
from lrface.weights import FeatureNets


@torch.no_grad()
def _features(nets: FeatureNets, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([nets.F(chunk) for chunk in images.split(batch_size)]) if len(images) else torch.empty(0)


def fit_race_probe(features: torch.Tensor, labels: torch.Tensor, classes: int = 7, steps: int = 300,
                   weight_decay: float = 1e-3, seed: int = 0) -> torch.nn.Linear:
    """Multinomial logistic regression on L2-normalised features (full-batch L-BFGS): N×D, N labels → Linear(D, 7)
    that takes *unnormalised* features (it normalises first, like the margin heads)."""
    torch.manual_seed(seed)
    x = F_.normalize(features.float(), dim=1)
    layer = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(layer.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F_.cross_entropy(layer(x), labels) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.nn.Sequential(_Normalize(), layer).eval().requires_grad_(False)


class _Normalize(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F_.normalize(x, dim=1)


def _stack(dataset, limit: int | None, key: str = "image") -> tuple[torch.Tensor, list[dict]]:
    n = len(dataset) if limit is None else min(limit, len(dataset))
    items = [dataset[i] for i in range(n)]
    return torch.stack([it[key] for it in items]), items


@torch.no_grad()
def generator_coherence(generator: Any, nets: FeatureNets, celeba_root: str | Path, fairface_root: str | Path | None,
                        n_samples: int = 512, seed: int = 0, race_conf: float = 0.5, truncation: float = 1.0,
                        real_limit: int | None = 1000, pairs: int = 1000, split: str = "test",
                        device: str = "cpu") -> dict[str, Any]:
    """The report described in the module docstring.

    Args:
        generator: a generator with the ``mapping`` / ``synthesis`` / ``noise_shapes`` protocol, FFHQ-framed (or with a
            ``face_template``).
        nets: F (+ optional C_R) from :func:`lrface.weights.load_feature_extractor`.
        celeba_root: CelebA folder (``split``: real aligned photographs and the α_thr pairs).
        fairface_root: FairFace folder for the race probe (needed when ``nets.C_R`` is None).
        n_samples: generated faces.
        seed: seed of z and of both noise draws.
        race_conf: confidence a race call must reach.
        truncation: ψ towards the mean w of the drawn batch (1 = none).
        real_limit: CelebA-test photographs used as the real reference.
        pairs: CelebA same and different pairs for α_thr.
        split: the CelebA split (``test``; any with ≥ 2 identities).
        device: where the networks run.

    Returns:
        ``{"alpha_thr_deg", "race_classifier", "generated": {...rates and mean angles...}, "real": {...}}``.
    """
    from datamodules.celeba import CelebADataset, CelebAPairs

    generator = generator.to(device).eval()
    nets = FeatureNets(*(m.to(device).eval() if m is not None else None for m in nets))
    align = FixedAlignment.for_generator(generator).to(device)

    celeba = CelebADataset(celeba_root, split, image_size=112, align=True)
    real_images, _ = _stack(celeba, real_limit)
    real_images = real_images.to(device)
    same = CelebAPairs(celeba, pairs, same=True, seed=seed)
    diff = CelebAPairs(celeba, pairs, same=False, seed=seed + 1)

    def pair_angles(ds) -> np.ndarray:
        a, b = zip(*((it["image1"], it["image2"]) for it in (ds[i] for i in range(len(ds)))))
        return np.asarray(angles_deg(_features(nets, torch.stack(a).to(device)),
                                     _features(nets, torch.stack(b).to(device))).cpu(), dtype=np.float64)

    alpha_thr = best_angle_threshold(pair_angles(same), pair_angles(diff))

    race_classifier, race_source = nets.C_R, "checkpoint"
    if race_classifier is None:
        if fairface_root is None:
            raise ValueError("F has no race_classifier: give fairface_root to fit the race probe")
        from datamodules.fairface import FairFaceDataset

        fairface = FairFaceDataset(fairface_root, "train", image_size=112)
        ff_images, ff_items = _stack(fairface, None)
        race_classifier = fit_race_probe(_features(nets, ff_images.to(device)).cpu(),
                                         torch.tensor([int(it["race"]) for it in ff_items])).to(device)
        race_source = f"probe (logistic regression on F features of {len(ff_items)} FairFace-train images)"

    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n_samples, generator.style_dim, generator=rng).to(device)
    w = generator.mapping(z)
    if truncation != 1.0:
        w = w.mean(0, keepdim=True) + truncation * (w - w.mean(0, keepdim=True))

    def render(noise_seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(noise_seed)
        shapes = [tuple(s)[-2:] for s in generator.noise_shapes()]
        out = []
        for chunk in w.split(64):
            noise = [torch.randn(chunk.shape[0], 1, *hw, generator=g).to(device) for hw in shapes]
            out.append(((generator.synthesis(chunk, noise) + 1) / 2).clamp(0, 1))
        return align(torch.cat(out))

    fake1, fake2 = render(seed + 1), render(seed + 2)

    def judge(images: torch.Tensor, others: torch.Tensor | None) -> dict[str, float]:
        f = _features(nets, images)
        probs = torch.softmax(race_classifier(f), dim=1)
        flip = angles_deg(f, _features(nets, torch.flip(images, dims=[3])))
        out = {"n": float(len(images)),
               "race_confident_rate": float((probs.max(1).values >= race_conf).float().mean()),
               "mean_race_confidence": float(probs.max(1).values.mean()),
               "flip_coherent_rate": float((flip < alpha_thr).float().mean()),
               "mean_flip_angle_deg": float(flip.mean())}
        if others is not None:
            noise = angles_deg(f, _features(nets, others))
            out["noise_coherent_rate"] = float((noise < alpha_thr).float().mean())
            out["mean_noise_angle_deg"] = float(noise.mean())
            out["coherent_rate"] = float(((probs.max(1).values >= race_conf) & (flip < alpha_thr)
                                          & (noise < alpha_thr)).float().mean())
        else:
            out["coherent_rate"] = float(((probs.max(1).values >= race_conf) & (flip < alpha_thr)).float().mean())
        counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).float()
        out["race_histogram"] = (counts / counts.sum()).tolist()
        return out

    return {"alpha_thr_deg": float(alpha_thr), "race_classifier": race_source, "race_conf": race_conf,
            "generated": judge(fake1, fake2), "real": judge(real_images, None)}


def write_report(report: dict[str, Any], path: str | Path) -> str:
    """Writes ``report`` as JSON next to a Markdown table (``.md``), atomically; returns the Markdown."""
    from lrface.io import atomic_write_text

    path = Path(path)
    g, r = report["generated"], report["real"]
    rows = ["race_confident_rate", "mean_race_confidence", "flip_coherent_rate", "mean_flip_angle_deg",
            "noise_coherent_rate", "mean_noise_angle_deg", "coherent_rate"]
    lines = [f"# Generator coherence (α_thr = {report['alpha_thr_deg']:.2f}°, race classifier: "
             f"{report['race_classifier']}, confident at ≥ {report['race_conf']})", "",
             "| judgement | generated | real CelebA-test |", "|---|---|---|"]
    for key in rows:
        fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
        lines.append(f"| {key} | {fmt(g.get(key))} | {fmt(r.get(key))} |")
    md = "\n".join(lines) + "\n"
    atomic_write_text(path.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(path.with_suffix(".md"), md)
    return md
