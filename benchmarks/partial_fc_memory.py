"""Memory of the classification layer: full FC vs Partial FC at 1M identities (embedding 512, batch 128 per device).

    python benchmarks/partial_fc_memory.py [--classes 1000000] [--batch 128] [--world 8] [--threads 1]

Each configuration runs one forward + backward of the margin softmax (ArcFace, s = 64, m = 0.5) in a fresh
subprocess and reports the growth of the peak resident set (``resource.getrusage`` high-water mark minus the resident
set just before the class centres are allocated): class centres + their gradient + logits + every temporary of the
step, as the allocator really held them (glibc returns these large blocks to the OS when freed, so RSS tracks live
tensors). "minimum" is the sum of the tensors that must exist: centres, centre gradient and one fp32 logit matrix.

World size W is simulated on one process by running the step of ONE rank: it holds C/W centres and sees the
all-gathered global batch of W·B embeddings; the collectives themselves move only W·B×512 floats and are left out.

Rows:
    full FC          one device holds all C centres, batch B (data parallel, DP in the Partial FC paper's table).
                     It peaks at ~6 C×512 fp32 buffers (centres, normalised centres, their gradients, temporaries of
                     the normalisation backward), ~12 GB at 1M: above ``--full-max-classes`` it is measured at C/4
                     and C/2 and extrapolated linearly (every large tensor is C×512 or B×C).
    model parallel   PartialFC(sample_rate=1.0): C/W centres per rank, global batch W·B.
    PFC 0.1          PartialFC(sample_rate=0.1): the same shard, 10 % of its centres per step (positives kept).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMB = 512


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(kind: str, classes: int, rows: int, sample_rate: float, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from lrface.losses.margin import ArcFace
    from lrface.losses.partial_fc import PartialFC

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb = torch.randn(rows, EMB, requires_grad=True)
    labels = torch.randint(0, classes, (rows,))
    before = _rss_bytes()
    if kind == "full":
        head = ArcFace(EMB, classes)
        weight = head.weight
    else:
        head = PartialFC(ArcFace(EMB, 1), EMB, classes, sample_rate=sample_rate)
        weight = head.weight
    start = time.perf_counter()
    if kind == "full":
        logits = head(emb, labels)
        loss = F.cross_entropy(logits, labels)
        logit_cols = logits.shape[1]
        del logits
    else:
        loss = head(emb, labels)
        logit_cols = head.num_sample
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {
        "loss": loss.item(),
        "seconds": seconds,
        "peak": peak,
        "weight": weight.numel() * weight.element_size(),
        "grad": weight.grad.numel() * weight.grad.element_size(),
        "logits": rows * logit_cols * 4,
        "rows": rows,
        "cols": logit_cols,
    }


def _run(kind: str, classes: int, rows: int, sample_rate: float, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(classes), str(rows), str(sample_rate), str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gb(n: float) -> str:
    return f"{n / 1e9:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--world", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full-max-classes", type=int, default=500_000,
                        help="above this, the full-FC row is extrapolated from C/4 and C/2 (RAM: ~12 GB at 1M)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, classes, rows, rate, threads = args.child
        sys.path.insert(0, str(ROOT))
        print(json.dumps(_child(kind, int(classes), int(rows), float(rate), int(threads))))
        return

    shard = args.classes // args.world
    print(f"margin softmax step, emb {EMB}, batch {args.batch}/device, fp32, CPU, {args.threads} thread(s)")
    header = (f"{'configuration':<42} {'logits':>12} {'weight GB':>9} {'grad GB':>8} {'logits GB':>9} "
              f"{'minimum GB':>10} {'peak GB':>8} {'vs full':>8} {'step s':>7}")
    print(header)
    print("-" * len(header))

    def row(name: str, r: dict, full_peak: float) -> None:
        minimum = r["weight"] + r["grad"] + r["logits"]
        shape = f"{r['rows']}x{r['cols']}"
        print(f"{name:<42} {shape:>12} {_gb(r['weight']):>9} {_gb(r['grad']):>8} {_gb(r['logits']):>9} "
              f"{_gb(minimum):>10} {_gb(r['peak']):>8} {r['peak'] / full_peak:>7.3f}x {r['seconds']:>7.2f}")

    if args.classes <= args.full_max_classes:
        full = _run("full", args.classes, args.batch, 1.0, args.threads)
        row(f"full FC (1 device, C={args.classes:,})", full, full["peak"])
    else:
        # Every large tensor of the full-FC step is C×512 or B×C, so its memory and time are affine in C: measure at
        # C/4 and C/2 and extrapolate instead of needing ~12 GB of RAM for C = 1M.
        c1, c2 = args.classes // 4, args.classes // 2
        r1 = _run("full", c1, args.batch, 1.0, args.threads)
        r2 = _run("full", c2, args.batch, 1.0, args.threads)
        full = {k: (r2[k] + (r2[k] - r1[k]) * (args.classes - c2) / (c2 - c1) if k not in ("rows", "loss") else r2[k])
                for k in r2}
        full["cols"] = args.classes
        row(f"full FC (1 device, C={c1:,}) measured", r1, full["peak"])
        row(f"full FC (1 device, C={c2:,}) measured", r2, full["peak"])
        row(f"full FC (1 device, C={args.classes:,}) extrap.", full, full["peak"])
    for name, rate in ((f"model parallel (W={args.world}, {shard:,}/rank)", 1.0),
                       (f"PFC 0.1 (W={args.world}, {shard:,}/rank)", 0.1)):
        row(name, _run("pfc", shard, args.batch * args.world, rate, args.threads), full["peak"])


if __name__ == "__main__":
    main()
