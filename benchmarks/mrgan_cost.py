"""MR-GAN's cost (seed 002 supp. §5) per Table 1 variant at the real widths, 112×112 faces: parameters and FLOPs of
the generator and discriminators (torch.utils.flop_counter, 2 per multiply-add), and the wall time of one Alg. 1
update (G step + D step) on this machine, each as a ratio to the simplest baseline of Table 1 (w/o local generators,
spatial attention and local discriminators).

    python benchmarks/mrgan_cost.py [--batch 8] [--repeats 3]

Random weights; no identity network (its cost is one recognition forward per face, the same for every variant).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lrface.losses.mrgan import d_adversarial_loss, g_adversarial_loss, pixel_loss  # noqa: E402
from lrface.nets.mrgan import MRGANDiscriminator, MRGANGenerator  # noqa: E402

VARIANTS = {  # Table 1 rows (supplementary)
    "MR-GAN (full)": dict(local_generators=True, spatial_attention=True, local_discriminators=True),
    "w/o spatial attention": dict(local_generators=True, spatial_attention=False, local_discriminators=True),
    "w/o local generators": dict(local_generators=False, spatial_attention=True, local_discriminators=True),
    "w/o local G and attention": dict(local_generators=False, spatial_attention=False, local_discriminators=True),
    "w/o local G, attention, local D": dict(local_generators=False, spatial_attention=False,
                                            local_discriminators=False),
}


@torch.no_grad()
def _flops(fn, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn(x)
    return int(counter.get_total_flops())


def _update_seconds(g, d, batch: int, repeats: int) -> float:
    g_opt, d_opt = torch.optim.Adam(g.parameters(), 2e-4), torch.optim.Adam(d.parameters(), 2e-4)
    x, y = torch.rand(batch, 3, 112, 112) * 2 - 1, torch.rand(batch, 3, 112, 112) * 2 - 1
    times = []
    for _ in range(repeats + 1):
        tick = time.perf_counter()
        out = g(x)
        loss = sum(g_adversarial_loss(v) for v in d(out["image"]).values()) + pixel_loss(out["image"], out["base"])
        g_opt.zero_grad()
        loss.backward()
        g_opt.step()
        fake = out["image"].detach()
        real_logits, fake_logits = d(y), d(fake)
        d_loss = sum(d_adversarial_loss(real_logits[k], fake_logits[k]) for k in real_logits)
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        times.append(time.perf_counter() - tick)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, flags in VARIANTS.items():
        g = MRGANGenerator(local_generators=flags["local_generators"], spatial_attention=flags["spatial_attention"],
                           lr_sizes=(16, 24, 32))
        d = MRGANDiscriminator(local_discriminators=flags["local_discriminators"])
        x = torch.zeros(1, 3, 112, 112)
        g_flops = _flops(lambda t: g(t, torch.tensor([2]))["image"], x)
        d_flops = _flops(lambda t: torch.cat([v.flatten() for v in d(t).values()]), x)
        rows.append((name, sum(p.numel() for p in g.parameters()) / 1e6, g_flops / 1e9,
                     sum(p.numel() for p in d.parameters()) / 1e6, d_flops / 1e9,
                     _update_seconds(g, d, args.batch, args.repeats)))
    base = rows[-1]
    print(f"MR-GAN variants at 112×112, real widths; one update = G step + D step on a batch of {args.batch} "
          f"(CPU, {torch.get_num_threads()} threads); ratios against the last row (Table 1's simplest baseline)\n")
    print("| variant | G params (M) | G GFLOPs/face | D params (M) | D GFLOPs/face | s/update | × baseline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, gp, gf, dp, df, sec in rows:
        print(f"| {name} | {gp:.2f} | {gf:.2f} | {dp:.2f} | {df:.3f} | {sec:.2f} | {sec / base[5]:.2f} |")


if __name__ == "__main__":
    main()
