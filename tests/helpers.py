"""Test-only building blocks (importable by subprocess runs started from the project root)."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parent.parent
REAL_PHOTOS, MTCNN_WEIGHTS = ROOT / "data" / "real_photos", ROOT / "weights" / "mtcnn"


def real_photo_marks(packages: tuple[str, ...]) -> list:
    """skipif marks for tests on the real photos: the packages (the judges extra's), the photos, MTCNN's weights."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    return [
        pytest.mark.skipif(bool(missing), reason=f"the judges extra is not installed (missing {missing}): make setup"),
        pytest.mark.skipif(not (REAL_PHOTOS / "PROVENANCE.txt").is_file(),
                           reason="no real photos: `lrface weights real-photos`"),
        pytest.mark.skipif(not (MTCNN_WEIGHTS / "onet.pt").is_file(), reason="no MTCNN weights: make setup"),
    ]


class SlowDown(pl.Callback):
    """Sleeps after every training batch so a test can kill a run at a known point."""

    def __init__(self, seconds: float = 0.2):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)


def only_run_dir(run_root: Path, name: str) -> Path:
    runs = [p for p in (run_root / name).iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run directory, found {runs}"
    return runs[0]


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


class RankParameterSums(pl.Callback):
    """At the end of training each rank writes ``rank<r>.json``: {top-level submodule: sum of its parameters} — the
    test compares ranks, which DDP must have kept identical."""

    def __init__(self, out: str):
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        sums: dict[str, float] = {}
        for name, p in pl_module.named_parameters():
            key = name.split(".")[0]
            sums[key] = sums.get(key, 0.0) + float(p.detach().double().sum())
        Path(self.out).mkdir(parents=True, exist_ok=True)
        (Path(self.out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(sums))
