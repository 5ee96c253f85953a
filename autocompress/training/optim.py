"""Optimizers and learning-rate schedules from the policy's ``training`` part.

Schedules are ``torch.optim.lr_scheduler`` objects stepped once per optimizer step, so a
schedule measured in epochs (``step_size``, ``cycle_epochs``, ``warmup_epochs``) is turned
into steps here, and short fine-tunes of a few epochs still get a smooth curve.
Closed forms, with ``k`` the step, ``W`` the warm-up steps, ``T = total - W``, ``S`` steps per
epoch and ``lr`` the policy's learning rate (after the warm-up, ``k`` counts from ``W``):

=============  ==============================================================
constant       ``lr``
step           ``lr * gamma ** floor(k / (step_size * S))``
exponential    ``lr * gamma ** (k / S)`` (``gamma`` is the decay per epoch)
linear         ``lr * (1 - 0.99 * k / T)`` (down to ``lr / 100``)
cosine         ``lr * (1 + cos(pi * k / T)) / 2``
cyclic         triangle between ``lr / 10`` and ``lr``, ``cycle_epochs * S`` steps per half;
               its rising half is the warm-up (``warmup_epochs`` is not used)
onecycle       ``OneCycleLR(max_lr=lr)``; its own warm-up is ``warmup_epochs`` (default 30%)
warm-up        linear from ``lr / 10`` to the schedule's start over ``W`` steps
=============  ==============================================================
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.optim import lr_scheduler as S

from autocompress.spec.policy import TrainingPolicy

WARMUP_START_FACTOR = 0.1   # warm-up starts at lr / 10
LINEAR_END_FACTOR = 0.01    # linear decay ends at lr / 100
CYCLIC_BASE_FACTOR = 0.1    # cyclic schedule's low point is lr / 10


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only; biases and norm scales (1-D) are
    left undecayed, as is usual (decaying BatchNorm scales only fights the normalization)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(params: Iterable[nn.Parameter], tp: TrainingPolicy) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam, AdamW or RMSprop at ``tp.lr`` with ``tp.weight_decay``."""
    groups = param_groups(params, tp.weight_decay)
    if tp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tp.lr, momentum=tp.momentum,
                               nesterov=tp.nesterov and tp.momentum > 0)
    if tp.optimizer == "adam":
        return torch.optim.Adam(groups, lr=tp.lr)
    if tp.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tp.lr)
    if tp.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=tp.lr, momentum=tp.momentum)
    raise ValueError(f"unknown optimizer {tp.optimizer!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, tp: TrainingPolicy, *, epochs: int,
                    steps_per_epoch: int) -> S.LRScheduler:
    """A per-step scheduler (``step()`` after every optimizer step); see the module table."""
    spe = max(1, steps_per_epoch)
    total = max(1, epochs * spe)
    warmup = min(total - 1, int(round(tp.warmup_epochs * spe))) if tp.warmup_epochs > 0 else 0
    if tp.schedule == "onecycle":
        # one-cycle has its own warm-up phase; warmup_epochs sets its length. OneCycleLR
        # divides by (pct_start * total - 1) and by the rest, so both must stay >= 1 step.
        pct = min(max(warmup, 2), total - 1) / total if warmup and total >= 3 else 0.3
        return S.OneCycleLR(optimizer, max_lr=tp.lr, total_steps=total, pct_start=pct,
                            cycle_momentum=False)
    if tp.schedule == "cyclic":
        half = max(1, int(round(tp.cycle_epochs * spe)))
        return S.CyclicLR(optimizer, base_lr=tp.lr * CYCLIC_BASE_FACTOR, max_lr=tp.lr, step_size_up=half,
                          mode="triangular", cycle_momentum=False)
    main_steps = max(1, total - warmup)
    if tp.schedule == "constant":
        main: S.LRScheduler = S.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif tp.schedule == "step":
        main = S.StepLR(optimizer, step_size=max(1, tp.step_size * spe), gamma=tp.gamma)
    elif tp.schedule == "exponential":
        main = S.ExponentialLR(optimizer, gamma=tp.gamma ** (1.0 / spe))
    elif tp.schedule == "linear":
        main = S.LinearLR(optimizer, start_factor=1.0, end_factor=LINEAR_END_FACTOR, total_iters=main_steps)
    elif tp.schedule == "cosine":
        main = S.CosineAnnealingLR(optimizer, T_max=main_steps)
    else:
        raise ValueError(f"unknown schedule {tp.schedule!r}")
    if warmup == 0:
        return main
    warm = S.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=warmup)
    return S.SequentialLR(optimizer, [warm, main], milestones=[warmup])
