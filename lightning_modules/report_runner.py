"""``stage: report``: an experiment that trains nothing and runs one report callable (e.g. the real-photo checks).

The experiment's ``report`` node is ``{_target_: callable, **kwargs}``; it is called as ``f(out_dir=<run dir>,
**kwargs)`` and returns its scalar metrics, which go to ``results.json`` / ``results.md`` like any run's. The run
directory gets the resolved ``config.yaml`` first, so a report that fails half-way still says what it was asked.
Reports run in one process (no Trainer, no DDP); ``lrface run NAME`` dispatches here from
:func:`lightning_modules.runner.run` when ``stage`` is ``report``.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.atomic_checkpoint import atomic_write_text
from lrface.config import instantiate

log = logging.getLogger("lrface")


def run_report(cfg: DictConfig) -> dict[str, float]:
    """Runs ``cfg.report`` into a new run directory ``<run_root>/<name>/<timestamp>``; returns its metrics."""
    from lightning_modules.runner import _new_run_dir, print_results, write_results

    report = cfg.get("report")
    if not isinstance(report, DictConfig) or "_target_" not in report:
        raise ValueError(f"experiment {cfg.name}: stage 'report' needs report: {{_target_: dotted.callable, ...}} "
                         f"(called with out_dir=<run dir>); got {report!r}")
    run_dir = _new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    log.info("run directory: %s", run_dir)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    metrics = instantiate(report, out_dir=run_dir)
    if not isinstance(metrics, Mapping):
        raise TypeError(f"report {report._target_} returned {type(metrics).__name__}; expected {{metric: value}}")
    metrics = {str(k): float(v) for k, v in metrics.items()}
    write_results(run_dir, metrics)
    print_results(f"{cfg.name} — {run_dir}", metrics)
    return metrics
