"""Shared test set-up: offline W&B, no albumentations update check, one tiny synthetic world per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
for var in ("LRFACE_RUN_DIR", "LRFACE_RESUME_CKPT"):
    os.environ.pop(var, None)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The "tiny" synthetic face world in all four real layouts, generated once per test session."""
    from datamodules.synthetic import ensure_world

    root = tmp_path_factory.mktemp("world") / "tiny-0"
    return ensure_world(root, scale="tiny", seed=0)


def smoke_overrides(name: str, world: Path, run_root: Path) -> list[str]:
    """The overrides that make experiment `name` run in seconds: its own `smoke` list + tiny world + CPU."""
    from lrface.config import compose

    own = list(compose(name).smoke)
    return own + [
        f"world.root={world}", "world.scale=tiny", f"run_root={run_root}", "data.num_workers=0",
        "trainer.accelerator=cpu", "progress_bar=none",
    ]
