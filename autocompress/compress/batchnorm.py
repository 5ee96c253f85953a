"""BatchNorm running statistics re-estimated from training batches, where they are stale.

A BatchNorm layer normalises with its running mean and variance at inference. They go stale
when the layer's inputs change and too few training steps follow to track them:

- after pruning (channels removed, or weights zeroed), every later BatchNorm sees other inputs
  (re-estimating them is EagleEye's "adaptive BN", Li et al., 2020);
- after a short training with a small momentum: torchvision builds MobileNetV3 with momentum
  0.01, so after a few epochs its statistics are still near their initial values and eval-mode
  accuracy is at chance while batch statistics give 90% (docs/ARCHITECTURE.md, Decisions).

``recalibrate_batchnorm`` re-estimates them as a cumulative average (momentum ``None``) over N
training batches, like ``torch.optim.swa_utils.update_bn``, but with every other module in eval
mode (``update_bn`` calls ``model.train()``, so dropout would perturb the statistics), a bounded
number of batches, each layer's momentum and every module's mode restored, and a measured result.
``batch_statistics_accuracy`` tells stale statistics from a weak model (``trial.baseline``).

``BatchNormRecalibration`` is the technique: after a technique that declares it changes the
structure, right after ``compress`` (structured and weight pruning), or at each epoch end when
the structure changes while training (gradual pruning's steps; before the loop measures the
epoch's val accuracy, so the history and early stopping see it, and the final shrink, exact,
changes nothing); and after fine-tuning when ``training.bn_recalibration_batches`` > 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from autocompress.compress import depth, pruning
from autocompress.compress.base import Declaration, Technique
from autocompress.metrics.accuracy import evaluate
from autocompress.spec.policy import Policy
from autocompress.utils import device_of
from autocompress.zoo.data import make_loader

AFTER_STRUCTURE_BATCHES = 8   # training batches after a structure change (knob off): 512 samples at batch 64
EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class Recalibration:
    """What one recalibration did."""
    layers: int     # BatchNorm layers with running statistics (0: nothing to do)
    batches: int    # training batches forwarded
    samples: int


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers (1d/2d/3d, also inside fused QAT modules) that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[Tensor, Any]], *, max_batches: int,
                          device: torch.device | str | None = None) -> Recalibration:
    """Re-estimate the running statistics of ``model``'s BatchNorm layers over at most ``max_batches``
    of ``batches`` (no gradient; only the BatchNorm layers in train mode). Batches of one sample are
    skipped (no variance from a 1x1 map). When no batch could be used, the statistics are left as
    they were; so they are when the forward pass raises."""
    layers = batchnorm_layers(model)
    if not layers or max_batches <= 0:
        return Recalibration(len(layers), 0, 0)
    device = device or device_of(model)
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    used = samples = 0
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None   # cumulative average over the batches seen since the reset
        m.train()
    try:
        for x, _ in batches:
            if used >= max_batches:
                break
            if len(x) < 2:
                continue
            model(x.to(device))
            used, samples = used + 1, samples + len(x)
    except BaseException:
        used = 0
        raise
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        if used == 0:
            _put_back(layers, saved)
        for m, mode in modes.items():
            m.train(mode)
    return Recalibration(len(layers), used, samples)


def _put_back(layers: list[nn.modules.batchnorm._BatchNorm], saved: list[tuple[Tensor, Tensor, Tensor]]) -> None:
    for m, buffers in zip(layers, saved):
        for buffer, value in zip((m.running_mean, m.running_var, m.num_batches_tracked), buffers):
            buffer.copy_(value)


@torch.no_grad()
def batch_statistics_accuracy(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]],
                              device: torch.device | str) -> float | None:
    """Top-1 accuracy with every BatchNorm normalising by its batch's statistics (running statistics
    neither used nor changed; every other module in eval mode). None without BatchNorm layers or
    without a batch of two or more samples."""
    layers = batchnorm_layers(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in layers:
        m.train()
        m.track_running_stats = False   # in train mode: batch statistics, buffers untouched
    correct = total = 0
    try:
        for x, y in loader if layers else ():
            if len(x) < 2:
                continue
            correct += (model(x.to(device)).argmax(dim=1).cpu() == y).sum().item()
            total += y.numel()
    finally:
        for m in layers:
            m.track_running_stats = True
        for m, mode in modes.items():
            m.train(mode)
    return correct / total if total else None


# -- the technique ------------------------------------------------------------------------------
def _after_structure(policy: Policy) -> bool:
    """Whether a technique of ``policy`` declares that it changes the structure (the depth and
    pruning stages can)."""
    return any(cls is not None and cls.declare(policy).structural
               for cls in (depth.select(policy), pruning.select(policy)))


def select(policy: Policy) -> type[Technique] | None:
    if policy.training.bn_recalibration_batches > 0 or _after_structure(policy):
        return BatchNormRecalibration
    return None


class BatchNormRecalibration(Technique):
    """Running statistics re-estimated after a structure change and, on request, after fine-tuning."""
    name = "batchnorm"
    section = "training"

    @classmethod
    def declare(cls, policy: Policy) -> Declaration:
        n = policy.training.bn_recalibration_batches
        return Declaration(label="BatchNorm recalibration", summary=f"BN recalibrated ({n} batches)" if n else "",
                           card_line=(f"BatchNorm statistics re-estimated over {n} training batches after "
                                      "fine-tuning" if n else ""))

    def __init__(self, policy, ctx, pipeline) -> None:
        super().__init__(policy, ctx, pipeline)
        self.requested = policy.training.bn_recalibration_batches
        structural = any(d.structural for d in pipeline.declarations)
        # A structure final after compress changed there; one that changes while training (gradual
        # pruning) changes at epoch ends, just before the loop measures the epoch's val accuracy.
        self.after_compress = structural and pipeline.structure_final_after_compress
        self.after_each_epoch = structural and not pipeline.structure_final_after_compress
        self.facts: dict[str, Any] = {}

    def compress(self, model: nn.Module) -> nn.Module:
        if self.after_compress:
            self.facts["after_compress"] = self._recalibrate(model, AFTER_STRUCTURE_BATCHES)
        return model

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        if self.after_each_epoch:   # the epoch's val accuracy (history) is measured right after
            self.facts["after_each_epoch"] = {**self._recalibrate(model, AFTER_STRUCTURE_BATCHES, measure=False),
                                              "epochs": epoch + 1}

    def after_finetune(self, model: nn.Module) -> nn.Module:
        unseen = self.after_each_epoch and "after_each_epoch" not in self.facts   # no epoch ran: shrunk only now
        batches = self.requested or (AFTER_STRUCTURE_BATCHES if unseen else 0)
        if batches:
            self.facts["after_finetune"] = self._recalibrate(model, batches)
        return model

    def _recalibrate(self, model: nn.Module, batches: int, measure: bool = True) -> dict[str, Any]:
        """Recalibrate on the training device (the model goes back where it was); with ``measure``,
        the val accuracy before and after."""
        home, device = device_of(model), self.ctx.device
        model.to(device)
        val = make_loader(self.ctx.data.val, EVAL_BATCH_SIZE, shuffle=False)
        before = evaluate(model, val, device) if measure and batchnorm_layers(model) else None
        train = make_loader(self.ctx.data.train, self.policy.training.batch_size, shuffle=True, seed=self.ctx.seed)
        done = recalibrate_batchnorm(model, train, max_batches=batches, device=device)
        facts: dict[str, Any] = asdict(done)
        if done.batches and measure:
            facts.update(val_accuracy_before=before, val_accuracy_after=evaluate(model, val, device))
        elif not done.layers:
            facts["note"] = "no BatchNorm layer with running statistics"
        model.to(home)
        return facts

    def proof(self) -> dict[str, Any]:
        return {"batchnorm": dict(self.facts)} if self.facts else {}
