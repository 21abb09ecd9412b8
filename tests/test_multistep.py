"""lrface.optim.multistep: AdaFace's epoch milestones, stepped per iteration, equal to an epoch-stepped MultiStepLR."""
from __future__ import annotations

import pytest
import torch

from lrface.optim import multistep


def _lrs_per_step(epochs: int, steps_per_epoch: int, milestones, gamma: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = multistep(opt, total_steps=epochs * steps_per_epoch, milestones=milestones, max_epochs=epochs,
                      gamma=gamma)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_matches_torch_multisteplr_stepped_per_epoch():
    epochs, spe, milestones = 26, 3, [12, 20, 24]
    got = _lrs_per_step(epochs, spe, milestones, 0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref_sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    ref = []
    for _ in range(epochs):
        ref += [opt.param_groups[0]["lr"]] * spe
        opt.step()
        ref_sched.step()
    assert got == pytest.approx(ref, rel=1e-9)
    assert got[12 * spe - 1] == pytest.approx(0.1) and got[12 * spe] == pytest.approx(0.01)
    assert got[-1] == pytest.approx(1e-4)


def test_rejects_zero_epochs():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="max_epochs"):
        multistep(opt, total_steps=10, milestones=[1], max_epochs=0)
