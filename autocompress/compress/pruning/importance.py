"""How useful each channel of a coupled group is: Torch-Pruning's group importances (L1/L2
magnitude, FPGM, Taylor on training batches), shared by every group the trial cuts (FFN neurons,
attention heads, the hidden size)."""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

from autocompress.compress.base import TechniqueContext
from autocompress.zoo.data import make_loader

TAYLOR_BATCHES = 8


def group_importance(criterion: str) -> tp.importance.Importance:
    """The importance of ``pruning.criterion``, scored over every layer of a group."""
    if criterion == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2)


def taylor_gradients(model: nn.Module, ctx: TechniqueContext) -> None:
    """Accumulate the task loss's gradients over training batches (Taylor importance reads them)."""
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()   # BatchNorm statistics stay as they are
    for i, (x, y) in enumerate(make_loader(ctx.data.train, 32, shuffle=True, seed=ctx.seed)):
        if i >= TAYLOR_BATCHES:
            break
        nn.functional.cross_entropy(model(x), y).backward()
    model.train(was_training)
