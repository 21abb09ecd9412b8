"""PULSE search throughput: seconds per image and peak memory per image at batch 1, 4, 16, side by side in one run.

    .venv/bin/python benchmarks/pulse_throughput.py [--size 64] [--steps 20] [--batches 1 4 16] [--device cpu]

The same generator (a StyleGAN2 at `--size`, random weights: speed does not depend on them), the same number of steps
(eps = 0 so no sample stops early) and the same thumbnails for every batch size; each batch size runs in a fresh
subprocess so its peak memory (RSS on CPU, max allocated on CUDA) is its own. FLOPs, not seconds, stand in for GPU cost
on this machine: the per-image cost at batch 1 vs 16 shows what batching buys.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(size: int, steps: int, batch: int, device: str) -> dict:
    import torch

    from lrface.nets.stylegan2 import StyleGAN2Generator
    from lrface.pulse import PulseSearch, gaussian_fit

    torch.manual_seed(0)
    gen = StyleGAN2Generator(size, channel_multiplier=1).to(device).eval()
    gaussian = gaussian_fit(gen, n_samples=20_000, batch=5_000, device=device)
    search = PulseSearch(gen, gaussian, eps=0.0, steps=steps)
    thumbs = torch.rand(batch, 3, size // 4, size // 4, generator=torch.Generator().manual_seed(1)).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    search.search(thumbs, seeds=list(range(batch)))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - t0
    return {"batch": batch, "seconds": seconds, "s_per_image": seconds / batch, "peak_mb": peak_mb,
            "peak_mb_per_image": peak_mb / batch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.size, args.steps, args.one, args.device)))
        return
    rows = []
    for batch in args.batches:
        out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--steps", str(args.steps),
                              "--device", args.device, "--one", str(batch)], capture_output=True, text=True,
                             check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["s_per_image"]
    print(f"\nPULSE, StyleGAN2 {args.size}px (channel multiplier 1), {args.steps} steps, {args.device}")
    print("| batch | s total | s / image | speed-up per image vs batch 1 | peak MB | peak MB / image |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['seconds']:.1f} | {r['s_per_image']:.2f} | {base / r['s_per_image']:.2f}× "
              f"| {r['peak_mb']:.0f} | {r['peak_mb_per_image']:.0f} |")


if __name__ == "__main__":
    main()
