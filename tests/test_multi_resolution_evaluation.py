"""BTNet §4.2 gains, multi-resolution .bin / SurvFace evaluation (plain IResNet and BTNet), the end-of-fit callback
and the pipeline report."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from callbacks.evaluation import SURVFACE_FARS, evaluate_pairs
from callbacks.multi_resolution_evaluation import (
    MultiResolutionEvaluation,
    embed_at_resolution,
    embed_routed,
    evaluate_multi_resolution_bin,
    evaluate_survface_multi_resolution,
)
from datamodules.formats.verification_bin import write_bin
from datamodules.transforms import resize_tensor
from lrface.branch_selection import select_branches
from lrface.btnet_report import write_btnet_report
from lrface.metrics.identification import open_set_identification
from lrface.metrics.multi_resolution import (
    cross_resolution_gain,
    gain_table,
    pair_key,
    parse_pair_key,
    same_resolution_gain,
)
from lrface.metrics.verification import verify_pairs
from lrface.nets.iresnet import get_model
from tests.fixtures_real_formats import jpeg_bytes, make_survface, smooth_image

TINY = {"widths": (8, 16, 16, 16), "num_features": 16}
PAIRS = ((112, 7), (112, 14), (112, 28), (7, 7), (14, 14), (28, 28), (112, 112))
RULES = [f"{i}+{s}" for i in ("max", "min", "avg") for s in ("floor", "near", "ceil")]


# -- gains ------------------------------------------------------------------------------------------------------------

def test_gains_on_hand_computed_numbers() -> None:
    assert cross_resolution_gain(0.86, 0.60, 0.80) == pytest.approx(1.3)  # 0.26 / 0.20
    assert cross_resolution_gain(0.50, 0.60, 0.80) == pytest.approx(-0.5)  # worse than φ_hr: negative
    # φ_mr below φ_hr: the denominator's absolute value keeps the numerator's sign
    assert cross_resolution_gain(0.95, 0.90, 0.80) == pytest.approx(0.5)
    assert cross_resolution_gain(0.85, 0.90, 0.80) == pytest.approx(-0.5)
    assert same_resolution_gain(0.78, 0.55, 0.75) == pytest.approx(1.15)
    assert same_resolution_gain(0.60, 0.60, 0.75) == 0.0
    assert math.isnan(same_resolution_gain(0.78, 0.55, 0.55))  # baseline = φ_hr: undefined
    assert math.isnan(cross_resolution_gain(0.78, 0.55, None))
    assert math.isnan(cross_resolution_gain(float("nan"), 0.55, 0.6))
    assert pair_key(112, 7) == "112&7" and parse_pair_key("112&7") == (112, 7) and parse_pair_key("7&7") == (7, 7)
    for bad in ("112x7", "a&b", "1&2&3", "0&7"):
        with pytest.raises(ValueError, match="pair"):
            parse_pair_key(bad)


def test_gain_table_picks_the_baseline_per_cell() -> None:
    metrics = {
        "hr": {"112&7": 0.60, "7&7": 0.55, "14&14": 0.70, "112&112": 0.99},
        "mr": {"112&7": 0.80, "7&7": 0.70, "14&14": 0.75, "112&112": 0.97},
        "m7": {"112&7": 0.50, "7&7": 0.75},
        "m14": {"14&14": 0.70},
        "bt": {"112&7": 0.86, "7&7": 0.78, "14&14": 0.80, "112&112": 0.99},
    }
    table = gain_table(metrics, "hr", "mr", {"7": "m7", 14: "m14"})
    assert list(table) == list(metrics) and list(table["bt"]) == ["112&7", "7&7", "14&14", "112&112"]
    assert table["bt"]["112&7"] == pytest.approx(1.3)  # cross: φ_mr
    assert table["bt"]["7&7"] == pytest.approx(1.15)  # same: φ_7 (0.23 / 0.20), not φ_mr (0.23 / 0.15)
    assert math.isnan(table["bt"]["14&14"])  # φ_14 equals φ_hr
    assert math.isnan(table["bt"]["112&112"])  # no φ_112 given
    assert table["mr"]["112&7"] == pytest.approx(1.0) and table["hr"]["7&7"] == 0.0
    assert table["m7"]["112&7"] == pytest.approx(-0.5)
    assert math.isnan(table["m7"]["14&14"])  # m7 has no 14&14 value
    assert math.isnan(gain_table(metrics, "nobody", "mr", {})["bt"]["112&7"])


# -- .bin at resolution pairs -----------------------------------------------------------------------------------------

def _write_tiny_bin(path: Path, seed: int, pairs: int = 10) -> Path:
    rng = np.random.default_rng(seed)
    faces = [smooth_image(rng, 112, 112) for _ in range(pairs)]
    images, issame = [], []
    for k in range(pairs):  # same: two noisy copies of one face; different: two faces
        same = k % 2 == 0
        a = faces[k]
        b = faces[k] if same else faces[(k + 1) % pairs]
        noisy = np.clip(b.astype(int) + rng.integers(-12, 13, b.shape), 0, 255).astype(np.uint8)
        images += [jpeg_bytes(a), jpeg_bytes(noisy)]
        issame.append(same)
    write_bin(path, images, issame)
    return path


def _tiny_iresnet(seed: int = 0):
    torch.manual_seed(seed)
    return get_model("r18", **TINY).eval()


def _tiny_btnet(seed: int = 0):
    from lrface.nets.btnet import BTNet

    torch.manual_seed(seed)
    net = BTNet.from_trunk(_tiny_iresnet(seed).state_dict(), resolutions=(7, 14, 28))
    torch.manual_seed(seed + 1)
    for branch in net.branches.values():  # make each branch its own network, not a copy of the trunk
        for p in branch.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _count_inputs(model: torch.nn.Module) -> Counter:
    """Counter of (input side, batch size) per forward call of ``model``."""
    calls: Counter = Counter()
    model.register_forward_hook(lambda m, args, out: calls.update([(int(args[0].shape[-1]), int(args[0].shape[0]))]))
    return calls


def test_bin_at_resolution_pairs_with_a_plain_model(tmp_path: Path) -> None:
    from datamodules.ms1m import VerificationPairs

    path = _write_tiny_bin(tmp_path / "tiny.bin", seed=1)
    model = _tiny_iresnet()
    calls = _count_inputs(model)
    out = evaluate_multi_resolution_bin(model, path, PAIRS, batch_size=64)
    assert list(out) == ["112&7", "112&14", "112&28", "7&7", "14&14", "28&28", "112&112"]
    assert all(set(m) == {"accuracy", "accuracy_std", "threshold", "auc"} for m in out.values())
    # 4 resolutions per pair side, each embedded once (+ its flip), always at the model's 112
    assert calls == Counter({(112, 10): 16})
    assert out["112&112"] != out["112&7"] and out["7&7"] != out["112&7"]

    # the 112&7 setting by hand: second images shrunk to 7 px, then brought back to 112 for the plain model
    pairs = VerificationPairs(path, image_size=112)
    first = torch.stack([pairs[i]["image1"] for i in range(len(pairs))])
    second = torch.stack([pairs[i]["image2"] for i in range(len(pairs))])
    with torch.no_grad():
        embed = lambda x: (model(x * 2 - 1) + model(x.flip(3) * 2 - 1)).numpy()
        e1 = embed(first)
        e2 = embed(resize_tensor(resize_tensor(second, (7, 7)), (112, 112)))
    assert out["112&7"]["accuracy"] == pytest.approx(verify_pairs(e1, e2, pairs.issame)["accuracy"])
    assert out["112&7"]["threshold"] == pytest.approx(verify_pairs(e1, e2, pairs.issame)["threshold"])
    assert out["112&7"]["auc"] == pytest.approx(evaluate_pairs(e1, e2, pairs.issame, ())["auc"])


def test_bin_at_resolution_pairs_with_btnet(tmp_path: Path) -> None:
    path = _write_tiny_bin(tmp_path / "tiny.bin", seed=2)
    net = _tiny_btnet()
    calls = _count_inputs(net)
    out = evaluate_multi_resolution_bin(net, path, PAIRS, batch_size=64)
    # BTNet sees every resolution natively: one pass per (side, resolution), two calls each (flip)
    assert calls == Counter({(112, 10): 4, (28, 10): 4, (14, 10): 4, (7, 10): 4})
    assert len({m["accuracy"] for m in out.values()}) > 1 and out["112&112"]["auc"] != out["112&7"]["auc"]
    with pytest.raises(ValueError, match="side"):
        embed_at_resolution(net, torch.rand(2, 3, 20, 20))


# -- QMUL-SurvFace at native sizes ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def survface(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A hand-made release folder and the native [H, W] of its 14 test images (each evaluated once)."""
    root = tmp_path_factory.mktemp("sf") / "QMUL-SurvFace"
    truth = make_survface(root, seed=3)
    test = [s for rel, s in truth["sizes"].items() if not rel.startswith("training_set")]
    return root, np.array(test, dtype=np.int64)


def test_survface_with_a_plain_model(survface) -> None:
    root, sizes = survface
    model = _tiny_iresnet()
    calls = _count_inputs(model)
    out = evaluate_survface_multi_resolution(model, root, batch_size=64)
    assert list(out) == ["resize"]
    assert set(out["resize"]) == {"identification/tpir20@fpir=0.3", "identification/tpir20@fpir=0.2",
                                  "identification/tpir20@fpir=0.1", "identification/tpir20@fpir=0.01",
                                  "identification/auc", "verification/tar@far=0.3", "verification/tar@far=0.1",
                                  "verification/tar@far=0.01", "verification/tar@far=0.001", "verification/auc"}
    assert all(0.0 <= v <= 1.0 for v in out["resize"].values())
    assert calls == Counter({(112, len(sizes)): 2})  # every distinct test image once (+ flip)


def test_survface_with_btnet_routes_by_every_rule(survface) -> None:
    from datamodules.qmul_survface import SurvFaceIdentification, SurvFaceVerification

    root, sizes = survface
    net = _tiny_btnet()
    calls = _count_inputs(net)
    out = evaluate_survface_multi_resolution(net, root, batch_size=64)
    assert list(out) == RULES
    branches = (7, 14, 28, 112)
    routes = {rule: select_branches(sizes, branches, *rule.split("+")) for rule in RULES}
    for rule, route in routes.items():
        for r in branches:
            assert out[rule][f"branch_share/{r}"] == pytest.approx(np.mean(route == r)), (rule, r)
    assert len({tuple(out[r][f"branch_share/{b}"] for b in branches) for r in RULES}) > 2  # the rules differ

    # each image embedded once per branch side it is routed to under any rule (two calls: flip)
    images_per_side = Counter()
    for side, batch in calls.elements():
        images_per_side[side] += batch
    wanted = {r: int(np.any(np.stack(list(routes.values())) == r, axis=0).sum()) for r in branches}
    assert dict(images_per_side) == {r: 2 * n for r, n in wanted.items() if n}

    # max+ceil by hand: each image resized to its branch, embedded by the BTNet, scored by the shared protocols
    ver, ident = SurvFaceVerification(root), SurvFaceIdentification(root)

    def embed(image: torch.Tensor) -> np.ndarray:
        h, w = image.shape[-2:]
        side = int(select_branches(np.array([[h, w]]), branches, "max", "ceil")[0])
        return embed_at_resolution(net, resize_tensor(image[None], (side, side)))[0]

    e1 = np.stack([embed(ver[i]["image1"]) for i in range(len(ver))])
    e2 = np.stack([embed(ver[i]["image2"]) for i in range(len(ver))])
    expected = evaluate_pairs(e1, e2, ver.issame, SURVFACE_FARS)
    assert out["max+ceil"]["verification/auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert out["max+ceil"]["verification/tar@far=0.3"] == pytest.approx(expected["tar@far=0.3"], abs=1e-6)
    part = {p: np.stack([embed(ident[p][i]["image"]) for i in range(len(ident[p]))]) for p in ident.parts}
    res = open_set_identification(np.concatenate([part["mated_probe"], part["unmated_probe"]]),
                                  np.concatenate([ident.mated_probe.identities, [-1] * len(ident.unmated_probe)]),
                                  part["gallery"], ident.gallery.identities, rank=20, gallery="prototypes")
    assert out["max+ceil"]["identification/auc"] == pytest.approx(res["auc"], abs=1e-6)
    assert out["max+ceil"]["identification/tpir20@fpir=0.1"] == pytest.approx(res["tpir"][0.1], abs=1e-6)


def test_routed_embeddings_are_each_images_own(survface) -> None:
    """Every image's cached embedding under a routing is that image, resized to its side, through the BTNet."""
    from datamodules.qmul_survface import SurvFaceImages

    root, _ = survface
    paths = sorted((root / "Face_Identification_Test_Set").rglob("*.jpg"))
    images = SurvFaceImages(paths, np.zeros(len(paths), dtype=np.int64))
    sizes = images.native_sizes()
    routes = {rule: select_branches(sizes, (7, 14, 28, 112), *rule.split("+")) for rule in ("max+ceil", "min+floor")}
    assert not np.array_equal(*routes.values())
    net = _tiny_btnet()
    calls = _count_inputs(net)
    cached = embed_routed(net, images, routes.values(), batch_size=3)  # batches mix native sizes
    embedded = Counter()
    for side, batch in calls.elements():
        embedded[side] += batch
    union = {r: int(np.any([route == r for route in routes.values()], axis=0).sum()) for r in (7, 14, 28, 112)}
    assert dict(embedded) == {r: 2 * n for r, n in union.items() if n}
    for route in routes.values():
        emb = cached.assemble(route)
        for i in range(len(images)):
            side = int(route[i])
            want = embed_at_resolution(net, resize_tensor(images[i]["image"][None], (side, side)))[0]
            np.testing.assert_allclose(emb[i], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not embedded"):
        cached.assemble(np.full(len(images), 56))


# -- the callback and the report --------------------------------------------------------------------------------------

def test_callback_writes_the_evaluation(tmp_path: Path, survface) -> None:
    bins = [_write_tiny_bin(tmp_path / "a.bin", seed=4), _write_tiny_bin(tmp_path / "b.bin", seed=5)]
    callback = MultiResolutionEvaluation(bins=[str(b) for b in bins], pairs=((112, 7), (7, 7)),
                                         survface_root=str(survface[0]), indicators=("max",),
                                         strategies=("bottom", "ceil"), batch_size=64)
    tables = []
    logger = SimpleNamespace(log_table=lambda key, columns, data: tables.append((key, columns, data)))
    trainer = SimpleNamespace(is_global_zero=True, interrupted=False, default_root_dir=str(tmp_path / "run"),
                              loggers=[logger])
    net = _tiny_btnet().train()
    callback.on_fit_end(trainer, SimpleNamespace(btnet=net, backbone=None, device=torch.device("cpu")))
    assert net.training  # mode restored
    saved = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert saved.keys() == callback.results.keys()
    assert list(saved) == ["a@112&7", "a@7&7", "b@112&7", "b@7&7", "average@112&7", "average@7&7",
                           "qmul_survface@max+floor", "qmul_survface@max+ceil",
                           "cost@7px", "cost@14px", "cost@28px", "cost@112px"]  # BTNet's FLOPs / storage last
    assert saved["cost@112px"]["flops_ratio"] == 1.0 and saved["cost@7px"]["flops_ratio"] < 1.0
    for key in ("112&7", "7&7"):
        mean = (saved[f"a@{key}"]["accuracy"] + saved[f"b@{key}"]["accuracy"]) / 2
        assert saved[f"average@{key}"]["accuracy"] == pytest.approx(mean)
    assert "| average@7&7 | accuracy |" in (tmp_path / "run" / "evaluation.md").read_text()
    assert tables and tables[0][0] == "multi_resolution_evaluation"

    interrupted = SimpleNamespace(**{**vars(trainer), "interrupted": True, "default_root_dir": str(tmp_path / "x")})
    callback.on_fit_end(interrupted, SimpleNamespace(btnet=net, device=torch.device("cpu")))
    assert not (tmp_path / "x").exists()


def _evaluation(run: Path, accuracy: dict[str, float], survface: dict[str, dict] | None = None) -> Path:
    data = {f"average@{k}": {"accuracy": v, "auc": 0.9} for k, v in accuracy.items()}
    data.update({f"lfw@{k}": {"accuracy": v} for k, v in accuracy.items()})
    data.update({f"qmul_survface@{rule}": m for rule, m in (survface or {}).items()})
    run.mkdir(parents=True)
    (run / "evaluation.json").write_text(json.dumps(data))
    return run


def test_btnet_report_tables_and_gains(tmp_path: Path, capsys) -> None:
    sf = {"identification/auc": 0.354, "identification/tpir20@fpir=0.3": 0.312, "identification/tpir20@fpir=0.2":
          0.269, "identification/tpir20@fpir=0.1": 0.206, "identification/tpir20@fpir=0.01": 0.025,
          "verification/auc": 0.8, "verification/tar@far=0.3": 0.7, "verification/tar@far=0.1": 0.5,
          "verification/tar@far=0.01": 0.2, "verification/tar@far=0.001": 0.05, "branch_share/7": 0.25,
          "branch_share/14": 0.5, "branch_share/28": 0.25, "branch_share/112": 0.0}
    runs = {
        "phi_hr": _evaluation(tmp_path / "hr", {"112&7": 0.60, "112&14": 0.90, "7&7": 0.55, "14&14": 0.70,
                                                "112&112": 0.99}),
        "phi_mr": _evaluation(tmp_path / "mr", {"112&7": 0.80, "112&14": 0.80, "7&7": 0.70, "14&14": 0.75,
                                                "112&112": 0.97}),
        "phi_7": _evaluation(tmp_path / "m7", {"112&7": 0.50, "7&7": 0.75}),
        "phi_14": _evaluation(tmp_path / "m14", {"14&14": 0.70}),
        "phi_28": tmp_path / "m28_unfinished",
        "phi_bt": _evaluation(tmp_path / "bt", {"112&7": 0.86, "112&14": 0.95, "7&7": 0.78, "14&14": 0.80,
                                                "112&112": 0.99}, {"max+ceil": sf, "min+floor": sf}),
    }
    pairs = ((112, 7), (112, 14), (7, 7), (14, 14), (112, 112))
    md = write_btnet_report(runs, tmp_path / "out", pairs=pairs)
    assert md == (tmp_path / "out" / "btnet_report.md").read_text() and md in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "btnet_report.json").read_text())
    assert report["missing"].keys() == {"phi_28"} and "phi_28" in md
    assert list(report["accuracy"]) == ["phi_hr", "phi_mr", "phi_7", "phi_14", "phi_bt"]
    assert report["accuracy"]["phi_bt"]["112&7"] == 0.86 and report["accuracy"]["phi_7"]["14&14"] is None
    gains = report["gains"]
    assert gains["phi_bt"]["112&7"] == pytest.approx(1.3)
    assert gains["phi_bt"]["112&14"] == pytest.approx(0.5)  # φ_mr below φ_hr: |−0.1|
    assert gains["phi_mr"]["112&14"] == pytest.approx(-1.0)
    assert gains["phi_bt"]["7&7"] == pytest.approx(1.15)  # against φ_7, found by its default name
    assert gains["phi_bt"]["14&14"] is None  # φ_14 = φ_hr at 14&14: undefined
    assert gains["phi_bt"]["112&112"] is None  # no same-resolution baseline at 112
    assert gains["phi_7"]["112&7"] == pytest.approx(-0.5)
    assert report["gain_baselines"] == {"112&7": "phi_mr", "112&14": "phi_mr", "7&7": "phi_7", "14&14": "phi_14",
                                        "112&112": None}
    assert "| phi_bt | 86.00 | 95.00 | 78.00 | 80.00 | 99.00 |" in md
    assert "| phi_bt | +1.30 | +0.50 | +1.15 | – | – |" in md
    assert "| phi_7 | -0.50 | – | +1.00 | – | – |" in md  # φ_7 is its own 7&7 baseline: gain 1
    assert list(report["survface"]) == ["phi_bt"] and set(report["survface"]["phi_bt"]) == {"max+ceil", "min+floor"}
    assert "| phi_bt | max+ceil | 35.40 | 31.20 | 26.90 | 20.60 | 2.50 | 80.00 |" in md
    assert "112: 0% · 28: 25% · 14: 50% · 7: 25%" in md

    # explicit mm, and no run at all
    other = json.loads(json.dumps(report))
    write_btnet_report(runs, tmp_path / "out2", pairs=pairs, mm={7: "phi_mr"})
    assert json.loads((tmp_path / "out2" / "btnet_report.json").read_text())["gains"]["phi_bt"]["7&7"] == \
        pytest.approx((0.78 - 0.55) / 0.15) and other["gains"]["phi_bt"]["7&7"] == pytest.approx(1.15)
    md = write_btnet_report({"x": tmp_path / "none"}, tmp_path / "out3")
    assert "`x`: no evaluation.json" in md
