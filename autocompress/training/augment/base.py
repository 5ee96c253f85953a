"""The transform's own random streams, and the type of one augmentation step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

Step = Callable[[Tensor, "Random"], Tensor]


@dataclass
class Random:
    """The transform's own random streams, so a trial's augmentation depends on its seed only."""
    seed: int
    rng: np.random.Generator = field(init=False)
    gen: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.gen = torch.Generator().manual_seed(self.seed)

    def uniform(self, low: float, high: float, n: int, like: Tensor) -> Tensor:
        return torch.as_tensor(self.rng.uniform(low, high, n), dtype=like.dtype, device=like.device)

    def integers(self, low: int, high: int, n: int, device: torch.device) -> Tensor:
        """Integers in [low, high] inclusive."""
        return torch.as_tensor(self.rng.integers(low, high + 1, n), dtype=torch.long, device=device)
