"""Training step time of FeatureExtractorModule under Lightning vs a plain PyTorch loop (same model, head, batch).

    .venv/bin/python benchmarks/train_step_overhead.py [--steps 30] [--batch 32] [--depth r18] [--widths 16 32 64 128]

Both run the same number of optimizer steps on the same in-memory batches (no data loading, so the difference is the
framework: Lightning's loop, logging, callbacks and hooks). Prints a table of ms/step, images/s and the overhead ratio.
"""
from __future__ import annotations

import argparse
import functools
import os
import time

os.environ.setdefault("WANDB_MODE", "disabled")

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from lightning_modules.feature_extractor import FeatureExtractorModule  # noqa: E402
from lrface.inference import to_model_range  # noqa: E402
from lrface.losses.margin import ArcFace  # noqa: E402
from lrface.nets.iresnet import get_model  # noqa: E402


class FixedBatches(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "identity": self.labels[i]}


def build(args, seed: int = 0):
    torch.manual_seed(seed)
    backbone = get_model(args.depth, widths=args.widths, num_features=args.emb)
    head = functools.partial(ArcFace, s=64.0, m=0.5)
    opt = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)
    return backbone, head, opt


def plain_loop(args, images, labels) -> float:
    backbone, head_factory, opt_factory = build(args)
    head = head_factory(in_features=args.emb, out_features=args.classes)
    optimizer = opt_factory([{"params": backbone.parameters()}, {"params": head.parameters()}])
    backbone.train()
    n = len(images) // args.batch
    times = []
    for step in range(args.steps + args.warmup):
        i = step % n
        x, y = images[i * args.batch:(i + 1) * args.batch], labels[i * args.batch:(i + 1) * args.batch]
        t0 = time.perf_counter()
        loss = F.cross_entropy(head(backbone(to_model_range(x)), y), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5.0)
        optimizer.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


class StepTimer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self._t0 = warmup, [], 0.0

    def on_train_batch_start(self, *a, **k) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, *a, **k) -> None:
        if trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._t0)


def lightning_loop(args, images, labels) -> float:
    backbone, head, opt = build(args)
    module = FeatureExtractorModule(backbone, head, opt, num_classes=args.classes, clip_grad_norm=5.0)
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.steps + args.warmup, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    loader = DataLoader(FixedBatches(images, labels), batch_size=args.batch, shuffle=False, drop_last=True)
    trainer.fit(module, train_dataloaders=loader)
    return sum(timer.times) / len(timer.times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--depth", default="r18")
    p.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128])
    p.add_argument("--emb", type=int, default=128)
    p.add_argument("--classes", type=int, default=1000)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch * 8, 3, 112, 112, generator=g)
    labels = torch.randint(0, args.classes, (args.batch * 8,), generator=g)

    plain = plain_loop(args, images, labels)
    light = lightning_loop(args, images, labels)
    print(f"\n{args.depth} widths={args.widths} emb={args.emb} classes={args.classes} batch={args.batch} "
          f"threads={torch.get_num_threads()}")
    print("| loop | ms/step | images/s |\n|---|---|---|")
    print(f"| plain PyTorch | {plain * 1e3:.1f} | {args.batch / plain:.1f} |")
    print(f"| Lightning FeatureExtractorModule | {light * 1e3:.1f} | {args.batch / light:.1f} |")
    print(f"| overhead ratio (Lightning / plain) | {light / plain:.3f} | |")


if __name__ == "__main__":
    main()
