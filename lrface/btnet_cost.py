"""Compute and storage of BTNet against its single-network baselines (seed 004 Fig. 4 and Fig. 5).

* FLOPs per input resolution (Fig. 5): φ_hr and φ_mr embed every face at 112 px (an r×r input is up-sampled first),
  so they cost TNet at 112 whatever r is; φ_bt runs branch r at r×r, then the trunk's tail from the coupling block.
  Counted with ``torch.utils.flop_counter.FlopCounterMode`` on one image (convolutions and matrix products; a
  multiply-add counts 2 FLOPs — insightface's "GFLOPs" of IResNet-50, 6.3, are multiply-adds, half these numbers).
* Parameters stored per branch (Fig. 4): "full fine-tuning" stores a whole network per resolution (the authors'
  per-resolution ``model.pt``); φ_bt with ``share="bn"`` stores the branch body plus the tail's BatchNorms.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lrface.nets.btnet import BTNet

__all__ = ["count_flops", "flops_table", "parameter_table", "cost_markdown"]


@torch.no_grad()
def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` (torch's flop counter: 2 per multiply-add)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def flops_table(btnet: BTNet, sizes=None) -> dict[int, dict[str, float]]:
    """{input side r: {"phi_hr_gflops", "phi_bt_gflops", "flops_ratio"}} for r in the branches and the trunk size."""
    sizes = sizes or (*btnet.resolutions, btnet.trunk_size)
    device = next(btnet.parameters()).device
    full = count_flops(btnet.trunk, torch.zeros(1, 3, btnet.trunk_size, btnet.trunk_size, device=device))
    out = {}
    for r in sizes:
        bt = count_flops(btnet, torch.zeros(1, 3, r, r, device=device))
        out[int(r)] = {"phi_hr_gflops": full / 1e9, "phi_bt_gflops": bt / 1e9, "flops_ratio": bt / full}
    return out


def parameter_table(btnet: BTNet) -> dict[int, dict[str, float]]:
    """{branch r: {"full_finetune_m", "phi_bt_m", "stored_ratio"}}: millions of parameters stored for resolution r."""
    full = btnet.stored_parameters(None)
    return {r: {"full_finetune_m": full / 1e6, "phi_bt_m": btnet.stored_parameters(r) / 1e6,
                "stored_ratio": btnet.stored_parameters(r) / full} for r in btnet.resolutions}


def cost_markdown(btnet: BTNet) -> str:
    """Both tables as Markdown."""
    lines = ["FLOPs per image (G; φ_hr / φ_mr up-sample every input to "
             f"{btnet.trunk_size} px; φ_bt runs the branch of that size):", "",
             "| input | φ_hr / φ_mr | φ_bt | φ_bt / φ_hr |", "|---:|---:|---:|---:|"]
    for r, row in flops_table(btnet).items():
        lines.append(f"| {r}×{r} | {row['phi_hr_gflops']:.3f} | {row['phi_bt_gflops']:.3f} "
                     f"| {row['flops_ratio']:.3f} |")
    lines += ["", f"Parameters stored per resolution (M; share = {btnet.share!r}):", "",
              "| branch | full network per resolution | φ_bt | φ_bt / full |", "|---:|---:|---:|---:|"]
    for r, row in parameter_table(btnet).items():
        lines.append(f"| {r} | {row['full_finetune_m']:.3f} | {row['phi_bt_m']:.3f} | {row['stored_ratio']:.3f} |")
    return "\n".join(lines) + "\n"
