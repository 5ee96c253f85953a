"""Mixing of a batch with itself permuted: MixUp and CutMix, with soft targets."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from autocompress.training.augment.base import Random


class Mix:
    """MixUp or CutMix (as ``v2.MixUp`` / ``v2.CutMix``: one ``lam ~ Beta(alpha, alpha)`` per
    batch, partner = the batch permuted), applied to a batch with probability ``prob``.
    Always returns soft targets (N, classes), one-hot for batches left unmixed, so the loss
    sees one target format. CutMix on a 1D signal cuts a time window."""

    def __init__(self, kind: str, *, alpha: float, prob: float, num_classes: int) -> None:
        self.kind, self.alpha, self.prob, self.num_classes = kind, alpha, prob, num_classes

    def __call__(self, x: Tensor, y: Tensor, r: Random) -> tuple[Tensor, Tensor]:
        target = F.one_hot(y, self.num_classes).to(x.dtype) if y.dim() == 1 else y
        if x.shape[0] < 2 or r.rng.random() >= self.prob:
            return x, target
        lam = float(r.rng.beta(self.alpha, self.alpha))
        perm = torch.as_tensor(r.rng.permutation(x.shape[0]), device=x.device)
        if self.kind == "mixup":
            x = lam * x + (1 - lam) * x[perm]
        else:
            x, lam = self._cut(x, x[perm], lam, r)
        return x, lam * target + (1 - lam) * target[perm]

    @staticmethod
    def _cut(x: Tensor, other: Tensor, lam: float, r: Random) -> tuple[Tensor, float]:
        """Paste a box (image) or window (signal) of ``other`` covering about 1 - lam of the
        input; lam is corrected to the area actually pasted after clipping at the border."""
        sizes = x.shape[2:]
        cut = math.sqrt(1 - lam) if len(sizes) == 2 else 1 - lam
        out = x.clone()
        region = [slice(None), slice(None)]
        area = 1.0
        for size in sizes:
            length = int(size * cut)
            center = int(r.rng.integers(size))
            a, b = max(0, center - length // 2), min(size, center + length // 2)
            region.append(slice(a, b))
            area *= (b - a) / size
        out[tuple(region)] = other[tuple(region)]
        return out, 1.0 - area
