"""load_feature_extractor: F, C_R, C_A out of FeatureExtractorModule checkpoints and insightface backbone files."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml

from lrface.nets.iresnet import get_model
from lrface.weights import FaceFeatures, FeatureNets, load_feature_extractor

ARCH = {"name": "r18", "widths": [8, 16, 16, 32], "num_features": 32, "input_size": 112}


def _module(seed: int = 0):
    """A real FeatureExtractorModule around a tiny IResNet with non-trivial BN statistics (so eval mode matters)."""
    from lightning_modules.feature_extractor import FeatureExtractorModule
    from lrface.losses.margin import ArcFace

    torch.manual_seed(seed)
    backbone = get_model(**ARCH)
    for m in backbone.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    module = FeatureExtractorModule(backbone, head=functools.partial(ArcFace), optimizer=functools.partial(
        torch.optim.SGD, lr=0.1))
    return module.eval()


def _save_run(tmp: Path, module, classifiers: dict[str, int]) -> Path:
    """<tmp>/run/checkpoints/last.ckpt (a Lightning-shaped dict) + <tmp>/run/config.yaml (as the runner writes)."""
    state = dict(module.state_dict())
    assert all(k.startswith("backbone.") for k in state)
    g = torch.Generator().manual_seed(1)
    for name, out in classifiers.items():
        state[f"{name}.weight"] = torch.randn(out, 32, generator=g)
        state[f"{name}.bias"] = torch.randn(out, generator=g)
    state["head.weight"] = torch.randn(10, 32, generator=g)
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"epoch": 3, "global_step": 40, "pytorch-lightning_version": "2.6.0", "state_dict": state,
                "hyper_parameters": {"num_classes": 10, "embedding_size": None}}, ckpt)
    config = {"name": "arcface_synthetic", "module": {
        "_target_": "lightning_modules.feature_extractor.FeatureExtractorModule",
        "backbone": {"_target_": "lrface.nets.iresnet.get_model", **ARCH, "dropout": 0.0, "fp16": False},
        "head": {"_target_": "lrface.losses.margin.ArcFace", "_partial_": True, "s": 64.0, "m": 0.5}}}
    (tmp / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    return ckpt


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))


def test_lightning_checkpoint_with_classifiers(tmp_path, images):
    module = _module()
    ckpt = _save_run(tmp_path, module, {"race_classifier": 7, "attribute_classifier": 40})
    nets = load_feature_extractor(ckpt)
    assert isinstance(nets, FeatureNets) and isinstance(nets.F, FaceFeatures)
    with torch.no_grad():
        want = module(images)
        got = nets.F(images)
    assert got.shape == (3, 32)
    assert torch.allclose(got, want, atol=1e-5)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    with torch.no_grad():
        assert torch.allclose(nets.C_R(got), got @ state["race_classifier.weight"].T + state["race_classifier.bias"],
                              atol=1e-5)
        assert nets.C_A(got).shape == (3, 40)
    assert all(not m.training for m in nets) and not any(p.requires_grad for m in nets for p in m.parameters())


def test_classifiers_absent_and_resize(tmp_path, images):
    module = _module(seed=3)
    nets = load_feature_extractor(_save_run(tmp_path, module, {}))
    assert nets.C_R is None and nets.C_A is None
    small = images[:, :, ::2, ::2].contiguous()  # 56 px: resized bilinearly to the backbone's 112
    with torch.no_grad():
        want = module(torch.nn.functional.interpolate(small, size=(112, 112), mode="bilinear", align_corners=False))
        assert torch.allclose(nets.F(small), want, atol=1e-5)
    # differentiable w.r.t. the images (the PULSE constraints back-propagate through F)
    x = small.clone().requires_grad_(True)
    nets.F(x).pow(2).sum().backward()
    assert x.grad.abs().sum() > 0


def test_explicit_backbone_overrides_the_run_config(tmp_path, images):
    module = _module()
    ckpt = _save_run(tmp_path, module, {"race_classifier": 7})
    nets = load_feature_extractor(ckpt, backbone="r18", widths=[8, 16, 16, 32], num_features=32)
    with torch.no_grad():
        assert torch.allclose(nets.F(images), module(images), atol=1e-5)
    assert nets.C_R is not None and nets.C_A is None
    with pytest.raises(ValueError, match=r"last\.ckpt.*do not fit r50"):
        load_feature_extractor(ckpt, backbone="r50")


def test_insightface_backbone_file(tmp_path, images):
    module = _module()
    pth = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in module.backbone.state_dict().items()}, pth)  # DDP-saved
    nets = load_feature_extractor(pth, backbone="iresnet18", widths=[8, 16, 16, 32], num_features=32)
    with torch.no_grad():
        assert torch.allclose(nets.F(images), module(images), atol=1e-5)
    assert nets.C_R is None and nets.C_A is None
    with pytest.raises(ValueError, match=r"backbone\.pth.*pass backbone="):
        load_feature_extractor(pth)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_feature_extractor(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        load_feature_extractor(junk, backbone="r18")
    # a Lightning checkpoint outside a run directory: no config to read the architecture from
    lone = tmp_path / "lone.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in _module().backbone.state_dict().items()}}, lone)
    with pytest.raises(ValueError, match=r"lone\.ckpt.*config\.yaml"):
        load_feature_extractor(lone)
    # a classifier of the wrong shape
    module = _module()
    ckpt = _save_run(tmp_path / "bad", module, {"race_classifier": 5})
    with pytest.raises(ValueError, match=r"race_classifier must be Linear\(32 → 7\)"):
        load_feature_extractor(ckpt)
