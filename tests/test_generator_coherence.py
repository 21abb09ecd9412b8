"""lrface judge-generator: the race probe, α_thr from CelebA pairs, and the three coherence judgements."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from callbacks.generator_coherence import fit_race_probe, generator_coherence, write_report
from lrface.nets.iresnet import get_model
from lrface.weights import FaceFeatures, FeatureNets, load_generator
from tests.conftest import TINY_GENERATOR


def test_race_probe_separates_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(7, 16, generator=g) * 3
    labels = torch.arange(7).repeat_interleave(40)
    x = centres[labels] + torch.randn(len(labels), 16, generator=g)
    probe = fit_race_probe(x, labels)
    accuracy = (probe(x).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95
    assert torch.allclose(probe(x), probe(5 * x), atol=1e-5)  # it normalises its input, as margin heads do


@pytest.mark.slow
def test_report_on_the_tiny_world(tiny_world: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    nets = FeatureNets(FaceFeatures(get_model("r18", widths=[8, 8, 16, 16], num_features=32).eval()), None, None)
    generator = load_generator(tiny_world / TINY_GENERATOR)
    report = generator_coherence(generator, nets, tiny_world / "celeba", tiny_world / "fairface", n_samples=24,
                                 real_limit=16, pairs=20, split="all")
    assert 0.0 <= report["alpha_thr_deg"] <= 180.0
    assert report["race_classifier"].startswith("probe")
    gen, real = report["generated"], report["real"]
    assert gen["n"] == 24 and real["n"] == 16
    # StyleGAN2's noise strengths start at 0: an untrained generator ignores its noise, so identity never moves
    assert gen["mean_noise_angle_deg"] == pytest.approx(0.0, abs=1e-3) and gen["noise_coherent_rate"] == 1.0
    assert "noise_coherent_rate" not in real
    for side in (gen, real):
        assert 0.0 <= side["coherent_rate"] <= side["flip_coherent_rate"] <= 1.0
        assert sum(side["race_histogram"]) == pytest.approx(1.0)
    md = write_report(report, tmp_path / "coherence")
    assert "| flip_coherent_rate |" in md
    assert json.loads((tmp_path / "coherence.json").read_text())["generated"]["n"] == 24
