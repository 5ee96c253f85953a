"""Model size: the serialized state dict in MB, dense and zlib-compressed (zeros compress)."""

from __future__ import annotations

import io
import zlib

import torch
from torch import nn


def serialized_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def size_mb(model: nn.Module) -> float:
    return len(serialized_bytes(model)) / 1e6


def compressed_size_mb(model: nn.Module) -> float:
    """Size after zlib: what unstructured sparsity saves when the file is stored compressed."""
    return len(zlib.compress(serialized_bytes(model), 6)) / 1e6


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p).item())
    return total, nonzero
