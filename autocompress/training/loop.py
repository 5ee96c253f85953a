"""The one fine-tuning loop. Techniques plug in through their hooks; none owns the loop."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate
from autocompress.spec.policy import Policy
from autocompress.training.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from autocompress.compress.base import Technique


@dataclass
class FitResult:
    epochs_run: int = 0
    steps: int = 0
    stopped_early: bool = False
    stop_reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    data_seconds: float = 0.0        # time spent waiting for batches (incl. augmentation)
    train_seconds: float = 0.0


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None,
                      num_workers=0, drop_last=False)


def fine_tune(model: nn.Module, train: Dataset, val: Dataset, policy: Policy, *, epochs: int,
              device: torch.device, seed: int, techniques: Sequence["Technique"] = (),
              batch_transform: Callable | None = None,
              on_epoch: Callable[[int, dict[str, float]], str | None] | None = None,
              eval_batch_size: int = 256) -> FitResult:
    """Train ``model`` in place for ``epochs`` epochs.

    ``batch_transform(x, y) -> (x, y_or_soft_targets)`` is the training-only augmentation.
    ``on_epoch(epoch, row)`` may return a reason to stop early (multi-objective early stopping).
    """
    tp = policy.training
    result = FitResult()
    if epochs <= 0:
        return result
    loader = make_loader(train, tp.batch_size, shuffle=True, seed=seed)
    val_loader = make_loader(val, eval_batch_size, shuffle=False)
    params = list(model.parameters())
    for t in techniques:
        for m in t.trainable_modules():
            m.to(device)
            params += list(m.parameters())
    optimizer = build_optimizer(params, tp)
    scheduler = build_scheduler(optimizer, tp, epochs=epochs, steps_per_epoch=max(1, len(loader)))
    criterion = nn.CrossEntropyLoss(label_smoothing=tp.label_smoothing)
    # Mixed precision only where the policy asks for it (default off, also on CPU); fp16
    # needs loss scaling against gradient underflow, bf16 has fp32's range and does not.
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tp.amp)
    use_amp = amp_dtype is not None and device.type in ("cuda", "cpu")
    scaler = torch.amp.GradScaler(device.type if use_amp else "cpu",
                                  enabled=use_amp and amp_dtype is torch.float16)
    model.to(device)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total_loss, seen = 0.0, 0
        fetch_start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if batch_transform is not None:
                x, y = batch_transform(x, y)
            result.data_seconds += time.perf_counter() - fetch_start
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_amp):
                logits = model(x)
                loss = criterion(logits.float(), y)
                hard = y if y.dim() == 1 else y.argmax(dim=1)
                for t in techniques:
                    loss = t.loss(loss, inputs=x, logits=logits, targets=hard)
            if not torch.isfinite(loss):
                raise TrialFailed(f"loss became {loss.item()} at epoch {epoch + 1}, step {result.steps + 1}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tp.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, tp.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            result.steps += 1
            for t in techniques:
                t.on_step_end(model, result.steps)
            total_loss += loss.item() * x.shape[0]
            seen += x.shape[0]
            fetch_start = time.perf_counter()
        for t in techniques:
            t.on_epoch_end(model, epoch)
        val_acc = evaluate(model, val_loader, device)
        row = {"epoch": epoch + 1, "train_loss": total_loss / max(1, seen), "val_accuracy": val_acc,
               "lr": optimizer.param_groups[0]["lr"]}
        result.history.append(row)
        result.epochs_run = epoch + 1
        if not math.isfinite(row["train_loss"]):
            raise TrialFailed(f"training loss is {row['train_loss']} after epoch {epoch + 1}")
        if on_epoch is not None:
            reason = on_epoch(epoch + 1, row)
            if reason:
                result.stopped_early, result.stop_reason = True, reason
                break
    result.train_seconds = time.perf_counter() - start
    return result
