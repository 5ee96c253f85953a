"""run_trial(policy, context) -> TrialResult: one compression policy, applied for real.

Knows nothing of Optuna, so it is testable alone. Reads top to bottom:
copy the baseline -> structural compression -> cheap metrics (pre-screen) -> fine-tune ->
finish structure -> post-training quantization -> measure.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate
from autocompress.metrics.flops import count_flops
from autocompress.metrics.latency import measure_latency
from autocompress.metrics.size import compressed_size_mb, count_params, size_mb
from autocompress.policy import Policy
from autocompress.techniques import build_techniques
from autocompress.training.loop import FitResult, fine_tune, make_loader
from autocompress.zoo.data import DataBundle


@dataclass
class TargetSettings:
    """Where latency is measured (the deployment target)."""
    device: str = "cpu"
    batch_size: int = 1
    threads: int | None = 1
    max_time_s: float = 1.0


@dataclass
class TrialContext:
    data: DataBundle
    teacher: nn.Module                        # the trained baseline; never modified
    baseline_metrics: dict[str, float]        # accuracy etc. of the teacher
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # training device
    target: TargetSettings = field(default_factory=TargetSettings)
    epochs: int = 3
    seed: int = 0
    eval_batch_size: int = 256
    # Called with the cheap metrics of the compressed, untrained model; returns a reason to
    # stop before training (a hard constraint already broken), or None.
    prescreen: Callable[[dict[str, float]], str | None] | None = None
    # Called after each epoch with (epoch, history row); returns a reason to stop early.
    on_epoch: Callable[[int, dict[str, float]], str | None] | None = None

    def example_batch(self, n: int = 2) -> torch.Tensor:
        loader = make_loader(self.data.train, n, shuffle=False)
        return next(iter(loader))[0]


@dataclass
class TrialResult:
    policy: Policy
    metrics: dict[str, float]
    proof: dict[str, Any]
    history: list[dict[str, float]]
    timings: dict[str, float]
    measured_on: dict[str, Any]
    model: nn.Module | None = None
    stopped: str = ""                  # non-empty: pre-screened or stopped early, and why
    epochs_run: int = 0


class Prescreened(Exception):
    """The compressed model already breaks a hard constraint; no training was done."""

    def __init__(self, reason: str, metrics: dict[str, float]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = metrics


def structure_metrics(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """FLOPs and params of a floating-point model (before int8 conversion)."""
    params, nonzero = count_params(model)
    return {"flops": float(count_flops(model, example)), "params": float(params),
            "nonzero_params": float(nonzero)}


def deployed_metrics(model: nn.Module, ctx: TrialContext) -> dict[str, float]:
    """Accuracy (val and test), latency, size of the model as it will be deployed."""
    dev = ctx.target.device
    model.to(dev).eval()
    val = make_loader(ctx.data.val, ctx.eval_batch_size, shuffle=False)
    test = make_loader(ctx.data.test, ctx.eval_batch_size, shuffle=False)
    acc = evaluate(model, val, dev)
    lat = measure_latency(model, ctx.example_batch(), device=dev, batch_size=ctx.target.batch_size,
                          threads=ctx.target.threads, max_time_s=ctx.target.max_time_s)
    return {
        "accuracy": acc,
        "test_accuracy": evaluate(model, test, dev),
        "accuracy_drop": ctx.baseline_metrics.get("accuracy", acc) - acc,
        "latency_ms": lat.median_ms,
        "latency_iqr_ms": lat.iqr_ms,
        "latency_runs": float(lat.runs),
        "size_mb": size_mb(model),
        "size_compressed_mb": compressed_size_mb(model),
    }


def measured_on(ctx: TrialContext) -> dict[str, Any]:
    import platform

    t = ctx.target
    name = torch.cuda.get_device_name(t.device) if t.device.startswith("cuda") else platform.processor() or "cpu"
    return {"device": t.device, "device_name": name, "threads": t.threads, "batch_size": t.batch_size,
            "torch": torch.__version__, "train_device": str(ctx.device)}


def run_trial(policy: Policy, ctx: TrialContext, *, keep_model: bool = True) -> TrialResult:
    """Apply ``policy`` to a copy of the baseline, fine-tune, measure.

    Raises ``TrialFailed`` (technique cannot apply, NaN loss, out of memory) and
    ``Prescreened`` (a hard constraint is broken before training).
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[f"{name}_s"] = round(now - clock, 4)
        clock = now

    torch.manual_seed(ctx.seed)
    example = ctx.example_batch()
    model = copy.deepcopy(ctx.teacher).to("cpu").requires_grad_(True)
    try:
        techniques = build_techniques(policy, ctx)
        for t in techniques:
            model = t.compress(model)
        lap("compress")

        cheap = structure_metrics(model, example)
        if ctx.prescreen is not None:
            model.eval()
            cheap_lat = measure_latency(model, example, device=ctx.target.device,
                                        batch_size=ctx.target.batch_size, threads=ctx.target.threads,
                                        max_time_s=min(0.3, ctx.target.max_time_s))
            cheap.update({"latency_ms": cheap_lat.median_ms, "size_mb": size_mb(model)})
            reason = ctx.prescreen(cheap)
            if reason:
                raise Prescreened(reason, cheap)
        lap("cheap_metrics")

        for t in techniques:
            model = t.before_finetune(model)
        fit: FitResult = fine_tune(
            model, ctx.data.train, ctx.data.val, policy, epochs=ctx.epochs, device=ctx.device,
            seed=ctx.seed, techniques=techniques, on_epoch=ctx.on_epoch,
            batch_transform=_batch_transform(policy, ctx), eval_batch_size=ctx.eval_batch_size)
        timings["data_s"] = round(fit.data_seconds, 4)
        lap("finetune")

        for t in techniques:
            model = t.after_finetune(model)
        model.to("cpu").eval()
        structure = structure_metrics(model, example)
        for t in techniques:
            model = t.post_training(model)
        lap("post_training")

        metrics = {**structure, **deployed_metrics(model, ctx)}
        lap("measure")
    except torch.OutOfMemoryError as exc:
        raise TrialFailed(f"out of memory: {str(exc).splitlines()[0][:200]}") from None
    except MemoryError:
        raise TrialFailed("out of memory (CPU)") from None

    proof: dict[str, Any] = {}
    for t in techniques:
        proof.update(t.proof())
    proof["size_before_mb"] = ctx.baseline_metrics.get("size_mb")
    proof["size_after_mb"] = metrics["size_mb"]
    return TrialResult(policy=policy, metrics=metrics, proof=proof, history=fit.history, timings=timings,
                       measured_on=measured_on(ctx), model=model if keep_model else None,
                       stopped=fit.stop_reason, epochs_run=fit.epochs_run)


def _batch_transform(policy: Policy, ctx: TrialContext):
    try:
        from autocompress.training.augment import build_batch_transform
    except ModuleNotFoundError:
        return None
    return build_batch_transform(policy.augmentation, ctx.data, seed=ctx.seed)
