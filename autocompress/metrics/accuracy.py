"""Classification accuracy on a split."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str) -> float:
    """Top-1 accuracy; the model's train/eval mode is restored afterwards."""
    was_training = getattr(model, "training", False)   # a frozen TorchScript module may not have it
    model.eval()
    correct = total = 0
    for x, y in loader:
        logits = model(x.to(device))
        correct += (logits.argmax(dim=1).cpu() == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return correct / max(1, total)


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device | str) -> torch.Tensor:
    """Logits for a whole split, on the CPU, in loader order."""
    model.eval()
    return torch.cat([model(x.to(device)).float().cpu() for x, _ in loader])
