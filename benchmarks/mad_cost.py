"""MAD's cost (seed 003, supplementary Tables 1–2; ``experiments/module/mad.yaml``): parameters and forward FLOPs of
each of the six networks Q, P, D_z, D, E, G (torch.utils.flop_counter, 2 per multiply-add), and the wall time and
FLOPs of one training batch per phase / Table 1 row of the real :class:`DisentangledAEModule` driven by a real
``pytorch_lightning.Trainer`` on this machine, each as a ratio to a naive plain-PyTorch autoencoder.

    python benchmarks/mad_cost.py [--size 128] [--batch 8] [--repeats 8] [--widths real|small] [--memory]

Rows (the MAD rows are ``DisentangledAEModule(net, **mad.yaml's module section | the row's overrides)``):

* plain AE, PyTorch — x → Q → P, L1(x, x̂) on [-1, 1], one Adam on Q + P, a bare loop (the baseline, 1.00×);
* plain AE in Lightning — the same update as a tiny LightningModule (automatic optimisation, the loss logged), so
  Lightning's own overhead shows apart from MAD's extra work;
* Table 1 A — phase ae with ``w_adv=0 w_gen=0``: L_rec (L1 + 60·(1 − SSIM), window 31) + L_enc, then the D_z step;
* Table 1 B — ``w_gen=0``: + L_adv on P(Q(x)) and the D step on x vs P(Q(x));
* Table 1 C — phase ae, the full objective: + L_gen on P(z), z ~ N(0, I) (D also sees P(z));
* phase disent (S) — Q, P frozen; E, G with L_f^Φ + 4·L_rec^Φ + L_cyc^Φ + L_aug^Φ;
* phase joint (J) — everything, one backward for Q, P, E, G, then the D / D_z step.

Batches are random images in [0, 1] with P×K identity structure (batch 8 = 2 identities × 4 faces) and per-identity
style attributes, expression classes cycling within each identity (each class twice per batch) and jittered
landmarks, so every triplet of L_f^Φ has positives and negatives. The same prebuilt batch feeds every row (a
DataLoader with ``batch_size=None`` over it for the Lightning rows). Each row runs ``--repeats`` + 1 batches; a
Callback times each training batch (``on_train_batch_start`` → ``on_train_batch_end``: the whole ``training_step``
with its optimiser steps and logging); the first batch is the warm-up (Adam state, oneDNN primitives) and is
counted by ``FlopCounterMode`` instead of timed, and the fastest of the other batches is reported, so load from
other processes inflates the numbers as little as possible. ``GFLOPs/face`` is that first batch's count (every
matmul / convolution, forward and backward: networks and losses, the SSIM blur included) per face of the batch.
``params trained`` counts the parameters holding a gradient after that batch. ``--memory`` adds the peak RSS growth
of two batches (a fresh process per row; VmHWM after resetting it via ``/proc/self/clear_refs`` once the module,
Trainer and batches are built): gradients, Adam state and activations.

Random weights: FLOPs and times do not depend on their values.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_modules.disentangled_ae import DisentangledAEModule
from lrface.inference import to_model_range
from lrface.labels import CELEBA_ATTRIBUTES
from lrface.mad_labels import EXPRESSION_ATTRIBUTES
from lrface.nets.mad import Z_DIM, Disentangler, MADNet, parameter_counts

CONFIG = ROOT / "experiments" / "module" / "mad.yaml"
#: --widths small: a quarter of the channels, for quick checks.
SMALL_WIDTHS = {"encoder_widths": (16, 32, 64, 128), "decoder_widths": (128, 64, 32, 16), "hidden": 250, "ndf": 8}

PLAIN = "plain AE, PyTorch (Q→P, L1, 1 Adam)"
PLAIN_LIGHTNING = "plain AE in Lightning (same update)"
#: row → overrides of mad.yaml's module section for DisentangledAEModule (None: the plain autoencoder rows).
ROWS: dict[str, dict[str, Any] | None] = {
    PLAIN: None,
    PLAIN_LIGHTNING: None,
    "Table 1 A: L_rec + L_enc, D_z step": {"phase": "ae", "w_adv": 0.0, "w_gen": 0.0},
    "Table 1 B: + L_adv, D step": {"phase": "ae", "w_gen": 0.0},
    "Table 1 C: + L_gen (phase ae)": {"phase": "ae"},
    "phase disent (S): E, G on frozen Q, P": {"phase": "disent"},
    "phase joint (J): everything": {"phase": "joint"},
}


def load_hparams(widths: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(MADNet kwargs without input_size, DisentangledAEModule keyword arguments without net) from ``mad.yaml``."""
    module = yaml.safe_load(CONFIG.read_text())["module"]
    module.pop("_target_")
    net_kwargs = {k: v for k, v in module.pop("net").items() if k not in ("_target_", "input_size")}
    if widths == "small":
        net_kwargs.update(SMALL_WIDTHS)
    return net_kwargs, module


def make_batch(batch: int, size: int, style_attributes: list[str]) -> dict[str, torch.Tensor]:
    """Random faces with P×K structure: K = 4 faces per identity (2 when the batch is not a multiple of 4 ≥ 8).

    Returns:
        {"image": B×3×S×S in [0, 1], "identity": B int64, "attributes": B×40 0/1, "landmarks": B×5×2 pixels}.
    """
    if batch < 4 or batch % 2:
        raise ValueError(f"--batch must be even and ≥ 4 (P identities × K faces with K ≥ 2); got {batch}")
    k = 4 if batch % 4 == 0 and batch >= 8 else 2
    p = batch // k
    identity = torch.arange(p).repeat_interleave(k)
    attributes = torch.zeros(batch, len(CELEBA_ATTRIBUTES))
    style_cols = [CELEBA_ATTRIBUTES.index(a) for a in style_attributes]
    # identity i's style class is i's bits: K faces share it (positives), identities differ (negatives)
    bits = (identity[:, None] >> torch.arange(len(style_cols))) & 1
    attributes[:, style_cols] = bits.float()
    smiling, mouth = (CELEBA_ATTRIBUTES.index(a) for a in EXPRESSION_ATTRIBUTES)
    within = torch.arange(batch) % k
    # expression 2·Smiling + Mouth_Slightly_Open cycles 0, 2, 1, 3 inside each identity: every class twice per batch
    attributes[:, smiling] = (within % 2).float()
    attributes[:, mouth] = (within >= 2).float() * (k > 2)
    # ArcFace's 112 template scaled to S, jittered by a few pixels
    template = torch.tensor([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37], [70.73, 92.20]])
    landmarks = template * size / 112 + torch.randn(batch, 5, 2) * size / 64
    return {"image": torch.rand(batch, 3, size, size), "identity": identity, "attributes": attributes,
            "landmarks": landmarks}


class PlainAEUpdate:
    """The naive baseline: x → Q → P, L1(x, x̂) on [-1, 1], one Adam on Q + P, no framework."""

    def __init__(self, net: MADNet, lr: float, betas: tuple[float, float]) -> None:
        self.net = net
        self.opt = torch.optim.Adam([*net.encoder.parameters(), *net.decoder.parameters()], lr=lr, betas=betas)

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        x = to_model_range(batch["image"].float())
        loss = (self.net.decode(self.net.encode(x)) - x).abs().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class PlainAEModule(pl.LightningModule):
    """:class:`PlainAEUpdate` as a LightningModule with automatic optimisation (the loss logged as ``train/l1``)."""

    steps_per_batch = 1

    def __init__(self, net: MADNet, lr: float, betas: tuple[float, float]) -> None:
        super().__init__()
        self.net, self.lr, self.betas = net, lr, betas

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = to_model_range(batch["image"].float())
        loss = (self.net.decode(self.net.encode(x)) - x).abs().mean()
        self.log("train/l1", loss.detach(), on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([*self.net.encoder.parameters(), *self.net.decoder.parameters()], lr=self.lr,
                                betas=self.betas)


class RepeatedBatch(Dataset):
    """``n`` items, each the same prebuilt batch dict (load with ``DataLoader(..., batch_size=None)``)."""

    def __init__(self, batch: dict[str, torch.Tensor], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batch


@dataclass
class Measurement:
    """One row: seconds of every timed batch, FLOPs and trained parameters of the first (warm-up) batch."""

    seconds: list[float] = field(default_factory=list)
    flops: int = 0
    trained_params: int = 0


def _trained_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.grad is not None)


def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (``/proc/self/clear_refs`` 5); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class BatchMeter(pl.Callback):
    """Counts the FLOPs of the first training batch and times every later one.

    With ``memory`` the peak-RSS high-water mark is reset when training starts (after the Trainer's setup) and the
    RSS at that point is kept in ``rss_before_kib`` (None if it could not be reset).
    """

    def __init__(self, net: torch.nn.Module, memory: bool = False) -> None:
        self.net, self.memory = net, memory
        self.result = Measurement()
        self.rss_before_kib: int | None = None
        self._counter: FlopCounterMode | None = None
        self._tick = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.memory and reset_peak_rss():
            self.rss_before_kib = _status_kib("VmRSS")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx == 0 and not self.memory:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        self._tick = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        seconds = time.perf_counter() - self._tick
        if batch_idx == 0:
            if self._counter is not None:
                self._counter.__exit__(None, None, None)
                self.result.flops = int(self._counter.get_total_flops())
                self._counter = None
            self.result.trained_params = _trained_params(self.net)
        else:
            self.result.seconds.append(seconds)


def build_row(row: str, size: int, net_kwargs: dict[str, Any], hp: dict[str, Any],
              seed: int = 0) -> PlainAEUpdate | pl.LightningModule:
    """The row's update: a :class:`PlainAEUpdate`, a :class:`PlainAEModule` or a :class:`DisentangledAEModule`."""
    torch.manual_seed(seed)
    net = MADNet(size, **net_kwargs).train()
    overrides = ROWS[row]
    betas = tuple(float(b) for b in hp["betas"])
    if row == PLAIN:
        return PlainAEUpdate(net, hp["lr_ae"], betas)
    if row == PLAIN_LIGHTNING:
        return PlainAEModule(net, hp["lr_ae"], betas)
    return DisentangledAEModule(net, **{**hp, **overrides})


def run_plain(update: PlainAEUpdate, batch: dict[str, torch.Tensor], batches: int) -> Measurement:
    """``batches`` updates of the bare loop, measured as :class:`BatchMeter` measures the Lightning rows."""
    result = Measurement()
    with FlopCounterMode(display=False) as counter:
        update(batch)
    result.flops = int(counter.get_total_flops())
    result.trained_params = _trained_params(update.net)
    for _ in range(batches - 1):
        tick = time.perf_counter()
        update(batch)
        result.seconds.append(time.perf_counter() - tick)
    return result


def fit(module: pl.LightningModule, batch: dict[str, torch.Tensor], batches: int, meter: BatchMeter) -> None:
    """Train ``module`` for ``batches`` batches with a real CPU Trainer (no logger, checkpoints or validation)."""
    root = tempfile.mkdtemp(prefix="mad_cost_")
    try:
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=batches * module.steps_per_batch, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root, callbacks=[meter])
        trainer.fit(module, train_dataloaders=DataLoader(RepeatedBatch(batch, batches), batch_size=None))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(row: str, args: argparse.Namespace, net_kwargs: dict[str, Any], hp: dict[str, Any],
            batch: dict[str, torch.Tensor]) -> Measurement:
    """FLOPs and times of ``args.repeats`` + 1 batches of one row."""
    update = build_row(row, args.size, net_kwargs, hp)
    torch.manual_seed(1)
    if isinstance(update, PlainAEUpdate):
        return run_plain(update, batch, args.repeats + 1)
    meter = BatchMeter(update.net)
    fit(update, batch, args.repeats + 1, meter)
    return meter.result


def network_table(size: int, net_kwargs: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(network, parameters in M, forward GFLOPs per face) for Q, P, D_z, D, E, G."""
    torch.manual_seed(0)
    net = MADNet(size, **net_kwargs).eval()
    x, z = torch.zeros(1, 3, size, size), torch.zeros(1, Z_DIM)
    forwards = [net.encoder, net.decoder, net.z_discriminator, net.discriminator,
                lambda t: Disentangler.concat(net.disentangler(t)), net.reentangler]
    inputs = [x, z, z, x, z, z]
    rows = []
    with torch.no_grad():
        for (name, n), fn, inp in zip(parameter_counts(net).items(), forwards, inputs):
            counter = FlopCounterMode(display=False)
            with counter:
                fn(inp)
            rows.append((name, n / 1e6, counter.get_total_flops() / 1e9))
    return rows


def memory_child(row: str, args: argparse.Namespace) -> None:
    """In a fresh process: peak RSS (MiB) of two batches over the RSS before them, printed to stdout ("nan" where
    the high-water mark cannot be reset: importing torch peaks above the idle RSS)."""
    net_kwargs, hp = load_hparams(args.widths)
    update = build_row(row, args.size, net_kwargs, hp)
    batch = make_batch(args.batch, args.size, hp["style_attributes"])
    if isinstance(update, PlainAEUpdate):
        before = _status_kib("VmRSS") if reset_peak_rss() else None
        for _ in range(2):
            update(batch)
    else:
        meter = BatchMeter(update.net, memory=True)
        fit(update, batch, 2, meter)
        before = meter.rss_before_kib
    print("nan" if before is None else (_status_kib("VmHWM") - before) / 1024)


def memory_mib(row: str, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--size", str(args.size), "--batch", str(args.batch), "--widths", args.widths,
           "--memory-row", row]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def quiet_lightning() -> None:
    """Drop Lightning's per-fit banners and the warnings this setup triggers by design: prebuilt batches in one
    process, no validation data, phase disent's frozen networks in eval mode."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    for message in ("does not have many workers", "but have no `val_dataloader`", "module\\(s\\) in eval mode",
                    "isinstance\\(treespec, LeafSpec\\)"):
        warnings.filterwarnings("ignore", message=f".*{message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8, help="timed batches per row (after one warm-up batch)")
    parser.add_argument("--widths", choices=("real", "small"), default="real")
    parser.add_argument("--memory", action="store_true", help="peak RSS growth per row (one extra process per row)")
    parser.add_argument("--memory-row", choices=list(ROWS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be ≥ 1")
    quiet_lightning()
    if args.memory_row is not None:
        memory_child(args.memory_row, args)
        return
    start = time.perf_counter()
    net_kwargs, hp = load_hparams(args.widths)
    batch = make_batch(args.batch, args.size, hp["style_attributes"])
    results = {row: measure(row, args, net_kwargs, hp, batch) for row in ROWS}
    elapsed = time.perf_counter() - start
    memory = {row: memory_mib(row, args) for row in ROWS} if args.memory else {}

    widths = "authors' widths (mad.yaml)" if args.widths == "real" else "small widths"
    print(f"## MAD networks at {args.size} px, {widths}\n")
    print("| network | params (M) | forward GFLOPs/face |")
    print("|---|---:|---:|")
    for name, params, gflops in network_table(args.size, net_kwargs):
        print(f"| {name} | {params:.2f} | {gflops:.3f} |")
    print(f"\n## One training batch, batch {args.batch} at {args.size} px (CPU, {torch.get_num_threads()} threads; "
          f"fastest of {args.repeats} after a warm-up batch)\n")
    mem_head, mem_rule = (" peak RSS growth (MiB) |", "---:|") if memory else ("", "")
    print(f"| row | params trained (M) | GFLOPs/face (fwd+bwd) | s / batch | × plain AE |{mem_head}")
    print(f"|---|---:|---:|---:|---:|{mem_rule}")
    base = min(results[PLAIN].seconds)
    for row, result in results.items():
        sec = min(result.seconds)
        mem = f" {memory[row]:.0f} |" if memory else ""
        print(f"| {row} | {result.trained_params / 1e6:.2f} | {result.flops / args.batch / 1e9:.2f} | {sec:.3f} | "
              f"{sec / base:.2f} |{mem}")
    print(f"\n(FLOP counting, warm-up and timing took {elapsed:.0f} s)")


if __name__ == "__main__":
    main()
