"""MAD's evaluation (seed 003 supp. §3–7): interpolation codes, RMSE / FD / factor verification / probe on hand-built
codes, and the report's tables and findings computed from evaluation files."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lrface.mad_evaluation import factor_probe_auc, factor_verification, random_sample_fd, reconstruction_rmse
from lrface.mad_figures import INTERPOLATION_ROWS, interpolation_codes, interpolation_grid, slerp, stack_strips
from lrface.mad_report import mad_findings, mad_tables, write_mad_report
from lrface.nets.mad import FACTORS, NORMALISED_FACTORS, Z_DIM, MADNet


def _unit_factors(n: int, gen: torch.Generator) -> torch.Tensor:
    f = torch.randn(n, Z_DIM, generator=gen)
    for name in NORMALISED_FACTORS:
        s = FACTORS[name]
        f[:, s] = nn.functional.normalize(f[:, s], dim=1)
    return f


def test_interpolation_rows_move_only_their_factors() -> None:
    gen = torch.Generator().manual_seed(0)
    f_a, f_b = _unit_factors(2, gen)
    rows = interpolation_codes(f_a, f_b, steps=10)
    assert list(rows) == list(INTERPOLATION_ROWS) and len(rows) == 9
    for row, codes in rows.items():
        assert codes.shape == (10, Z_DIM)
        torch.testing.assert_close(codes[0], f_a)  # 0 %: the source's code
        for name, s in FACTORS.items():
            moves = row == name or row == "all" or (row.startswith("all but") and row != f"all but {name}")
            if moves:
                torch.testing.assert_close(codes[-1, s], f_b[s], atol=1e-5, rtol=0)
            else:
                assert torch.equal(codes[:, s], f_a[s].expand(10, -1))
            if name in NORMALISED_FACTORS:  # slerp stays on the unit sphere E's heads produce
                torch.testing.assert_close(codes[:, s].norm(dim=1), torch.ones(10), atol=1e-5, rtol=0)
    mid = slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.5]))[0]
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))


def test_interpolation_grid_layout() -> None:
    torch.manual_seed(0)
    net = MADNet(32, (8, 8, 16, 16), (16, 8), hidden=32, ndf=8).eval()
    x = torch.rand(2, 3, 32, 32)
    grid = interpolation_grid(net, x[0], x[1], steps=5)
    assert grid.shape == (9 * 7, 3, 32, 32)
    assert torch.equal(grid[0], x[0]) and torch.equal(grid[6], x[1]) and torch.equal(grid[7], x[0])
    assert 0 <= float(grid.min()) and float(grid.max()) <= 1


class _Constant(nn.Module):
    """P(Q(x)) = a constant grey (0 in [-1, 1] = 0.5 in [0, 1]); P(z) = z's mean as a grey level."""

    input_size = 8

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def encode(self, x):
        return torch.zeros(x.shape[0], Z_DIM)

    def decode(self, z):
        return z.mean(1)[:, None, None, None].expand(-1, 3, 8, 8) + self.w


def test_reconstruction_rmse_in_pixel_units() -> None:
    images = torch.full((4, 3, 8, 8), 0.6)
    rmse = reconstruction_rmse(_Constant(), images)
    np.testing.assert_allclose(rmse, 0.1 * 255.0, rtol=1e-5)


def test_random_sample_fd_separates_distributions() -> None:
    net = _Constant()
    # P(z) is grey at 0.5 + mean(z)/2 (~N(0.5, 0.05²)); real faces at that distribution vs a brighter one
    gen = torch.Generator().manual_seed(1)
    close = (0.5 + 0.5 * torch.randn(400, generator=gen) / math.sqrt(Z_DIM))[:, None, None, None].expand(-1, 3, 8, 8)
    far = close + 0.3
    fd_close = random_sample_fd(net, close.contiguous(), n=400)
    fd_far = random_sample_fd(net, far.contiguous(), n=400)
    assert fd_close < 0.05 * fd_far
    # the 8×8 pixel features of a shift of 0.3 in all 192 values: FD ≈ 192·0.09
    assert fd_far == pytest.approx(192 * 0.09, rel=0.15)


def test_factor_verification_and_probe_read_the_right_dims() -> None:
    gen = torch.Generator().manual_seed(2)
    n_pairs = 200
    issame = np.arange(n_pairs) % 2 == 0
    f1, f2 = _unit_factors(n_pairs, gen), _unit_factors(n_pairs, gen)
    ident = FACTORS["identity"]
    f2[issame, ident] = f1[issame, ident]  # the identity factor alone says "same person"
    acc = factor_verification({"z": f1, "f": f1}, {"z": f2, "f": f2}, issame)
    assert acc["identity"] == 1.0
    assert 0.35 < acc["not_identity"] < 0.65
    # expression AUC: the class is written into f_e only
    y = torch.randint(0, 4, (600,), generator=gen)
    f = _unit_factors(600, gen)
    f[:, FACTORS["expression"].start] += 3.0 * y
    codes = {"z": f, "f": f}
    probe = factor_probe_auc({k: v[:400] for k, v in codes.items()}, y[:400].numpy(),
                             {k: v[400:] for k, v in codes.items()}, y[400:].numpy())
    assert probe["expression"]["auc"] > 0.95
    assert abs(probe["not_expression"]["auc"] - 0.5) < 0.1


def _write_eval(run: Path, fd: float, rmse: tuple[float, float], f_id: float, f_not_id: float, f_e: float,
                f_not_e: float, factors: bool = True) -> Path:
    run.mkdir(parents=True)
    results = {"reconstruction": {"rmse_train": rmse[0], "rmse_test": rmse[1]},
               "random_samples": {"fd_recognition": fd}}
    if factors:
        results["verification@average"] = {"identity": f_id, "not_identity": f_not_id, "z": 0.7}
        results["expression_probe"] = {"expression_auc": f_e, "not_expression_auc": f_not_e}
    (run / "mad_evaluation.json").write_text(json.dumps({"results": results, "figures": {}}))
    return run


def test_report_tables_and_findings(tmp_path: Path) -> None:
    from PIL import Image

    runs = {
        "ae_A": _write_eval(tmp_path / "ae_A", 40.0, (10, 12), 0, 0, 0, 0, factors=False),
        "ae_C": _write_eval(tmp_path / "ae_C", 20.0, (11, 13), 0, 0, 0, 0, factors=False),
        "C_S": _write_eval(tmp_path / "C_S", 21.0, (11, 13), 0.80, 0.60, 0.75, 0.60),
        "C_J": _write_eval(tmp_path / "C_J", 19.0, (10, 12), 0.85, 0.62, 0.80, 0.70),
        "A_S": _write_eval(tmp_path / "A_S", 41.0, (10, 12), 0.70, 0.72, 0.70, 0.65),  # f_¬id > f_id: breaks claim 1
    }
    table1 = {"A": {"ae": "ae_A", "S": "A_S"}, "C": {"ae": "ae_C", "S": "C_S", "J": "C_J"}}
    table2 = {"F": {"S": "C_S", "J": "C_J"}, "A": {"S": "A_S", "J": "missing"}}
    tables = mad_tables(runs, table1, table2)
    assert tables["table1"]["A"]["fd"] == 40.0 and "J" not in tables["table1"]["A"]
    assert tables["table1"]["C"]["J"]["rmse_test"] == 12
    assert tables["table2"]["F"]["J"]["f_not_id"] == 0.62 and list(tables["table2"]["A"]) == ["S"]
    findings = {f["claim"].split(" ")[0] + f["claim"][-25:]: f for f in mad_findings(tables)}
    holds = [f["holds"] for f in mad_findings(tables)]
    assert holds[0] is False  # A_S: f_¬id 72 > f_id 70
    assert holds[1] is True  # f_¬e < f_e everywhere
    assert holds[2] is True and holds[3] is True  # J > S on F (the only row with both)
    assert holds[4] is True  # FD 40 → 20 from A to C
    assert len(findings) == 5
    for name in ("ae_C", "C_S", "C_J"):
        for strip in ("mad_inputs.png", "mad_reconstructions.png"):
            Image.fromarray(np.full((10, 30, 3), 100, np.uint8)).save(runs[name] / strip)
    md = write_mad_report(runs, tmp_path, table1, table2, before_after=["ae_C", "C_S", "C_J"], figures="C_J")
    assert "(C) Full objective" in md and "| 85.0 | 62.0 |" in md
    assert Image.open(tmp_path / "mad_before_after.png").size == (30, 40)
    saved = json.loads((tmp_path / "mad_report.json").read_text())
    assert saved["table2"]["F"]["S"]["f_id"] == 0.8 and len(saved["findings"]) == 5


def test_report_names_a_missing_evaluation(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="mad_evaluation"):
        mad_tables({"x": tmp_path / "run"}, {"C": {"ae": "x"}}, {})


def test_stack_strips_rejects_mismatched_widths(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((4, 10, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 12, 3), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="different widths"):
        stack_strips([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "c.png")


def test_probe_fits_inside_no_grad_and_inference_mode() -> None:
    """The evaluation callback runs under no_grad (Lightning hooks may run under inference_mode): the probe still fits."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, Z_DIM, generator=gen)
    y = (x[:, 0] > 0).long()
    codes = {"z": x, "f": x}
    with torch.inference_mode():
        probe = factor_probe_auc(codes, y.numpy(), codes, y.numpy(), views=("pose",))
    assert probe["pose"]["auc"] > 0.95


# -- the pipeline ---------------------------------------------------------------------------------------------------


def test_mad_synthetic_pipeline_writes_both_tables_and_the_figures(tiny_world: Path, tmp_path: Path) -> None:
    """Every phase and every ablation row of the tables on the tiny world: each step evaluated, both tables computed
    from the steps' files, Fig. 3 stacked, the figures of row F's joint run present."""
    from PIL import Image

    from lightning_modules.runner import run
    from lrface.config import compose
    from tests.helpers import only_run_dir

    every_step = [f"world.root={tiny_world}", "world.scale=tiny", f"run_root={tmp_path}", "progress_bar=none",
                  "data.num_workers=0", "trainer.accelerator=cpu", "trainer.limit_train_batches=2",
                  "trainer.limit_val_batches=1"]
    cfg = compose("mad_synthetic", [f"run_root={tmp_path}", "pipeline_smoke=true",
                                    "pipeline_args=[" + ",".join(every_step) + "]"])
    run(cfg)
    pipeline_dir = only_run_dir(tmp_path, "mad_synthetic")
    report = json.loads((pipeline_dir / "mad_report.json").read_text())
    assert list(report["table1"]) == ["A", "B", "C"] and list(report["table2"]) == list("ABCDEF")
    for row in report["table1"].values():
        assert row["fd_space"] == "fd_recognition" and math.isfinite(row["fd"]) and row["fd"] > 0
        assert set(row) >= {"S", "J"} and 0 < row["S"]["rmse_test"] < 255
        assert 0 <= row["J"]["f_id"] <= 1 and 0 <= row["J"]["f_e"] <= 1
    for row in report["table2"].values():
        assert all(0 <= row[m][k] <= 1 for m in ("S", "J") for k in ("f_id", "f_not_id", "f_e", "f_not_e"))
    assert len(report["findings"]) == 5 and all(f["holds"] in (True, False) for f in report["findings"])
    steps = {s["step"]: Path(s["run_dir"]) for s in json.loads((pipeline_dir / "pipeline.json").read_text())["steps"]}
    assert len(steps) == 20
    # S leaves Q and P alone: its reconstructions are the autoencoder's exactly, J's are not
    ae, s_run, j_run = (json.loads((steps[k] / "mad_evaluation.json").read_text())["results"]["reconstruction"]
                        for k in ("ae_C", "C_S", "C_J"))
    assert ae == s_run and j_run != s_run
    width, height = Image.open(steps["C_J"] / "mad_inputs.png").size
    assert Image.open(pipeline_dir / "mad_before_after.png").size == (width, 4 * height)
    for name in ("mad_tsne.png", "mad_interpolations_0.png", "mad_samples.png", "mad_reconstructions_disentangled.png"):
        assert (steps["C_J"] / name).stat().st_size > 500, name
    assert not (steps["ae_C"] / "mad_tsne.png").exists()  # E is untrained after phase ae: no factor figures


def test_evaluation_callback_logs_numbers_and_figures(tiny_world: Path, tmp_path: Path) -> None:
    """on_fit_end of a disentanglement run: mad_evaluation.json / .md, every figure, and the same numbers and PNGs
    handed to the loggers (W&B's log_metrics / log_image)."""
    from types import SimpleNamespace

    from lrface.config import compose, instantiate
    from tests.conftest import smoke_overrides

    cfg = compose("mad_phase_synthetic", smoke_overrides("mad_phase_synthetic", tiny_world, tmp_path)
                  + ["module.phase=joint"])
    module = instantiate(cfg.module)
    callback = instantiate(cfg.callbacks.mad_evaluation)

    class Recorder:
        metrics: dict = {}
        images: dict = {}

        def log_metrics(self, metrics, step=None):
            self.metrics.update(metrics)

        def log_image(self, key, images):
            self.images[key] = images

    recorder = Recorder()
    trainer = SimpleNamespace(is_global_zero=True, interrupted=False, default_root_dir=str(tmp_path),
                              loggers=[recorder], global_step=7)
    module.train()
    callback.on_fit_end(trainer, module)
    assert module.training  # the module is handed back in its training mode
    saved = json.loads((tmp_path / "mad_evaluation.json").read_text())
    assert set(saved["results"]) == {"reconstruction", "random_samples", "verification@lfw", "verification@cfp_fp",
                                     "verification@agedb_30", "verification@average", "expression_probe"}
    assert 0 < recorder.metrics["mad/reconstruction/rmse_test"] < 255
    assert recorder.metrics["mad/verification@average/identity"] == saved["results"]["verification@average"]["identity"]
    assert set(recorder.images) == {f"mad/{name}" for name in saved["figures"]}
    assert {"mad/mad_tsne", "mad/mad_interpolations_0", "mad/mad_samples"} <= set(recorder.images)
    assert "| expression_probe | z_auc |" in (tmp_path / "mad_evaluation.md").read_text()


def test_cli_mad_evaluate_reruns_a_finished_run(tiny_world: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from lightning_modules.runner import run
    from lrface.cli import main
    from lrface.config import compose
    from tests.conftest import smoke_overrides
    from tests.helpers import only_run_dir

    run(compose("mad_phase_synthetic", smoke_overrides("mad_phase_synthetic", tiny_world, tmp_path)
                + ["module.phase=joint", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   "trainer.limit_val_batches=1"]))
    run_dir = only_run_dir(tmp_path, "mad_phase_synthetic")
    first = json.loads((run_dir / "mad_evaluation.json").read_text())["results"]
    assert {"z_auc", "pixels16_auc", "expression_auc", "not_expression_auc"} <= set(first["expression_probe"])
    width = Image.open(run_dir / "mad_inputs.png").size[0]
    assert main(["mad-evaluate", str(run_dir), "callbacks.mad_evaluation.n_figure=3"]) == 0
    again = json.loads((run_dir / "mad_evaluation.json").read_text())["results"]
    assert again["reconstruction"] == first["reconstruction"]  # same weights, same faces: same numbers
    assert Image.open(run_dir / "mad_inputs.png").size[0] == 3 * (width - 2) // 4 + 2  # 3 faces instead of 4
    assert "| verification@average | identity |" in capsys.readouterr().out
    assert main(["mad-evaluate", str(tmp_path / "nowhere")]) == 2
