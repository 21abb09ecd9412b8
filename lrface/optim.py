"""Learning-rate schedules of the reference training recipes."""
from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def poly_warmup(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, power: float = 1.0) -> LambdaLR:
    """arcface_torch's ``PolynomialLRWarmup``, stepped per iteration: linear warm-up from 0, then
    ``(1 - progress)^power`` decay to 0 (power 1 in the current configs: a linear decay).

    Args:
        total_steps: optimizer steps of the whole run (``trainer.estimated_stepping_batches``).
        warmup_steps: steps of linear warm-up (arcface_torch: ``warmup_epoch`` × steps per epoch).
        power: decay exponent.
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(int(warmup_steps), total_steps - 1) if total_steps > 1 else 0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return max(0.0, 1.0 - progress) ** power

    return LambdaLR(optimizer, factor)


def cosine_warmup(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> LambdaLR:
    """Linear warm-up from 0, then a half-cosine from the base lr down to ``min_factor`` × base lr (per step)."""
    import math

    total_steps = max(int(total_steps), 1)
    warmup_steps = min(int(warmup_steps), total_steps - 1) if total_steps > 1 else 0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def multistep(optimizer: Optimizer, total_steps: int, milestones: Sequence[float], max_epochs: int,
              gamma: float = 0.1) -> LambdaLR:
    """``torch.optim.lr_scheduler.MultiStepLR`` with milestones in epochs (AdaFace's recipe), stepped per iteration.

    The lr is ``base_lr × gamma^k`` where k counts the milestones already reached: epoch e starts at step
    ``round(e × total_steps / max_epochs)``, so the lr drops at the first step of each milestone epoch, exactly where
    an epoch-stepped MultiStepLR drops it.

    Args:
        total_steps: optimizer steps of the whole run (``trainer.estimated_stepping_batches``).
        milestones: epochs at which the lr is multiplied by ``gamma`` (AdaFace IR-50 / MS1MV2: 12, 20, 24 of 26).
        max_epochs: epochs of the run (``${trainer.max_epochs}`` in a config), to convert epochs to steps.
        gamma: factor per milestone.
    """
    total_steps = max(int(total_steps), 1)
    if int(max_epochs) < 1:
        raise ValueError(f"max_epochs must be ≥ 1, got {max_epochs}")
    steps_per_epoch = total_steps / int(max_epochs)
    boundaries = sorted(round(float(e) * steps_per_epoch) for e in milestones)

    def factor(step: int) -> float:
        return float(gamma) ** sum(step >= b for b in boundaries)

    return LambdaLR(optimizer, factor)
