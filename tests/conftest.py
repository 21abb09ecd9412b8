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
    world = ensure_world(root, scale="tiny", seed=0)
    write_tiny_stylegan2(Path(world) / TINY_GENERATOR)
    write_tiny_feature_extractor(Path(world) / TINY_FEATURES)
    write_tiny_trunk(Path(world) / TINY_TRUNK, Path(world) / "ms1m" / "property")
    write_tiny_trunk(Path(world) / TINY_SURVFACE_TRUNK, Path(world) / "qmul_survface" / "training_set")
    write_tiny_mrgan(Path(world) / TINY_MRGAN)
    for task, rel in TINY_JUDGES.items():
        write_tiny_judge(Path(world) / rel, task)
    return world


# A random 32 px StyleGAN2 in rosinality's checkpoint layout, written into the tiny world: experiments whose real
# generator cannot ship (pulse_ffhq's official 1024 px weights) point their `smoke` overrides at it.
TINY_GENERATOR = "weights/stylegan2_tiny.pt"
TINY_GENERATOR_KWARGS = {"size": 32, "style_dim": 32, "n_mlp": 2, "channels": {4: 32, 8: 32, 16: 16, 32: 8}}


def write_tiny_stylegan2(path: Path, seed: int = 0) -> Path:
    import torch

    from lrface.nets.stylegan2 import StyleGAN2Generator

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator = StyleGAN2Generator(**TINY_GENERATOR_KWARGS)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"g_ema": generator.state_dict()}, path)
    return path


def smoke_overrides(name: str, world: Path, run_root: Path) -> list[str]:
    """The overrides that make experiment `name` run in seconds: its own `smoke` list + tiny world + CPU."""
    from omegaconf import OmegaConf

    from lrface.config import compose

    # unresolved, so an entry like `module.generator=${world.root}/...` follows the world.root set below
    own = OmegaConf.to_container(compose(name).smoke, resolve=False)
    return own + [
        f"world.root={world}", "world.scale=tiny", f"run_root={run_root}", "data.num_workers=0",
        "trainer.accelerator=cpu", "progress_bar=none",
    ]


@pytest.fixture(autouse=True)
def _fresh_rendezvous():
    """Lightning's ddp_spawn exports MASTER_PORT into this process; the next DDP test would reuse a port still held
    by the last one (EADDRINUSE), so every test starts without the rendezvous variables."""
    yield
    for var in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        os.environ.pop(var, None)


# A random tiny F (IResNet + race / attribute heads) as a FeatureExtractorModule run directory: config.yaml (the
# architecture, as the runner writes it) + checkpoints/last.ckpt, so `lrface.weights.load_feature_extractor` reads it
# as it reads a real run. Experiments that need a trained F (seed000_eval_synthetic) point their `smoke` at it.
TINY_FEATURES = "weights/features_tiny/checkpoints/last.ckpt"
TINY_BACKBONE = {"name": "r18", "widths": [8, 8, 16, 16], "num_features": 32, "input_size": 32}


def write_tiny_feature_extractor(path: Path, seed: int = 0) -> Path:
    import torch
    from omegaconf import OmegaConf

    from lrface.io import atomic_write_text
    from lrface.nets.iresnet import get_model

    kwargs = {k: v for k, v in TINY_BACKBONE.items() if k != "name"}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = get_model(TINY_BACKBONE["name"], **kwargs)
        race, attr = torch.nn.Linear(32, 7), torch.nn.Linear(32, 40)
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    state.update({f"race_classifier.{k}": v for k, v in race.state_dict().items()})
    state.update({f"attribute_classifier.{k}": v for k, v in attr.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, path)
    backbone = {"_target_": "lrface.nets.iresnet.get_model", **TINY_BACKBONE}
    atomic_write_text(path.parent.parent / "config.yaml", OmegaConf.to_yaml({"module": {"backbone": backbone}}))
    return path


# A random tiny BTNet trunk at 112 px (TNet) with a CurricularFace head over the tiny world's MS1M identities, as a
# FeatureExtractorModule checkpoint: the BTNet branch experiments' `smoke` points `module.trunk` at it.
TINY_TRUNK = "weights/btnet_trunk_tiny/checkpoints/last.ckpt"
TINY_SURVFACE_TRUNK = "weights/btnet_trunk_survface_tiny/checkpoints/last.ckpt"


def write_tiny_trunk(path: Path, classes_from: Path, seed: int = 0) -> Path:
    """``classes_from``: an MS1M ``property`` file or a SurvFace ``training_set`` folder (one per identity)."""
    import torch

    from lrface.nets.iresnet import get_model

    if classes_from.is_dir():
        num_classes = sum(1 for p in classes_from.iterdir() if p.is_dir())
    else:
        num_classes = int(classes_from.read_text().split(",")[0])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = get_model("r18", widths=(8, 8, 16, 16), num_features=32)
        head = torch.nn.functional.normalize(torch.randn(num_classes, 32), dim=1)
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    state["head.weight"] = head
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, path)
    return path


# Random tiny judges (JudgeModule checkpoints) for the Table 2 / 3 smoke runs.
TINY_JUDGES = {"race": "weights/judge_race_tiny.ckpt", "attributes": "weights/judge_attributes_tiny.ckpt"}


def write_tiny_judge(path: Path, task: str, seed: int = 0) -> Path:
    import torch

    from lightning_modules.judge import JudgeModule

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = JudgeModule(task=task, arch="resnet10t", input_size=32,
                             timm_kwargs={"channels": [8, 8, 16, 16], "stem_width": 8})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


# A random tiny MR-GAN generator in the export layout of MRGANModule ({"config", "state_dict"}), written into the tiny
# world: RAN's LR-model and adaption smoke runs read it where a trained mrgan_synthetic run would be.
TINY_MRGAN = "weights/mrgan_tiny.pt"
TINY_MRGAN_CONFIG = {"image_size": 112, "global_channels": [8, 8, 16, 16], "blocks": 1, "lr_sizes": [16, 24, 32],
                     "local_channels": 8, "local_res_blocks": 1}


def write_tiny_mrgan(path: Path, seed: int = 0) -> Path:
    import torch

    from lrface.nets.mrgan import MRGANGenerator

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        generator = MRGANGenerator(**TINY_MRGAN_CONFIG)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": generator.config, "state_dict": generator.state_dict()}, path)
    return path
