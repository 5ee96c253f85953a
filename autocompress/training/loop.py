"""The one fine-tuning loop. Techniques plug in through their hooks; none owns the loop."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from autocompress.compress.base import Technique
from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate
from autocompress.spec.policy import Policy
from autocompress.training.optim import build_optimizer, build_scheduler
from autocompress.zoo.data import make_loader


@dataclass(frozen=True)
class Epoch:
    """One row of a fine-tuning history: measured after the epoch (and its technique hooks)."""
    epoch: int
    train_loss: float
    val_accuracy: float
    lr: float


@dataclass(frozen=True)
class FitPlan:
    """How one fine-tuning runs, besides the policy's training knobs."""
    epochs: int
    device: torch.device
    seed: int
    techniques: Sequence[Technique] = ()
    # (x, y) -> (x, y or soft targets): the training-only augmentation
    batch_transform: Callable | None = None
    # (epoch, row) -> a reason to stop early (multi-objective early stopping), or None
    on_epoch: Callable[[int, Epoch], str | None] | None = None
    eval_batch_size: int = 256


@dataclass
class FitResult:
    epochs_run: int = 0
    steps: int = 0
    stopped_early: bool = False
    stop_reason: str = ""
    history: list[Epoch] = field(default_factory=list)
    data_seconds: float = 0.0        # time spent waiting for batches (incl. augmentation)
    train_seconds: float = 0.0


class _Step:
    """Optimizer, schedule, loss and mixed precision of one fine-tuning, and one step of it."""

    def __init__(self, model: nn.Module, policy: Policy, plan: FitPlan, steps_per_epoch: int) -> None:
        tp = policy.training
        self.model, self.plan, self.clip = model, plan, tp.grad_clip
        self.params = list(model.parameters())
        for t in plan.techniques:
            for m in t.trainable_modules():
                m.to(plan.device)
                self.params += list(m.parameters())
        self.optimizer = build_optimizer(self.params, tp)
        self.scheduler = build_scheduler(self.optimizer, tp, epochs=plan.epochs, steps_per_epoch=steps_per_epoch)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=tp.label_smoothing)
        # Mixed precision only where the policy asks for it (default off, also on CPU); fp16
        # needs loss scaling against gradient underflow, bf16 has fp32's range and does not.
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tp.amp)
        self.use_amp = self.amp_dtype is not None and plan.device.type in ("cuda", "cpu")
        self.scaler = torch.amp.GradScaler(plan.device.type if self.use_amp else "cpu",
                                           enabled=self.use_amp and self.amp_dtype is torch.float16)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, where: str) -> torch.Tensor:
        """One optimizer step on (x, y); returns the loss. ``where`` names the step in errors."""
        with torch.autocast(self.plan.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.use_amp):
            logits, aux = split_outputs(self.model(x))
            loss = self.criterion(logits.float(), y)
            for extra in aux:   # auxiliary heads (GoogLeNet, Inception v3) train with their usual weight
                loss = loss + AUX_WEIGHT * self.criterion(extra.float(), y)
            hard = y if y.dim() == 1 else y.argmax(dim=1)
            for t in self.plan.techniques:
                loss = t.loss(loss, inputs=x, logits=logits, targets=hard)
        if not torch.isfinite(loss):
            raise TrialFailed(f"loss became {loss.item()} at {where}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


AUX_WEIGHT = 0.3   # of each auxiliary classifier's loss (the GoogLeNet paper's weight)


def split_outputs(out: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, auxiliary logits) of a model's training-mode output: a tensor, or a named tuple
    with ``logits`` and auxiliary heads (torchvision's GoogLeNetOutputs, InceptionOutputs)."""
    if isinstance(out, torch.Tensor):
        return out, []
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor) and isinstance(out, tuple):
        return logits, [v for v in out if isinstance(v, torch.Tensor) and v is not logits]
    raise TrialFailed(f"in training mode the model returns {type(out).__name__}, not a tensor of logits "
                      "(or a named tuple with `logits`)")


def fine_tune(model: nn.Module, train: Dataset, val: Dataset, policy: Policy, plan: FitPlan) -> FitResult:
    """Train ``model`` in place for ``plan.epochs`` epochs with the policy's training knobs."""
    result = FitResult()
    if plan.epochs <= 0:
        return result
    loader = make_loader(train, policy.training.batch_size, shuffle=True, seed=plan.seed)
    val_loader = make_loader(val, plan.eval_batch_size, shuffle=False)
    step = _Step(model, policy, plan, max(1, len(loader)))
    model.to(plan.device)
    start = time.perf_counter()
    for epoch in range(plan.epochs):
        train_loss = _train_epoch(model, loader, step, result, epoch)
        for t in plan.techniques:
            t.on_epoch_end(model, epoch)
        row = Epoch(epoch + 1, train_loss, evaluate(model, val_loader, plan.device), step.lr)
        result.history.append(row)
        result.epochs_run = epoch + 1
        if not math.isfinite(row.train_loss):
            raise TrialFailed(f"training loss is {row.train_loss} after epoch {epoch + 1}")
        reason = plan.on_epoch(epoch + 1, row) if plan.on_epoch is not None else None
        if reason:
            result.stopped_early, result.stop_reason = True, reason
            break
    result.train_seconds = time.perf_counter() - start
    return result


def _train_epoch(model: nn.Module, loader, step: _Step, result: FitResult, epoch: int) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    model.train()
    device, plan = step.plan.device, step.plan
    total_loss, seen = 0.0, 0
    fetch_start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if plan.batch_transform is not None:
            x, y = plan.batch_transform(x, y)
        result.data_seconds += time.perf_counter() - fetch_start
        loss = step(x, y, f"epoch {epoch + 1}, step {result.steps + 1}")
        result.steps += 1
        for t in plan.techniques:
            t.on_step_end(model, result.steps)
        total_loss += loss.item() * x.shape[0]
        seen += x.shape[0]
        fetch_start = time.perf_counter()
    return total_loss / max(1, seen)
