"""Optimizers and learning-rate schedules from the policy's ``training`` part."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from autocompress.policy import TrainingPolicy


def build_optimizer(params: Iterable[nn.Parameter], tp: TrainingPolicy) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if tp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tp.lr, momentum=tp.momentum, nesterov=tp.nesterov and tp.momentum > 0,
                               weight_decay=tp.weight_decay)
    if tp.optimizer == "adam":
        return torch.optim.Adam(params, lr=tp.lr, weight_decay=tp.weight_decay)
    if tp.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tp.lr, weight_decay=tp.weight_decay)
    if tp.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=tp.lr, momentum=tp.momentum, weight_decay=tp.weight_decay)
    raise ValueError(f"unknown optimizer {tp.optimizer!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, tp: TrainingPolicy, *, epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler (``step()`` after every optimizer step)."""
    from torch.optim import lr_scheduler as S

    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(tp.warmup_epochs * steps_per_epoch))) if tp.warmup_epochs > 0 else 0
    main_steps = max(1, total - warmup)
    if tp.schedule == "constant":
        main = S.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif tp.schedule == "cosine":
        main = S.CosineAnnealingLR(optimizer, T_max=main_steps)
    elif tp.schedule == "step":
        main = S.StepLR(optimizer, step_size=max(1, tp.step_size * steps_per_epoch), gamma=tp.gamma)
    elif tp.schedule == "exponential":
        # gamma is the decay per epoch; spread it over the steps of one epoch
        main = S.ExponentialLR(optimizer, gamma=tp.gamma ** (1.0 / steps_per_epoch))
    elif tp.schedule == "linear":
        main = S.LinearLR(optimizer, start_factor=1.0, end_factor=0.01, total_iters=main_steps)
    elif tp.schedule == "cyclic":
        half = max(1, int(round(tp.cycle_epochs * steps_per_epoch)))
        main = S.CyclicLR(optimizer, base_lr=tp.lr / 10, max_lr=tp.lr, step_size_up=half,
                          mode="triangular", cycle_momentum=False)
    elif tp.schedule == "onecycle":
        return S.OneCycleLR(optimizer, max_lr=tp.lr, total_steps=total, cycle_momentum=False)
    else:
        raise ValueError(f"unknown schedule {tp.schedule!r}")
    if warmup == 0:
        return main
    warm = S.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup)
    return S.SequentialLR(optimizer, [warm, main], milestones=[warmup])
