"""run_trial(policy, context) -> TrialResult: one compression policy, applied for real.

Knows nothing of Optuna, so it is testable alone. Reads top to bottom:
copy the baseline -> structural compression -> cost preview (pre-screen) -> fine-tune ->
finish structure -> post-training quantization -> runtime (convert, re-check) -> measure.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Any, Callable

import torch
from torch import nn

from autocompress.compress import Technique
from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate
from autocompress.spec.policy import Policy
from autocompress.training.augment import build_batch_transform
from autocompress.training.loop import FitPlan, FitResult, fine_tune
from autocompress.zoo.data import make_loader
from autocompress.trial.context import KnownFailure, TrialContext
from autocompress.trial.measure import deployed_metrics, finish, preview_costs, structure_metrics
from autocompress.trial.plan import TrialPlan
from autocompress.trial.result import MeasuredOn, Preview, Screen, Stopped, TrialResult


class _Laps:
    """Wall time of each phase of a trial, in seconds."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[f"{name}_s"] = round(now - self._clock, 4)
        self._clock = now


def run_trial(policy: Policy, ctx: TrialContext, *, keep_model: bool = True) -> TrialResult:
    """Apply ``policy`` to a copy of the baseline, fine-tune, measure.

    Raises ``TrialFailed`` (technique cannot apply, NaN loss, out of memory) and
    ``Stopped`` (pre-screened before training, or stopped early).
    """
    plan = TrialPlan(policy)
    _refuse_known(plan, ctx)
    torch.manual_seed(ctx.seed)
    laps = _Laps()
    try:
        techniques = plan.pipeline.build(ctx)
        model, preview = _compress(plan, ctx, techniques, laps)
        model, fit, proof = _fine_tune(model, plan, ctx, techniques, preview)
        laps.timings["data_s"] = round(fit.data_seconds, 4)
        laps("finetune")
        for t in techniques:
            model = t.after_finetune(model)
        model.to("cpu").eval()
        structure = structure_metrics(model, ctx.example_batch())
        model, shipped, runtime_proof = finish(model, techniques, plan, ctx)
        laps("deploy")
        metrics = {**structure, **deployed_metrics(shipped, ctx), "top1_agreement": runtime_proof["top1_agreement"]}
        laps("measure")
    except torch.OutOfMemoryError as exc:
        raise TrialFailed(f"out of memory: {str(exc).splitlines()[0][:200]}") from None
    except MemoryError:
        raise TrialFailed("out of memory (CPU)") from None
    for t in techniques:
        proof.update(t.proof())
    proof.update(runtime=runtime_proof, size_before_mb=ctx.baseline_metrics.get("size_mb"),
                 size_after_mb=metrics["size_mb"])
    where = MeasuredOn.here(device=ctx.target.device, threads=shipped.threads,
                            batch_size=ctx.target.batch_size, train_device=str(ctx.device), where=ctx.where)
    return TrialResult(policy=policy, metrics=metrics, proof=proof, history=tuple(fit.history),
                       timings=laps.timings, measured_on=where, preview=preview.value, epochs_run=fit.epochs_run,
                       model=model if keep_model else None, deployment=shipped if keep_model else None)


def preview_policy(policy: Policy, ctx: TrialContext) -> tuple[Preview, float]:
    """What ``policy`` costs before any training, and how accurate it is untrained: the
    structure compressed as a trial would (``Preview``, cached under ``ctx.preview_key`` so the
    trial that runs it later reuses it) and the compressed model's val accuracy with no
    fine-tuning. Raises ``TrialFailed`` where the trial would fail before training."""
    plan = TrialPlan(policy)
    _refuse_known(plan, ctx)
    torch.manual_seed(ctx.seed)
    model = copy.deepcopy(ctx.teacher).to("cpu").requires_grad_(True)   # gradient criteria need it
    for t in plan.pipeline.build(ctx):
        model = t.compress(model)
    preview = _Preview(plan, ctx).measure(model)
    accuracy = evaluate(model, make_loader(ctx.data.val, ctx.eval_batch_size, shuffle=False), "cpu")
    return preview, accuracy


def _refuse_known(plan: TrialPlan, ctx: TrialContext) -> None:
    """End before any work a policy that cannot run: techniques that conflict, a format the
    target device has no kernels for, a runtime failure an earlier trial met."""
    if conflict := plan.pipeline.conflict():
        raise TrialFailed(conflict)
    if reason := plan.refusal(ctx.target.device):   # a format the device or runtime cannot run: remembered
        raise TrialFailed(reason, known_as=plan.failure_key)
    known: KnownFailure | None = ctx.failures.get(plan.runtime_key)
    if known is not None:
        raise TrialFailed(known.reason, known_as=plan.failure_key)


class _Preview:
    """The trial's preview: cached under ``ctx.preview_key``, and measured again (longer) when
    a pre-screening or early-stopping decision rests on it within its noise (``Screen``)."""

    def __init__(self, plan: TrialPlan, ctx: TrialContext) -> None:
        self.plan, self.ctx, self.key = plan, ctx, ctx.preview_key(plan)
        self.value: Preview | None = ctx.previews.get(self.key)
        self.untrained: nn.Module | None = None

    def measure(self, model: nn.Module) -> Preview:
        if self.ctx.prescreen is not None or self.ctx.on_epoch is not None:
            self.untrained = copy.deepcopy(model)   # kept to measure again if a decision needs it
        if self.value is None:
            self.value = self.ctx.previews.setdefault(
                self.key, preview_costs(model, self.plan, self.ctx, self.ctx.example_batch()))
        return self.value

    def screen(self, ask: Callable[[Preview], Screen]) -> Screen:
        verdict = ask(self.value)
        if verdict.borderline and self.untrained is not None and not self.value.remeasured:
            precise = preview_costs(self.untrained, self.plan, self.ctx, self.ctx.example_batch(),
                                    max_time_s=self.ctx.target.max_time_s)
            self.value = self.ctx.previews[self.key] = replace(precise, remeasured=True)
            verdict = ask(self.value)
        return Screen(verdict.reason)   # asked again after measuring again: what it says now stands


def _compress(plan: TrialPlan, ctx: TrialContext, techniques: list[Technique], laps: _Laps
              ) -> tuple[nn.Module, _Preview]:
    """A copy of the teacher, compressed, and its preview (``Stopped`` when it already breaks
    a hard constraint)."""
    preview = _Preview(plan, ctx)
    if preview.value is not None and ctx.prescreen is not None and (cached := ctx.prescreen(preview.value)).stops:
        raise Stopped(f"{cached.reason} (cached)", preview.value, stage="prescreen")
    model = copy.deepcopy(ctx.teacher).to("cpu").requires_grad_(True)
    for t in techniques:
        model = t.compress(model)
    laps("compress")
    preview.measure(model)
    if ctx.prescreen is not None and (verdict := preview.screen(ctx.prescreen)).reason is not None:
        raise Stopped(verdict.reason, preview.value, stage="prescreen")
    laps("cheap_metrics")
    return model, preview


def _fine_tune(model: nn.Module, plan: TrialPlan, ctx: TrialContext, techniques: list[Technique],
               preview: _Preview) -> tuple[nn.Module, FitResult, dict[str, Any]]:
    """Fine-tune with the techniques' hooks; ``Stopped`` when early stopping ends it."""
    for t in techniques:
        model = t.before_finetune(model)
    on_epoch = None
    if ctx.on_epoch is not None:
        on_epoch = lambda e, row: preview.screen(lambda p: ctx.on_epoch(e, row, p)).reason  # noqa: E731
    augment = build_batch_transform(plan.policy.augmentation, ctx.data, seed=ctx.seed, base_dir=ctx.base_dir)
    fit = fine_tune(model, ctx.data.train, ctx.data.val, plan.policy,
                    FitPlan(epochs=ctx.epochs, device=ctx.device, seed=ctx.seed, techniques=techniques,
                            batch_transform=augment, on_epoch=on_epoch, eval_batch_size=ctx.eval_batch_size))
    if fit.stopped_early:
        raise Stopped(fit.stop_reason, preview.value, stage="early_stopping", history=tuple(fit.history))
    return model, fit, dict(augment.describe()) if augment is not None else {}
