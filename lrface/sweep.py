"""W&B sweeps over experiment configs (``make sweep NAME=...`` / ``lrface sweep NAME``).

A sweep file ``experiments/sweeps/<name>.yaml`` is a W&B sweep configuration plus one key of ours, ``experiment``:
the experiment it sweeps. Parameters are dotted config paths (``module.lr``); the agent renders them as
``module.lr=0.001`` through ``${args_no_hyphens}``, which is exactly our command-line override syntax, so every rank of
a DDP run receives them in argv. Before anything is sent to W&B, each parameter is checked against the experiment's
struct config, so a misspelled key fails here and not in a hundred agent runs.

Sweeps need a W&B server (wandb.ai or self-hosted) to choose the next parameters: in offline or disabled mode they
cannot run, and :func:`check_online` says so instead of failing inside wandb.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lrface.config import EXPERIMENTS_DIR, ConfigError, compose

DEFAULT_COMMAND = ["${env}", "${interpreter}", "-m", "lrface.cli", "run", "{experiment}", "${args_no_hyphens}"]


class SweepUnavailable(RuntimeError):
    """W&B sweeps cannot run in this environment (offline, disabled, or no credentials)."""


def load_sweep(name: str, experiments_dir: Path | None = None) -> dict[str, Any]:
    """Reads ``experiments/sweeps/<name>.yaml`` → a plain W&B sweep config with our ``command`` filled in."""
    root = Path(experiments_dir or EXPERIMENTS_DIR) / "sweeps"
    path = Path(name) if Path(name).suffix in (".yaml", ".yml") else root / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in root.glob("*.yaml"))
        raise ConfigError(f"no sweep {name!r}: {path} does not exist. Sweeps: {', '.join(known) or 'none'}")
    sweep = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for key in ("experiment", "method", "parameters", "metric"):
        if key not in sweep:
            raise ConfigError(f"{path}: missing required key {key!r}")
    experiment = sweep.pop("experiment")
    sweep.setdefault("name", path.stem)
    sweep.setdefault("program", "lrface.cli")
    sweep.setdefault("command", [part.replace("{experiment}", experiment) for part in DEFAULT_COMMAND])
    sweep["_experiment"] = experiment
    return sweep


def sample_overrides(parameters: dict[str, Any]) -> list[str]:
    """One representative override per parameter (its first value / min), as the agent would render it."""
    out = []
    for key, spec in parameters.items():
        if "values" in spec:
            value = spec["values"][0]
        elif "value" in spec:
            value = spec["value"]
        elif "min" in spec:
            value = spec["min"]
        else:
            raise ConfigError(f"sweep parameter {key!r}: no values/value/min to sample from: {spec}")
        out.append(f"{key}={'null' if value is None else value}")
    return out


def validate(sweep: dict[str, Any], experiments_dir: Path | None = None) -> None:
    """Composes the experiment with each parameter set to a sample value: unknown keys fail with a hint."""
    compose(sweep["_experiment"], sample_overrides(sweep["parameters"]), experiments_dir)


def check_online() -> None:
    mode = os.environ.get("WANDB_MODE", "online")
    if mode in ("offline", "dryrun", "disabled"):
        raise SweepUnavailable(
            f"W&B sweeps need a W&B server to pick the next parameters, but WANDB_MODE={mode}. Run "
            "`wandb login` (or set WANDB_API_KEY, and WANDB_BASE_URL for a self-hosted server), then "
            "`make sweep NAME=... WANDB_MODE=online`. Single runs work offline; sweeps do not.")
    import wandb

    if not (os.environ.get("WANDB_API_KEY") or wandb.api.api_key):
        raise SweepUnavailable("W&B sweeps need a W&B server and credentials: run `wandb login` or set "
                               "WANDB_API_KEY (and WANDB_BASE_URL for a self-hosted server).")


def create_and_run(name: str, count: int | None = None, project: str | None = None, entity: str | None = None) -> str:
    """Validates the sweep, creates it on the server and runs an agent in this process's environment."""
    sweep = load_sweep(name)
    validate(sweep)
    check_online()
    import subprocess

    import wandb

    cfg = compose(sweep["_experiment"])
    body = {k: v for k, v in sweep.items() if not k.startswith("_")}
    sweep_id = wandb.sweep(body, project=project or cfg.logger.project, entity=entity or cfg.logger.entity)
    path = "/".join(p for p in (entity or cfg.logger.entity, project or cfg.logger.project, sweep_id) if p)
    print(f"sweep {path}; more agents: wandb agent {path}", file=sys.stderr)
    agent = ["wandb", "agent", *(["--count", str(count)] if count else []), path]
    subprocess.run(agent, check=True)
    return sweep_id
