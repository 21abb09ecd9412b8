"""Backbone checkpoint loading (official / DDP / Lightning layouts), `lrface embed` and `lrface evaluate`."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from callbacks.evaluation import embed_files, evaluate_bin, evaluate_survface
from datamodules.formats.verification_bin import load_bin_encoded
from lrface.cli import main
from lrface.metrics.verification import verify_pairs
from lrface.weights import backbone_state_dict, load_backbone

TINY = dict(widths=(8, 16, 16, 32), num_features=32)


@pytest.fixture
def backbone_files(tmp_path: Path) -> tuple[torch.nn.Module, dict[str, Path]]:
    torch.manual_seed(0)
    model = load_backbone("r18", **TINY)
    sd = model.state_dict()
    files = {"official": tmp_path / "backbone.pth", "ddp": tmp_path / "ddp.pth", "lightning": tmp_path / "last.ckpt"}
    torch.save(sd, files["official"])
    torch.save({f"module.{k}": v for k, v in sd.items()}, files["ddp"])
    head = {"head.weight": torch.randn(5, 32)}
    torch.save({"epoch": 3, "state_dict": {**{f"backbone.{k}": v for k, v in sd.items()}, **head}}, files["lightning"])
    return model, files


def test_every_layout_loads_strict_and_gives_identical_embeddings(backbone_files) -> None:
    model, files = backbone_files
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    want = model(x)
    for path in files.values():
        loaded = load_backbone("iresnet18", path, **TINY)
        assert torch.equal(loaded(x), want), path
    with pytest.raises(RuntimeError, match="size mismatch|Missing key"):
        load_backbone("r34", files["official"], **TINY)


def test_a_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    with pytest.raises(ValueError, match="not a plain weights checkpoint"):
        backbone_state_dict(path)
    assert not marker.exists()


def test_embed_and_evaluate_agree(backbone_files, tiny_world: Path, tmp_path: Path) -> None:
    model, files = backbone_files
    lfw = tiny_world / "ms1m" / "lfw.bin"
    emb, names = embed_files(model, bin_path=lfw)
    direct = verify_pairs(emb[0::2], emb[1::2], load_bin_encoded(lfw)[1])["accuracy"]
    assert evaluate_bin(model, lfw)["accuracy"] == pytest.approx(direct)

    out = tmp_path / "emb.npy"
    args = ["--backbone", "r18", "--widths", "8", "16", "16", "32", "--num-features", "32", "--weights"]
    assert main(["embed", *args, str(files["lightning"]), "--bin", str(lfw), "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), emb, rtol=1e-5, atol=1e-5)
    assert len((tmp_path / "emb.names.txt").read_text().split()) == len(emb) == len(names)

    res = tmp_path / "res.json"
    assert main(["evaluate", *args, str(files["official"]), "--bin", str(lfw), "--survface",
                 str(tiny_world / "qmul_survface"), "--out", str(res)]) == 0
    results = json.loads(res.read_text())
    assert results["lfw"]["accuracy"] == pytest.approx(direct)
    sf = results["qmul_survface"]
    assert {"verification/auc", "verification/tar@far=0.001", "identification/tpir20@fpir=0.01",
            "identification/auc"} <= set(sf)
    assert all(0.0 <= v <= 1.0 for v in sf.values())


def test_degraded_pairs_change_the_embeddings(backbone_files, tiny_world: Path) -> None:
    model, _ = backbone_files
    lfw = tiny_world / "ms1m" / "lfw.bin"
    full, low = evaluate_bin(model, lfw), evaluate_bin(model, lfw, degrade_to=8)
    assert full.keys() == low.keys() and full != low



def test_url_backbone_gets_both_scores_confidences_and_ranks(tiny_world: Path) -> None:
    """A URLNet: the cosine keys are its body's, plus ``url/`` keys (confidence-weighted score), the mean confidences
    (flip views averaged), and SurvFace's closed-set rank-1 / rank-5."""
    from datamodules.ms1m import VerificationPairs
    from lrface.metrics.confidence_score import confidence_weighted_scores
    from lrface.metrics.verification import verify_scores
    from lrface.nets.url import URLNet

    torch.manual_seed(0)
    net = URLNet(load_backbone("r18", **TINY), num_sub_embeddings=4).eval()
    torch.nn.init.normal_(net.confidence.weight, std=0.5)  # input-dependent confidences (the init is constant)
    lfw = tiny_world / "ms1m" / "lfw.bin"
    full, low, plain = evaluate_bin(net, lfw), evaluate_bin(net, lfw, degrade_to=8), evaluate_bin(net.body, lfw)
    assert set(plain) < set(full) and all(full[k] == plain[k] for k in plain)
    assert {"url/accuracy", "url/accuracy_std", "url/auc", "url/tar@far=0.1", "confidence/mean_s",
            "confidence/mean_log_s"} <= set(full) and full.keys() == low.keys()

    pairs = VerificationPairs(lfw, image_size=112)
    with torch.no_grad():
        views = {}
        for key in ("image1", "image2"):
            x = torch.stack([pairs[i][key] for i in range(len(pairs))]) * 2 - 1
            (e, s), (ef, sf) = net.forward_with_confidence(x), net.forward_with_confidence(x.flip(3))
            views[key] = (e + ef, (s + sf) / 2)
    conf = torch.cat([views["image1"][1], views["image2"][1]])
    assert full["confidence/mean_s"] == pytest.approx(conf.mean().item(), rel=1e-4)
    assert full["confidence/mean_log_s"] == pytest.approx(conf.log().mean().item(), abs=1e-4)
    assert full["confidence/mean_s"] != pytest.approx(low["confidence/mean_s"], rel=1e-3)
    scores = confidence_weighted_scores(*views["image1"], *views["image2"])
    assert full["url/accuracy"] == pytest.approx(verify_scores(scores, pairs.issame)["accuracy"])

    sf = evaluate_survface(net, tiny_world / "qmul_survface")
    assert 0.0 <= sf["identification/rank1"] <= sf["identification/rank5"] <= 1.0
    assert {"url/verification/auc", "url/verification/tar@far=0.1", "confidence/mean_s"} <= set(sf)
