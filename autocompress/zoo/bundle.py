"""``DataBundle``: what every data source gives (``zoo.data``, ``zoo.signals``): three torch
Datasets of ``(x, y)``, the class count, the shape of one input, whether horizontal flips keep
labels, and where each split came from. Its own module so that a source in its own module
(``zoo.signals``) and the dispatcher that calls it (``zoo.data.build_data``) both import it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from autocompress.zoo.splits import Split


@dataclass(frozen=True)
class DataBundle:
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]      # one sample, no batch dimension
    flip_ok: bool = True              # False where a mirror image changes the label (digits)
    color: bool = False               # 3-channel images: color jitter applies
    splits: tuple[Split, ...] = ()    # size and origin of train, val and test (the report shows them)
    text: Any = None                  # zoo.text.TextInfo where inputs are token ids (tokenizer, labels)

    @property
    def kind(self) -> str:
        """text (token ids, L), image (C,H,W), signal (C,L) or features (F,)."""
        if self.text is not None:
            return "text"
        return {3: "image", 2: "signal", 1: "features"}.get(len(self.input_shape), "other")

    @property
    def in_channels(self) -> int:
        return self.input_shape[0] if len(self.input_shape) > 1 else 1

    def subset_train(self, fraction: float, seed: int) -> "DataBundle":
        """A fixed random fraction of the training split (for cheap screening and tests); a
        carved test split is not part of ``train``, so it stays held out."""
        if fraction >= 1.0:
            return self
        n = len(self.train)
        k = max(1, int(round(n * fraction)))
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist()
        note = f"; trials fine-tune on {k} of its {n} (seed {seed})"
        splits = tuple(replace(s, size=k, origin=s.origin + note) if s.name == "train" else s for s in self.splits)
        return replace(self, train=Subset(self.train, idx), splits=splits)
