"""The cross-model comparison table (from evaluation.json files) and the pipeline_report hook."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrface.recognition_table import (
    Column,
    collect_evaluations,
    comparison_table,
    confidence_table,
    default_columns,
    write_comparison,
)

SURVFACE = {"verification/auc": 0.7512, "verification/tar@far=0.3": 0.5, "verification/tar@far=0.1": 0.2525,
            "identification/tpir20@fpir=0.1": 0.125, "identification/auc": 0.3333, "identification/rank1": 0.5,
            "identification/rank5": 0.875}
ARCFACE = {"lfw": {"accuracy": 0.9912, "accuracy_std": 0.01}, "lfw@14px": {"accuracy": 0.8},
           "cfp_fp": {"accuracy": 0.95}, "qmul_survface": SURVFACE}
URL = {"lfw": {"accuracy": 0.99, "url/accuracy": 0.9925, "confidence/mean_s": 60.0, "confidence/mean_log_s": 4.0},
       "lfw@7px": {"accuracy": 0.6, "url/accuracy": 0.65, "confidence/mean_s": 20.0, "confidence/mean_log_s": 2.75},
       "lfw@14px": {"accuracy": 0.85, "url/accuracy": 0.87, "confidence/mean_s": 30.0, "confidence/mean_log_s": 3.5},
       "qmul_survface": {"verification/auc": 0.7, "url/verification/auc": 0.72, "identification/rank1": 0.25}}


def _runs(tmp_path: Path) -> dict[str, Path]:
    runs = {}
    for name, evaluation in (("arcface", ARCFACE), ("url", URL)):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "evaluation.json").write_text(json.dumps(evaluation))
    runs["judge"] = tmp_path / "judge"  # a step without an evaluation
    runs["judge"].mkdir()
    return runs


def test_table_from_two_evaluations(tmp_path: Path) -> None:
    results = collect_evaluations(_runs(tmp_path))
    assert list(results) == ["arcface", "url"] and results["url"] == URL
    assert [c.header for c in default_columns(results)] == [
        "lfw", "lfw@14px", "lfw@7px", "cfp_fp", "SF 1:1 AUC", "SF TAR@FAR=0.1", "SF TPIR20@FPIR=0.1", "SF 1:N AUC",
        "SF rank-1", "SF rank-5"]
    lines = comparison_table(results).splitlines()
    assert lines[0] == ("| model | lfw | lfw@14px | lfw@7px | cfp_fp | SF 1:1 AUC | SF TAR@FAR=0.1 | SF TPIR20@FPIR=0.1 "
                        "| SF 1:N AUC | SF rank-1 | SF rank-5 |")
    assert lines[1] == "|---|" + "---:|" * 10
    assert lines[2] == "| arcface | 99.12 | 80.00 | – | 95.00 | 75.12 | 25.25 | 12.50 | 33.33 | 50.00 | 87.50 |"
    assert lines[3] == ("| url | 99.00 / 99.25 | 85.00 / 87.00 | 60.00 / 65.00 | – | 70.00 / 72.00 | – | – | – | 25.00 "
                        "| – |")
    # explicit columns: strings, tuples and Column objects
    custom = comparison_table(results, ["cfp_fp", ("AUC", "qmul_survface", "verification/auc"),
                                        Column("r1", "qmul_survface", "identification/rank1")])
    assert custom.splitlines()[2:] == ["| arcface | 95.00 | 75.12 | 50.00 |", "| url | – | 70.00 / 72.00 | 25.00 |"]
    conf = confidence_table(results).splitlines()
    assert conf[0] == "| model | lfw | lfw@7px | lfw@14px |"
    assert conf[2] == "| url | 60 | 20 (-1.25) | 30 (-0.50) |"
    assert confidence_table({"arcface": ARCFACE}) == ""


def test_bad_evaluation_files_are_named(tmp_path: Path) -> None:
    runs = _runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="judge"):
        collect_evaluations(runs, missing="error")
    (tmp_path / "url" / "evaluation.json").write_text('{"lfw": {"accuracy": "high"}}')
    with pytest.raises(ValueError, match=r"url/evaluation.json: lfw/accuracy is 'high'"):
        collect_evaluations(runs)
    (tmp_path / "url" / "evaluation.json").write_text('{"lfw": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        collect_evaluations(runs)


def test_write_comparison(tmp_path: Path, capsys) -> None:
    md = write_comparison(_runs(tmp_path), tmp_path / "out")
    assert (tmp_path / "out" / "comparison.md").read_text() == md and "| url | 99.00 / 99.25 |" in capsys.readouterr().out
    assert "## URL: mean confidence" in md
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert saved["table"]["url"]["lfw@7px"] == {"cosine": 0.6, "url": 0.65}
    assert saved["table"]["arcface"]["lfw@7px"] == {"cosine": None, "url": None}
    assert saved["evaluations"]["arcface"] == ARCFACE and set(saved["runs"]) == {"arcface", "url", "judge"}


def test_pipeline_report_hook_after_two_steps(tiny_world: Path, tmp_path: Path) -> None:
    """Two tiny ArcFace runs as a pipeline with `pipeline_report`: the comparison of both is written into the
    pipeline's run directory, with the numbers of each step's evaluation.json."""
    from lightning_modules.runner import run
    from lrface.config import compose

    lfw = tiny_world / "ms1m" / "lfw.bin"
    every_step = [f"world.root={tiny_world}", "world.scale=tiny", f"run_root={tmp_path}", "progress_bar=none",
                  "data.num_workers=0", "trainer.accelerator=cpu", "trainer.max_steps=1", "data.val_sets=[]",
                  "module.backbone.widths=[8,16,16,32]", "module.backbone.num_features=32",
                  "checkpoint.monitor=null", f"callbacks.evaluation.bins=[{lfw}]",
                  "callbacks.evaluation.degrade_to=[8]"]
    experiment = tmp_path / "two_arcfaces.yaml"
    experiment.write_text(
        "base: [defaults.yaml]\n"
        "pipeline:\n"
        "  arcface:\n    experiment: arcface_synthetic\n"
        "  arcface_seed1:\n    experiment: arcface_synthetic\n    args: [seed=1]\n"
        f"pipeline_args: {json.dumps(every_step)}\n"
        "pipeline_report:\n  _target_: lrface.recognition_table.write_comparison\n"
        "  columns: [lfw, lfw@8px, 'qmul_survface:identification/rank1']\n")
    cfg = compose(str(experiment), [f"run_root={tmp_path}", "pipeline_smoke=true"])
    run(cfg)
    (pipeline_dir,) = (tmp_path / "two_arcfaces").iterdir()
    steps = {s["step"]: Path(s["run_dir"]) for s in json.loads((pipeline_dir / "pipeline.json").read_text())["steps"]}
    assert list(steps) == ["arcface", "arcface_seed1"] and steps["arcface"] != steps["arcface_seed1"]
    md = (pipeline_dir / "comparison.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| arcface")]
    assert len(rows) == 2 and rows[0].split(" | ")[1:] != rows[1].split(" | ")[1:]  # two seeds, two results
    for row, step in zip(rows, steps.values()):
        evaluation = json.loads((step / "evaluation.json").read_text())
        want = [f"{100 * evaluation[s]['accuracy']:.2f}" for s in ("lfw", "lfw@8px")]
        want.append(f"{100 * evaluation['qmul_survface']['identification/rank1']:.2f}")
        assert row.split(" | ")[1:] == [*want[:2], want[2] + " |"]
    saved = json.loads((pipeline_dir / "comparison.json").read_text())
    assert saved["runs"] == {k: str(v) for k, v in steps.items()}
