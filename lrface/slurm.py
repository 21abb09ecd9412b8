"""SLURM batch scripts for multi-node DDP (``make slurm NAME=... NODES=2 GPUS=8``).

Lightning's SLURM integration requires ``srun`` to start the tasks and checks ``--ntasks-per-node == devices`` and
``--nodes == num_nodes``; a mismatch hangs at "Initializing distributed". The script therefore carries the matching
``trainer.num_nodes`` / ``trainer.devices`` overrides itself. It is written into a fresh run directory and exports
``LRFACE_RUN_DIR`` so every task, and the job again after a SIGUSR1 requeue, writes to (and resumes from) that one
directory.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from lrface.config import compose


def sbatch_script(name: str, run_dir: Path, nodes: int, gpus: int, overrides: Sequence[str], *,
                  python: str = sys.executable, partition: str | None = None, time_limit: str | None = None,
                  cpus_per_task: int = 8, account: str | None = None) -> str:
    """The text of an sbatch script launching experiment ``name`` on ``nodes`` × ``gpus``."""
    args = [*overrides, f"trainer.num_nodes={nodes}", f"trainer.devices={gpus}", "trainer.accelerator=gpu",
            "trainer.strategy=ddp"]
    command = " ".join(shlex.quote(a) for a in [python, "-m", "lrface.cli", "run", name, *args])
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=lrface-{name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={gpus}",
        f"#SBATCH --gres=gpu:{gpus}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        "#SBATCH --mem=0",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        f"#SBATCH --output={run_dir}/slurm-%j.out",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if time_limit:
        lines.append(f"#SBATCH --time={time_limit}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    lines += [
        "",
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path.cwd()))}",
        f"export LRFACE_RUN_DIR={shlex.quote(str(run_dir))}",
        "export NO_ALBUMENTATIONS_UPDATE=1",
        "export WANDB_MODE=${WANDB_MODE:-offline}",
        "export PYTHONFAULTHANDLER=1",
        "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
        "",
        "# srun starts one task per GPU; Lightning's SLURMEnvironment reads the ranks from SLURM_PROCID etc.",
        f"srun {command}",
        "",
    ]
    return "\n".join(lines)


def write_and_submit(name: str, nodes: int, gpus: int, overrides: Sequence[str], *, submit: bool = True,
                     **kwargs) -> Path:
    """Writes ``runs/<name>/<timestamp>/slurm.sbatch``; submits it with sbatch when available. Returns its path."""
    cfg = compose(name, [*overrides, f"trainer.num_nodes={nodes}", f"trainer.devices={gpus}"])  # fail fast on typos
    run_dir = Path(cfg.run_root).resolve() / cfg.name / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=False)
    path = run_dir / "slurm.sbatch"
    path.write_text(sbatch_script(cfg.name, run_dir, nodes, gpus, overrides, **kwargs))
    path.chmod(0o755)
    if submit and shutil.which("sbatch"):
        out = subprocess.run(["sbatch", str(path)], check=True, capture_output=True, text=True)
        print(out.stdout.strip())
    else:
        print(f"sbatch not found: wrote {path}; submit it with `sbatch {path}` on the cluster")
    return path
