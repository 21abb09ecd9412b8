"""Seed paper Tables 1–3 (lrface.metrics.reid) and their rendering: Markdown, JSON, Fig. 5 histograms, sample grid."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lrface.metrics.reid import (
    ATTRIBUTE_STRATEGIES, PAPER, PAPER_ATTRIBUTES, STRATEGIES, alpha_thresholds, attribute_reid, findings, race_reid,
    table1, table2, table3,
)
from lrface.upscaling_report import plot_angle_histograms, render_markdown, sample_grid, write_report

SAME, DIFF = [40.0, 50.0, 60.0], [70.0, 80.0, 90.0]


def _hand_angles() -> dict:
    # F_baseline's lookalikes sit among the same-person angles, F_ours' among the different ones.
    return {
        "F_baseline": {"CelebA-Same": SAME, "CelebA-Diff": DIFF, "Lookalike-Baseline": [52.0, 55.0, 66.0],
                       "Lookalike-Ours": np.array([30.0, 40.0])},
        "F_ours": {"CelebA-Same": SAME, "CelebA-Diff": DIFF, "Lookalike-Baseline": [85.0, 95.0, 100.0],
                   "Lookalike-Ours": []},
    }


def test_table1_hand_computed_thresholds_and_accuracies() -> None:
    t1 = table1(_hand_angles())
    same = t1["angles"]["CelebA-Same"]["F_baseline"]
    assert same["mean"] == pytest.approx(50.0) and same["n"] == 3
    assert same["std"] == pytest.approx(math.sqrt(200.0 / 3.0))
    assert table1(_hand_angles(), ddof=1)["angles"]["CelebA-Same"]["F_ours"]["std"] == pytest.approx(10.0)
    assert t1["angles"]["PULSE-Pairs"] == {"F_baseline": None, "F_ours": None}
    assert t1["angles"]["Lookalike-Ours"]["F_ours"] is None  # empty
    assert t1["angles"]["Lookalike-Ours"]["F_baseline"]["mean"] == pytest.approx(35.0)

    base, ours = t1["separation"]["F_baseline"], t1["separation"]["F_ours"]
    # Opt 1: CelebA only, perfectly separable between 60 and 70.
    assert base["opt1"]["alpha_thr"] == pytest.approx(65.0)
    assert base["opt1"]["CelebA-Same+Diff"] == pytest.approx(1.0)
    assert base["opt1"]["Lookalike-Baseline"] == pytest.approx(1 / 3)  # only 66 ≥ 65
    # Opt 2: 8 of 9 correct only at 51 (between 50 and 52): 60 is then misread as "different".
    assert base["opt2"]["alpha_thr"] == pytest.approx(51.0)
    assert base["opt2"]["CelebA-Same+Diff"] == pytest.approx(5 / 6)
    assert base["opt2"]["Lookalike-Baseline"] == pytest.approx(1.0)
    assert base["opt2"]["CelebA-Same"] == pytest.approx(2 / 3)
    assert base["opt2"]["CelebA-Diff"] == pytest.approx(1.0)
    for opt in ("opt1", "opt2"):
        assert ours[opt]["alpha_thr"] == pytest.approx(65.0)
        assert ours[opt]["Lookalike-Baseline"] == pytest.approx(1.0)
        assert ours[opt]["CelebA-Same+Diff"] == pytest.approx(1.0)
    assert alpha_thresholds(t1, "opt2") == {"F_baseline": pytest.approx(51.0), "F_ours": pytest.approx(65.0)}


def test_table1_missing_sets_give_null_and_nan_raises() -> None:
    t1 = table1({"F_baseline": {"CelebA-Same": SAME, "CelebA-Diff": DIFF}, "F_ours": {"CelebA-Same": SAME}})
    assert t1["separation"]["F_baseline"]["opt1"]["alpha_thr"] == pytest.approx(65.0)
    assert t1["separation"]["F_baseline"]["opt1"]["Lookalike-Baseline"] is None
    assert all(v is None for v in t1["separation"]["F_baseline"]["opt2"].values())
    assert all(v is None for opt in ("opt1", "opt2") for v in t1["separation"]["F_ours"][opt].values())
    assert table1({})["angles"]["CelebA-Same"] == {"F_baseline": None, "F_ours": None}
    with pytest.raises(ValueError, match="non-finite"):
        table1({"F_ours": {"CelebA-Diff": [80.0, float("nan")]}})


def test_table1_gaussian_sets_reproduce_the_papers_pattern() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    same, diff = rng.normal(50, 5, n), rng.normal(90, 5, n)
    angles = {"F_baseline": {"CelebA-Same": same, "CelebA-Diff": diff, "Lookalike-Baseline": np.full(n, 60.0)},
              "F_ours": {"CelebA-Same": same, "CelebA-Diff": diff, "Lookalike-Baseline": np.full(n, 95.0)}}
    t1 = table1(angles)
    base, ours = t1["separation"]["F_baseline"], t1["separation"]["F_ours"]
    assert 67.0 < base["opt1"]["alpha_thr"] < 73.0  # equal-density point of N(50, 5) and N(90, 5) is 70°
    assert base["opt1"]["CelebA-Same+Diff"] > 0.99
    assert base["opt1"]["Lookalike-Baseline"] == 0.0
    # Opt 2 must classify the 2,000 lookalikes at 60° as different: α_thr drops just below 60°.
    assert 59.0 < base["opt2"]["alpha_thr"] <= 60.0
    assert base["opt2"]["Lookalike-Baseline"] == 1.0
    assert base["opt2"]["CelebA-Same"] == pytest.approx(np.mean(same < base["opt2"]["alpha_thr"]))
    assert 0.96 < base["opt2"]["CelebA-Same"] < 0.99  # Φ(2) ≈ 0.977
    assert ours["opt2"]["alpha_thr"] == ours["opt1"]["alpha_thr"]
    assert ours["opt1"]["Lookalike-Baseline"] == 1.0
    got = {f["id"]: f["holds"] for f in findings(t1, None, None)}
    assert got["lookalike_separation"] is True and got["single_threshold"] is True and got["same_kept"] is True
    assert got["diff_collapse"] is None  # no PULSE-Pairs


def test_race_reid_on_explicit_labels() -> None:
    true = np.array([0, 0, 1, 1, 2, 6])
    pred = np.array([0, 1, 1, 1, 3, 6])
    r = race_reid(pred, true)
    assert r["n"] == 6 and r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_race"]["White"] == pytest.approx(0.5)
    assert r["per_race"]["Black"] == pytest.approx(1.0)
    assert r["per_race"]["Latino_Hispanic"] == 0.0
    assert r["per_race"]["East Asian"] is None and r["per_race_n"]["East Asian"] == 0
    assert r["per_race"]["Middle Eastern"] == pytest.approx(1.0)
    assert r["predicted_fraction"]["Black"] == pytest.approx(3 / 6)
    scores = np.eye(7)[pred] * 5.0 + 0.1
    assert race_reid(torch.tensor(scores), torch.tensor(true)) == r
    assert race_reid([], [])["accuracy"] is None
    with pytest.raises(ValueError):
        race_reid([7], [0])
    with pytest.raises(ValueError):
        race_reid([0, 1], [0])


def test_attribute_reid_on_explicit_labels() -> None:
    pred = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    true = np.array([[1, 1], [0, 1], [0, 0], [1, 1]])
    a = attribute_reid(pred, true, ["Male", "Smiling"])
    assert a["n"] == 4
    assert a["per_attribute"] == {"Male": pytest.approx(0.75), "Smiling": pytest.approx(0.5)}
    assert a["accuracy"] == pytest.approx(0.625)
    with pytest.raises(ValueError):
        attribute_reid(pred * 0.7, true, ["Male", "Smiling"])
    with pytest.raises(ValueError):
        attribute_reid(pred, true, ["Male"])


def _t2(accs) -> dict:
    return table2({s: {"accuracy": a, "n": 1000} for s, a in zip(STRATEGIES, accs)})


def test_findings_flip_with_the_numbers() -> None:
    t1 = table1(_hand_angles())
    got = {f["id"]: f["holds"] for f in findings(t1, None, None)}
    assert got["lookalike_separation"] is True  # 100% vs 33.3%
    swapped = _hand_angles()
    swapped["F_baseline"], swapped["F_ours"] = swapped["F_ours"], swapped["F_baseline"]
    assert {f["id"]: f["holds"] for f in findings(table1(swapped), None, None)}["lookalike_separation"] is False
    # F_baseline's Opt 2 costs 1/6 of CelebA-Same+Diff: the single-threshold claim fails for it.
    assert {f["id"]: f["holds"] for f in findings(table1(swapped), None, None)}["single_threshold"] is False

    shifted = _hand_angles()
    shifted["F_ours"]["CelebA-Same"] = [52.0, 62.0, 68.0]
    assert {f["id"]: f["holds"] for f in findings(table1(shifted), None, None)}["same_kept"] is False

    spread = {"F_ours": {"CelebA-Diff": [88.0, 90.0], "PULSE-Pairs": [91.0, 93.0], "Lookalike-Baseline": [93.0, 95.0]}}
    assert {f["id"]: f["holds"] for f in findings(table1(spread), None, None)}["diff_collapse"] is True  # 4° spread
    spread["F_ours"]["PULSE-Pairs"] = [80.0, 82.0]
    assert {f["id"]: f["holds"] for f in findings(table1(spread), None, None)}["diff_collapse"] is False

    race = [f for f in findings(None, _t2([0.2, 0.4, 0.5, 0.9]), None) if f["source"].endswith("Table 2")]
    assert [f["holds"] for f in race] == [True, True, True]
    race = [f for f in findings(None, _t2([0.2, 0.5, 0.4, 0.9]), None) if f["source"].endswith("Table 2")]
    assert [f["holds"] for f in race] == [True, False, True]
    assert "-10.0 points" in race[1]["evidence"]
    att = [f for f in findings(None, None, {s: a for s, a in zip(ATTRIBUTE_STRATEGIES, (0.7, 0.6, 0.8, 0.9))})
           if f["source"].endswith("Table 3")]
    assert [f["holds"] for f in att] == [False, True, True]
    assert all(f["holds"] is None for f in findings(None, None, None))


def _rows(md: str, first: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith(f"| {first} |")]


def test_markdown_puts_ours_and_paper_in_the_right_rows() -> None:
    t1 = table1(_hand_angles())
    t2 = _t2([0.25, 0.5, 0.6, 0.9])
    pred = np.array([[1, 1, 0, 1, 0], [0, 1, 0, 1, 1]])
    t3 = table3({"F_ours + L_att(a)": attribute_reid(pred, pred, PAPER_ATTRIBUTES)})
    md = render_markdown(t1, t2, t3, meta={"race_judge_accuracy_on_originals": 0.875, "generator": "tiny"})
    assert "- **race_judge_accuracy_on_originals**: 87.5%" in md
    [same] = _rows(md, "CelebA-Same")
    assert same[2:6] == ["50.0°±8.2", "51.5°±13.4", "50.0°±8.2", "51.4°±12.2"]
    assert same[-1] == "3 / 3"
    [pulse] = _rows(md, "PULSE-Pairs")
    assert pulse[2:6] == ["–", "81.3°±5.9", "–", "92.0°±5.4"]
    opt1 = _rows(md, "Opt 1")
    assert ["Opt 1", "α_thr", "65.0°", "–", "65.0°", "–"] in opt1
    assert ["Opt 1", "Lookalike-Baseline", "33.3%", "32.4%", "100.0%", "98.9%"] in opt1
    assert ["Opt 2", "CelebA-Same+Diff", "83.3%", "94.5%", "100.0%", "96.6%"] in _rows(md, "Opt 2")
    race = _rows(md, "F_ours + L_race(r)")[0]  # Table 2 comes before its per-race breakdowns
    assert race == ["F_ours + L_race(r)", "90.0%", "92.1%", "1000"]
    [att] = _rows(md, "F_ours + L_att(a)")
    assert att[:3] == ["F_ours + L_att(a)", "100.0%", "96.0%"] and att[-1] == "2"
    [l_sr3] = [r for r in _rows(md, "L_SR") if r[2] == "70.5%"]
    assert l_sr3[1] == "–"
    assert "- ✔ **F_ours separates Lookalike-Baseline" in md
    assert "- – **F_ours gives CelebA-Diff, PULSE-Pairs" in md  # no PULSE-Pairs measured
    assert "✘" not in render_markdown(t1, _t2([0.2, 0.4, 0.5, 0.9]), None)
    flipped = render_markdown(None, _t2([0.2, 0.5, 0.4, 0.9]), None)
    assert "- ✘ **Race re-identification rises from F_baseline" in flipped
    empty = render_markdown(None, None, None)
    assert "| Lookalike-Ours | yes | – | 45.7°±6.1 | – | 34.8°±3.8 | – / – |" in empty


def test_write_report_json_has_no_nan(tmp_path) -> None:
    t1 = table1(_hand_angles())
    t1["angles"]["CelebA-Same"]["F_ours"]["std"] = float("nan")
    meta = {"pairs": np.int64(3), "judge": np.float32(0.5), "bad": float("inf"), "path": tmp_path}
    doc = write_report(tmp_path / "out", t1, _t2([0.2, 0.4, 0.5, 0.9]), None, meta=meta)
    text = (tmp_path / "out" / "seed000.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert loaded == doc
    assert loaded["table1"]["angles"]["CelebA-Same"]["F_ours"]["std"] is None
    assert loaded["meta"] == {"pairs": 3, "judge": 0.5, "bad": None, "path": str(tmp_path)}
    assert loaded["paper"]["table2"]["F_ours + L_race(r)"] == PAPER["table2"]["F_ours + L_race(r)"] == 0.921
    assert [f["holds"] for f in loaded["findings"] if f["source"].endswith("Table 2")] == [True, True, True]
    md = (tmp_path / "out" / "seed000.md").read_text()
    assert md.startswith("# Seed 000") and "50.0°" in md
    assert not [p for p in (tmp_path / "out").iterdir() if "tmp" in p.name]


def test_angle_histograms_png(tmp_path) -> None:
    rng = np.random.default_rng(1)
    angles = {"F_baseline": {"CelebA-Same": rng.normal(50, 8, 300), "Lookalike-Ours": rng.normal(40, 5, 300)},
              "F_ours": {"CelebA-Diff": rng.normal(90, 5, 300)}}
    out = plot_angle_histograms(angles, tmp_path / "fig5.png", thresholds={"F_ours": 70.0}, dpi=50)
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (210, 550, 3)  # 11 × 4.2 inches at 50 dpi
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20

    def has(colour, half) -> bool:
        part = img[:, :275] if half == "left" else img[:, 275:]
        return bool((np.abs(part - np.array(colour)).max(axis=-1) < 25).any())

    purple, red = (148, 103, 189), (214, 39, 40)  # tab:purple = Lookalike-Ours, tab:red = CelebA-Diff
    assert has(purple, "left") and not has(purple, "right")
    assert has(red, "right") and not has(red, "left")


def test_sample_grid_layout_and_nearest_upscale(tmp_path) -> None:
    thumb = np.zeros((3, 2, 2), np.float32)  # 2×2 RGB thumbnail, float CHW
    thumb[0, 0, 0] = 1.0  # top-left red
    thumb[1, 0, 1] = 1.0  # top-right green
    thumb[2, 1, 0] = 1.0  # bottom-left blue
    big = np.full((6, 6, 3), 77, np.uint8)
    tensor = torch.full((3, 6, 6), 0.5)
    rows = [[thumb, big, None], [tensor, None, thumb]]
    grid = sample_grid(rows, tmp_path / "grid.png", ["I_LR", "I_GT", "F_ours + L_race"])
    gap, cell = 2, 6
    assert grid.dtype == np.uint8 and grid.shape[1] == 3 * cell + 2 * gap
    header = grid.shape[0] - (2 * cell + gap)
    assert 5 <= header <= 60
    assert grid[:header].min() < 128  # the labels are drawn
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")), grid)

    expected = np.zeros((6, 6, 3), np.uint8)
    expected[:3, :3] = (255, 0, 0)
    expected[:3, 3:] = (0, 255, 0)
    expected[3:, :3] = (0, 0, 255)
    np.testing.assert_array_equal(grid[header:header + 6, 0:6], expected)
    np.testing.assert_array_equal(grid[header + 8:header + 14, 16:22], expected)
    assert (grid[header:header + 6, 8:14] == 77).all()
    assert (grid[header:header + 6, 16:22] == 255).all()  # empty cell
    assert (grid[header + 8:header + 14, 0:6] == 128).all()  # 0.5 → 128
    assert (grid[header:, 6:8] == 255).all() and (grid[header + 6:header + 8] == 255).all()  # gaps

    scaled = sample_grid([[thumb]], tmp_path / "s.png", ["x"], scale=2)  # 2×2 → 4×4 cell
    head = scaled.shape[0] - 4
    assert scaled.shape[1] == 4
    np.testing.assert_array_equal(scaled[head:], np.repeat(np.repeat(expected[::3, ::3], 2, 0), 2, 1))
    # A label wider than its cell wraps onto more header lines.
    short = sample_grid([[big]], tmp_path / "a.png", ["x"], scale=4)
    long = sample_grid([[big]], tmp_path / "b.png", ["F_baseline + L_sim + L_race"], scale=4)
    assert long.shape[0] > short.shape[0] and long.shape[1] == short.shape[1] == 24
    with pytest.raises(ValueError):
        sample_grid([[thumb, big]], tmp_path / "bad.png", ["a"])
    with pytest.raises(ValueError):
        sample_grid([[None]], tmp_path / "bad.png", ["a"])

