"""Networks whose layer groups differ in sensitivity by construction, for the per-layer tests.

``Loud``: a Linear whose input carries an extra constant feature (``level``, 0 while training,
500 after it; its weight column is 0, so the float model computes the same); static int8
quantizes a layer's input with one scale per tensor, so at that layer the other features (|x| of
a few units) fall on one or two int8 steps: quantizing that group alone costs far more than any
other.
``narrow``: a bottleneck of 6 features, where pruning half the channels costs the most.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class Loud(nn.Module):
    def __init__(self, features: int, out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features + 1, out)
        self.register_buffer("level", torch.tensor(0.0))   # in the state dict: a checkpoint carries it
        with torch.no_grad():
            self.fc.weight[:, -1] = 0.0   # no gradient reaches it while level is 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([x, x[:, :1] * 0 + self.level], 1))


def loud(model: nn.Module) -> nn.Module:
    """After training: the constant feature on (the float outputs do not change)."""
    model.loud[0].level.fill_(500.0)
    return model


def build(num_classes: int = 10, **_: object) -> nn.Module:
    """Digits (1x8x8) MLP: stem, wide, loud, narrow, head; each a layer group."""
    return nn.Sequential(OrderedDict(
        flat=nn.Flatten(),
        stem=nn.Sequential(nn.Linear(64, 64), nn.ReLU()),
        wide=nn.Sequential(nn.Linear(64, 64), nn.ReLU()),
        loud=nn.Sequential(Loud(64, 64), nn.ReLU()),
        narrow=nn.Sequential(nn.Linear(64, 6), nn.ReLU()),
        head=nn.Linear(6, num_classes)))


class Stages(nn.Module):
    """A small CNN of four conv stages (two convs each) for per-stage pruning ratios."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, **_: object) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()) for _ in range(4))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).relu()
        for stage in self.stages:
            x = stage(x)
        return self.head(x.mean((2, 3)))


def stages(num_classes: int = 10, in_channels: int = 1, **_: object) -> nn.Module:
    return Stages(num_classes, in_channels)
