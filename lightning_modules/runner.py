"""Runs one composed experiment: run directory, resume, seeds, data + module + Trainer from config, results.

``lrface run NAME`` (and ``make experiment NAME=...``) end here. Every DDP rank executes this module: Lightning's
``ddp`` strategy re-launches the same command line for ranks > 0, SLURM's ``srun`` and ``torchrun`` start one process
per rank. So anything chosen at start-up that must be shared (the run directory, the checkpoint to resume from) is
chosen once by the launching process and handed to the others in environment variables, never re-derived per rank.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import WandbLogger

from callbacks.atomic_checkpoint import AtomicCheckpointIO, atomic_write_text
from callbacks.final_checkpoint import FinalCheckpoint
from callbacks.history import RunHistory, scalar_metrics
from callbacks.throughput import ThroughputMonitor
from lrface.config import instantiate

log = logging.getLogger("lrface")

RUN_DIR_ENV = "LRFACE_RUN_DIR"
RESUME_ENV = "LRFACE_RESUME_CKPT"
RESULTS_FILE = "results.json"
# cfg.stage: trainer.fit, trainer.predict (e.g. PULSE upscaling over a DataModule), or a report callable that trains
# nothing (lightning_modules/report_runner.py)
STAGES = ("fit", "predict", "report")


def _world_size_from_env() -> int:
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 1


def _comparable(cfg: DictConfig | dict) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for key in ("resume", "logger", "progress_bar"):  # how a run is watched does not change what it computes
        container.pop(key, None)
    return container


def _finished(run_dir: Path) -> bool:
    return (run_dir / RESULTS_FILE).exists()


def find_auto_resume(cfg: DictConfig) -> tuple[Path, Path] | None:
    """The newest unfinished run of this experiment with a ``last.ckpt`` and the same config, if any.

    A finished run (it wrote ``results.json``) is not resumed: ``make experiment`` twice gives two runs. A run with a
    different config (other overrides) is not resumed either: continuing it would silently ignore the new settings.
    """
    exp_dir = Path(cfg.run_root) / cfg.name
    if not exp_dir.is_dir():
        return None
    wanted = _comparable(cfg)
    for run_dir in sorted((p for p in exp_dir.iterdir() if p.is_dir()), reverse=True):
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if not ckpt.exists() or _finished(run_dir):
            continue
        saved = run_dir / "config.yaml"
        if saved.exists() and _comparable(OmegaConf.load(saved)) == wanted:
            return run_dir, ckpt
        log.info("not resuming %s: its config differs from this one", run_dir)
    return None


def _new_run_dir(cfg: DictConfig) -> Path:
    exp_dir = Path(cfg.run_root) / cfg.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir, i = exp_dir / stamp, 1
    while run_dir.exists():
        run_dir, i = exp_dir / f"{stamp}-{i}", i + 1
    return run_dir


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """Chooses (run directory, checkpoint to resume from) once, and exports both for the other ranks.

    Order: an inherited ``LRFACE_RUN_DIR`` (DDP children, SLURM scripts written by ``lrface slurm``); a cluster job id
    (``SLURM_JOB_ID``, ``TORCHELASTIC_RUN_ID``) that every rank sees alike; otherwise the launching process decides from
    ``resume``: ``auto`` (newest unfinished matching run, else new), ``never`` (new), or a path (a run directory or a
    checkpoint file).
    """
    resume = "auto" if cfg.resume in (None, "") else str(cfg.resume)
    if os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])
        # set (possibly empty) by the launching process for its DDP children: its decision stands; absent (a SLURM
        # script, a requeued job, a user) → continue the directory's own last.ckpt
        ckpt = os.environ.get(RESUME_ENV) or None
        if RESUME_ENV not in os.environ and resume != "never":
            last = run_dir / "checkpoints" / "last.ckpt"
            ckpt = last if last.exists() and not _finished(run_dir) else None
        return run_dir, Path(ckpt) if ckpt else None

    ckpt: Path | None = None
    if resume not in ("auto", "never"):
        given = Path(resume)
        if given.is_dir():
            run_dir, ckpt = given, given / "checkpoints" / "last.ckpt"
        else:
            ckpt = given
            run_dir = given.parent.parent if given.parent.name == "checkpoints" else _new_run_dir(cfg)
        if not ckpt.exists():
            raise FileNotFoundError(f"resume={resume}: no checkpoint at {ckpt}")
    elif _world_size_from_env() > 1:  # torchrun / srun started every rank at once: derive, don't choose
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if job == "none":
            raise RuntimeError(f"several ranks were started without {RUN_DIR_ENV}: set it to the same directory on "
                               "every node (or use `lrface slurm`, which does)")
        run_dir = Path(cfg.run_root) / cfg.name / f"job-{job}"
        last = run_dir / "checkpoints" / "last.ckpt"
        ckpt = last if resume == "auto" and last.exists() and not _finished(run_dir) else None
    else:
        found = find_auto_resume(cfg) if resume == "auto" else None
        run_dir, ckpt = found if found else (_new_run_dir(cfg), None)

    os.environ[RUN_DIR_ENV] = str(run_dir)
    os.environ[RESUME_ENV] = str(ckpt) if ckpt else ""
    return run_dir, ckpt


def wandb_run_id(run_dir: Path) -> str:
    """The W&B id of a run directory: a resumed run continues the same W&B run. A sweep agent's id wins."""
    if os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{run_dir.parent.name}-{run_dir.name}-{digest}")


def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks: list[pl.Callback] = ()) -> pl.Trainer:
    """The Trainer from ``cfg.trainer`` plus the suite's callbacks, loggers and atomic checkpoint I/O."""
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    devices, num_nodes = tcfg.get("devices", 1), tcfg.get("num_nodes", 1)
    many = (isinstance(devices, int) and devices > 1) or (isinstance(devices, (list, tuple)) and len(devices) > 1)
    if tcfg.get("strategy") in (None, "auto") and (many or num_nodes > 1):
        tcfg["strategy"] = "ddp"

    ck = cfg.checkpoint
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best-{epoch}-{step}",
            monitor=ck.monitor,
            mode=ck.mode,
            save_top_k=ck.save_top_k if ck.monitor else 0,
            save_last=True,
            every_n_train_steps=ck.every_n_train_steps,
            auto_insert_metric_name=False,
        ),
        FinalCheckpoint(run_dir / "checkpoints" / "last.ckpt"),
        ThroughputMonitor(),
        RunHistory(run_dir / "history.jsonl"),
    ]
    bar = cfg.progress_bar
    if bar == "rich" or (bar == "auto" and sys.stdout.isatty()):
        callbacks.append(RichProgressBar())
        tcfg["enable_progress_bar"] = True
    else:
        tcfg["enable_progress_bar"] = bar == "tqdm"
    callbacks += [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None]
    callbacks += list(extra_callbacks)

    logger = False
    if cfg.logger is not None and cfg.logger.mode != "disabled":
        logger = WandbLogger(
            project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group,
            tags=list(cfg.logger.tags or []), name=f"{cfg.name}/{run_dir.name}", id=wandb_run_id(run_dir),
            save_dir=str(run_dir), mode=cfg.logger.mode, resume="allow",
        )
    return pl.Trainer(**tcfg, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()],
                      default_root_dir=str(run_dir))


def prepare_world(cfg: DictConfig) -> None:
    """Generates the synthetic face world on first use (every rank calls this; a file lock lets one write it)."""
    if cfg.get("world") is None:
        return
    from datamodules.synthetic import ensure_world

    ensure_world(cfg.world.root, scale=cfg.world.scale, seed=cfg.world.seed)


def write_results(run_dir: Path, metrics: dict[str, float], extra: dict[str, Any] | None = None) -> str:
    """Writes ``results.json`` and ``results.md`` (atomically) and returns the Markdown table."""
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()))
    md = f"# Results: {run_dir.parent.name} / {run_dir.name}\n\n| metric | value |\n|---|---|\n{rows}\n"
    atomic_write_text(run_dir / "results.md", md)
    atomic_write_text(run_dir / RESULTS_FILE, json.dumps({"metrics": metrics, **(extra or {})}, indent=2) + "\n")
    return md


def print_results(title: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(metrics.items()):
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


def print_evaluation(evaluation: dict[str, dict[str, float]]) -> None:
    """One table per group of sets that share their metrics (rows: sets, columns: metrics)."""
    from rich.console import Console
    from rich.table import Table

    groups: dict[tuple[str, ...], list[str]] = {}
    for name, values in evaluation.items():
        groups.setdefault(tuple(values), []).append(name)
    for columns, names in groups.items():
        table = Table(title="evaluation")
        if len(columns) <= 8:  # sets as rows
            table.add_column("set")
            for col in columns:
                table.add_column(col, justify="right")
            for name in names:
                table.add_row(name, *(f"{evaluation[name][c]:.4f}" for c in columns))
        else:  # many metrics (QMUL-SurvFace): metrics as rows, so the names stay readable
            table.add_column("metric")
            for name in names:
                table.add_column(name, justify="right")
            for col in columns:
                table.add_row(col, *(f"{evaluation[name][col]:.4f}" for name in names))
        Console(width=120).print(table)


def run(cfg: DictConfig) -> dict[str, float]:
    """Trains (or resumes) the experiment in ``cfg`` — or, with ``stage: predict``, runs ``trainer.predict`` over its
    DataModule — and returns its final metrics (rank 0; {} elsewhere)."""
    inherited = {var: os.environ.get(var) for var in (RUN_DIR_ENV, RESUME_ENV)}
    try:
        return _run(cfg)
    finally:  # a second run in the same process (tests, notebooks) must choose its own directory
        for var, value in inherited.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _run(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("pipeline"):
        return run_pipeline(cfg)
    stage = cfg.get("stage") or "fit"
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage == "report":
        from lightning_modules.report_runner import run_report

        return run_report(cfg)
    run_dir, ckpt = resolve_run_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    prepare_world(cfg)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.module)
    trainer = build_trainer(cfg, run_dir)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        log.info("run directory: %s%s", run_dir, f" (resuming {ckpt})" if ckpt else "")
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)

    predict = stage == "predict"
    if predict:
        # prediction modules (PulseSearchModule) hold no trained state: nothing to resume from
        trainer.predict(module, datamodule=datamodule, return_predictions=False)
    else:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)

    # prediction writers (PulseWriter) publish their summary as `<group>/<key>` callback metrics too, so it reaches
    # this process even from ddp_spawn workers
    metrics = scalar_metrics(trainer.callback_metrics)
    if trainer.is_global_zero and not trainer.interrupted:
        if not predict:
            metrics["trainer/global_step"] = float(trainer.global_step)
            metrics["trainer/epochs"] = float(trainer.current_epoch)
        # evaluation callbacks (FaceEvaluation, ...) and writers expose {set: {metric: value}} as `.results`
        evaluation = {name: values for cb in trainer.callbacks for name, values in getattr(cb, "results", {}).items()}
        write_results(run_dir, metrics, {"evaluation": evaluation} if evaluation else None)
        if isinstance(trainer.logger, WandbLogger):
            trainer.logger.log_table("results", columns=["metric", "value"], data=sorted(metrics.items()))
        print_results(f"{cfg.name} — {run_dir}", metrics)
        if not predict:  # a writer's summary is already in the metrics table
            print_evaluation(evaluation)
    return metrics if trainer.is_global_zero else {}


# -- pipelines -------------------------------------------------------------------------------------------------------

STEP_REF = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


def find_finished(cfg: DictConfig) -> Path | None:
    """The newest finished run (``results.json`` written) of this experiment with the same config, if any."""
    exp_dir = Path(cfg.run_root) / cfg.name
    if not exp_dir.is_dir():
        return None
    wanted = _comparable(cfg)
    for run_dir in sorted((p for p in exp_dir.iterdir() if p.is_dir()), reverse=True):
        saved = run_dir / "config.yaml"
        if _finished(run_dir) and saved.exists() and _comparable(OmegaConf.load(saved)) == wanted:
            return run_dir
    return None


def _step_args(args: list[str], done: dict[str, Path], step: str) -> list[str]:
    def sub(match: re.Match) -> str:
        ref = match.group(1)
        if ref not in done:
            raise ValueError(f"pipeline step {step!r} refers to <{ref}>, which is not an earlier step "
                             f"(earlier: {sorted(done) or 'none'})")
        return str(done[ref])

    return [STEP_REF.sub(sub, str(a)) for a in args]


def run_pipeline_report(cfg: DictConfig, runs: dict[str, Path], out_dir: Path) -> Any:
    """Calls the experiment's ``pipeline_report`` (``{_target_: callable, **kwargs}``, e.g.
    ``lrface.recognition_table.write_comparison``) with ``runs={step: run directory}`` and ``out_dir`` = the
    pipeline's run directory, after every step has finished; nothing when it is null."""
    report = cfg.get("pipeline_report")
    if report is None:
        return None
    if not isinstance(report, DictConfig) or "_target_" not in report:
        raise ValueError(f"pipeline_report must be {{_target_: dotted.callable, ...}} called with runs= and out_dir=; "
                         f"got {report!r}")
    return instantiate(report, runs=dict(runs), out_dir=out_dir)


def run_pipeline(cfg: DictConfig) -> dict[str, float]:
    """Runs ``cfg.pipeline``'s steps in order, each an experiment of its own run directory.

    A step is ``{experiment: NAME, args: [key=value, ...]}``; ``<step>`` inside an argument is replaced by that
    earlier step's run directory (e.g. ``module.baseline=<F_baseline>/checkpoints/last.ckpt``). With
    ``pipeline_reuse: true`` a step whose experiment already finished with the very same config is not run again
    (its run directory is used), so an interrupted pipeline continues where it stopped and a repeated one only
    re-runs what changed; an unfinished step resumes from its ``last.ckpt`` as any run does.

    The steps run one after another in this process (a laptop flow); on a cluster run each step as its own
    experiment (``lrface run NAME args``, ``lrface slurm``) — the pipeline prints those commands.
    The pipeline's own run directory gets ``pipeline.json`` (the steps' run directories, seconds, reuse) and
    ``results.json`` / ``results.md`` (the last step's results); then ``pipeline_report``, if set, writes its report
    there (:func:`run_pipeline_report`).
    """
    from lrface.config import compose

    if _world_size_from_env() > 1:
        raise RuntimeError("pipelines run their steps in one process; start each step as its own (multi-GPU) "
                           "experiment instead: `lrface run <step experiment> <args>`")
    steps = OmegaConf.to_container(cfg.pipeline, resolve=True)
    reuse = bool(cfg.get("pipeline_reuse", True))
    run_dir = _new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    done: dict[str, Path] = {}
    log_rows: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    for k, (name, step) in enumerate(steps.items(), start=1):
        if not isinstance(step, dict) or "experiment" not in step:
            raise ValueError(f"pipeline step {name!r} must be {{experiment: NAME, args: [...]}}, got {step!r}")
        args = _step_args(list(step.get("args") or []) + list(cfg.get("pipeline_args") or []), done, name)
        if cfg.get("pipeline_smoke"):
            args = [str(a) for a in OmegaConf.to_container(compose(step["experiment"]).smoke, resolve=False)] + args
        step_cfg = compose(step["experiment"], args)
        command = " ".join(["lrface run", step["experiment"], *args])
        print(f"\n=== [{k}/{len(steps)}] {name}: {command}", flush=True)
        tick = time.perf_counter()
        previous = find_finished(step_cfg) if reuse else None
        if previous is not None:
            print(f"    reusing the finished run {previous} (same config; pipeline_reuse=false to re-run)", flush=True)
            done[name], reused = previous, True
            saved = json.loads((previous / RESULTS_FILE).read_text())
            metrics = {k2: float(v) for k2, v in saved.get("metrics", {}).items()}
        else:
            inherited = {var: os.environ.get(var) for var in (RUN_DIR_ENV, RESUME_ENV)}
            try:
                step_dir, _ = resolve_run_dir(step_cfg)
                metrics = run(step_cfg)
            finally:
                for var, value in inherited.items():
                    if value is None:
                        os.environ.pop(var, None)
                    else:
                        os.environ[var] = value
            done[name], reused = step_dir, False
            if not _finished(step_dir):
                raise RuntimeError(f"pipeline step {name!r} did not finish (no {step_dir / RESULTS_FILE}); "
                                   "run the pipeline again to resume it")
        seconds = time.perf_counter() - tick
        log_rows.append({"step": name, "experiment": step["experiment"], "run_dir": str(done[name]),
                         "command": command, "seconds": round(seconds, 1), "reused": reused})
        print(f"=== {name} done in {seconds:.0f} s ({time.perf_counter() - start:.0f} s total): {done[name]}",
              flush=True)
        atomic_write_text(run_dir / "pipeline.json", json.dumps({"steps": log_rows}, indent=2) + "\n")
    last = done[list(steps)[-1]]
    extra = {"pipeline": log_rows, "last_step": str(last)}
    write_results(run_dir, metrics, extra)
    for report in ("seed000.md", "seed000.json"):
        if (last / report).exists():
            atomic_write_text(run_dir / report, (last / report).read_text())
    run_pipeline_report(cfg, done, run_dir)
    rows = "\n".join(f"| {r['step']} | `{r['run_dir']}` | {r['seconds']:.0f} s{' (reused)' if r['reused'] else ''} |"
                     for r in log_rows)
    print(f"\npipeline {cfg.name}: {time.perf_counter() - start:.0f} s\n| step | run | time |\n|---|---|---|\n{rows}",
          flush=True)
    return metrics
