"""run_trial(policy, context) -> TrialResult: one compression policy, applied for real.

Knows nothing of Optuna, so it is testable alone. Reads top to bottom:
copy the baseline -> structural compression -> cheap metrics (pre-screen) -> fine-tune ->
finish structure -> post-training quantization -> runtime (convert, re-check) -> measure.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate, predict
from autocompress.metrics.flops import count_flops
from autocompress.metrics.latency import measure_latency
from autocompress.metrics.memory import track_peak_memory
from autocompress.metrics.size import compressed_size_mb, count_params, size_mb
from autocompress.spec.policy import Policy
from autocompress.deploy.runtimes import Runtime, build_runtime, check_predictions
from autocompress.compress import build_techniques
from autocompress.training.augment import build_batch_transform
from autocompress.training.loop import FitResult, fine_tune, make_loader
from autocompress.zoo.data import DataBundle


@dataclass
class TargetSettings:
    """Where latency is measured (the deployment target)."""
    device: str = "cpu"
    batch_size: int = 1
    threads: int | None = 1
    max_time_s: float = 1.0
    throughput_batch_size: int | None = None   # also measure throughput_sps at this batch size


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
    # Called after each epoch with (epoch, history row, cheap metrics); returns a reason to
    # stop early (multi-objective early stopping), or None.
    on_epoch: Callable[[int, dict[str, float], dict[str, float]], str | None] | None = None
    # Cheap metrics already measured, by ``cost_key``.
    cheap_cache: dict[str, dict[str, float]] = field(default_factory=dict)
    # Failures that every policy with the same ``runtime_key`` meets on this model, with the
    # reason (a runtime that cannot run a number format): such a trial ends before training.
    known_failures: dict[str, str] = field(default_factory=dict)

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
    epochs_run: int = 0
    cheap_metrics: dict[str, float] = field(default_factory=dict)  # of the untrained compressed model


class Stopped(Exception):
    """The trial was ended on purpose: ``stage`` "prescreen" (a hard constraint is broken by
    the structure, before any training) or "early_stopping" (clearly dominated mid-training)."""

    def __init__(self, reason: str, metrics: dict[str, float], *, stage: str,
                 history: list[dict[str, float]] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = metrics
        self.stage = stage
        self.history = history or []


def structure_key(policy: Policy) -> str:
    """What decides the compressed structure (and so FLOPs, params, float latency and size)."""
    import json

    return json.dumps(policy.to_dict()["pruning"], sort_keys=True)


def runtime_key(policy: Policy) -> str:
    """What decides whether the deployed model converts to its runtime: the runtime and the
    number format (pruning changes widths, not the operators; training changes weights)."""
    q = policy.quantization
    fmt = f"{q.mode}/{'per-channel' if q.per_channel else 'per-tensor'}" if q.mode.endswith("int8") else q.mode
    return f"{policy.runtime.backend}:{fmt}"


def cost_key(policy: Policy) -> str:
    """What decides the cheap metrics (``cost_metrics``): the structure, and for a policy whose
    deployed form is previewed, its number format and runtime."""
    return f"{structure_key(policy)} {runtime_key(policy)}" if previews_deployment(policy) else structure_key(policy)


def previews_deployment(policy: Policy) -> bool:
    """Whether the cheap metrics time and size the deployed form (number format + runtime)
    of the compressed, untrained model, which is then the trial's final latency and size:
    not for gradual pruning (the structure changes during fine-tuning) nor torch.compile
    (compiling costs tens of seconds per model)."""
    return policy.pruning.method != "gradual" and policy.runtime.backend != "compile"


def cost_metrics(model: nn.Module, policy: Policy, ctx: TrialContext, example: torch.Tensor) -> dict[str, float]:
    """FLOPs and params of the compressed, untrained model, and its latency and size: in its
    deployed form when ``previews_deployment`` (a fresh quantization technique's
    ``post_training`` on a copy, then the runtime; neither latency nor size depends on the
    weights' values), else as the float model run eagerly. ``deployed`` is 1.0 for a preview.
    A runtime that cannot convert the deployed form fails the trial here, before training."""
    from autocompress.compress import quantization

    model.eval()
    cheap = structure_metrics(model, example)
    deployed, runtime, preview = model, None, previews_deployment(policy)
    if preview:
        deployed = copy.deepcopy(model)
        if (q := quantization.build(policy, ctx)) is not None:
            deployed = q.post_training(q.after_finetune(q.before_finetune(deployed)))
        runtime = _runtime_for(deployed, policy, ctx, example)
    deployed.to(ctx.target.device)  # timed where it will run (the inputs go there too)
    lat = measure_latency(runtime.module if runtime else deployed, example, device=ctx.target.device,
                          batch_size=ctx.target.batch_size, threads=ctx.target.threads,
                          max_time_s=min(0.3, ctx.target.max_time_s))
    model.to("cpu")
    artifact = runtime is not None and runtime.artifact is not None
    cheap.update({"latency_ms": lat.median_ms, "size_mb": runtime.size_mb if artifact else size_mb(deployed),
                  "deployed": float(preview)})
    return cheap


def structure_metrics(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """FLOPs and params of a floating-point model (before int8 conversion)."""
    params, nonzero = count_params(model)
    return {"flops": float(count_flops(model, example)), "params": float(params),
            "nonzero_params": float(nonzero)}


def deployed_metrics(model: nn.Module, ctx: TrialContext, *, runtime: Runtime | None = None
                     ) -> dict[str, float]:
    """Accuracy (val and test), latency, peak memory, size of the model as it will be deployed:
    run by ``runtime.module`` when given, sized by its artifact where it has one (TorchScript
    archive, ONNX model), else by ``model``'s state dict."""
    dev = ctx.target.device
    model.to(dev).eval()
    run = runtime.module if runtime is not None else model
    val = make_loader(ctx.data.val, ctx.eval_batch_size, shuffle=False)
    test = make_loader(ctx.data.test, ctx.eval_batch_size, shuffle=False)
    acc = evaluate(run, val, dev)
    # CUDA: max allocated; CPU: growth of the process's peak RSS, a lower bound (metrics/memory.py)
    with track_peak_memory(dev) as peak:
        lat = measure_latency(run, ctx.example_batch(), device=dev, batch_size=ctx.target.batch_size,
                              threads=ctx.target.threads, max_time_s=ctx.target.max_time_s)
    artifact = runtime is not None and runtime.artifact is not None
    throughput = {}
    if ctx.target.throughput_batch_size:  # batch-N throughput is an objective of its own
        big = measure_latency(run, ctx.example_batch(), device=dev, batch_size=ctx.target.throughput_batch_size,
                              threads=ctx.target.threads, max_time_s=ctx.target.max_time_s)
        throughput = {"throughput_sps": ctx.target.throughput_batch_size / (big.median_ms / 1e3)}
    return {
        **throughput,
        "accuracy": acc,
        "test_accuracy": evaluate(run, test, dev),
        # rounded: 0.40 - 0.35 is 0.05000000000000002 in floats, which broke 'accuracy_drop <= 0.05'
        "accuracy_drop": round(ctx.baseline_metrics.get("accuracy", acc) - acc, 12),
        "latency_ms": lat.median_ms,
        "latency_iqr_ms": lat.iqr_ms,
        "latency_runs": float(lat.runs),
        "peak_memory_mb": peak.mb,
        "size_mb": runtime.size_mb if artifact else size_mb(model),
        "size_compressed_mb": runtime.compressed_size_mb if artifact else compressed_size_mb(model),
    }


def _runtime_for(model: nn.Module, policy: Policy, ctx: TrialContext, example: torch.Tensor) -> Runtime:
    """``model`` (moved to the target device) converted for the policy's runtime; a conversion
    failure is ``known_as`` the policy's ``runtime_key`` (``TrialContext.known_failures``)."""
    dev = ctx.target.device
    try:
        return build_runtime(model.to(dev).eval(), policy.runtime.backend, example.to(dev), device=dev,
                             threads=ctx.target.threads)
    except TrialFailed as exc:
        raise TrialFailed(exc.reason, known_as=runtime_key(policy)) from None


def deploy_runtime(model: nn.Module, policy: Policy, ctx: TrialContext) -> tuple[Runtime, dict[str, Any]]:
    """``model`` converted for the policy's runtime, its validation predictions re-checked
    against the eager model's (``TrialFailed`` when the conversion fails or changes them; a
    conversion failure is ``known_as`` the policy's ``runtime_key``)."""
    dev, backend = ctx.target.device, policy.runtime.backend
    runtime = _runtime_for(model, policy, ctx, ctx.example_batch())
    proof = {**runtime.proof(), "size_source": runtime.artifact_kind if runtime.artifact else "state dict"}
    if backend != "eager":
        val = make_loader(ctx.data.val, ctx.eval_batch_size, shuffle=False)
        proof.update(check_predictions(predict(model, val, dev), predict(runtime.module, val, dev)).as_dict())
    return runtime, proof


def measured_on(ctx: TrialContext) -> dict[str, Any]:
    import platform

    t = ctx.target
    name = torch.cuda.get_device_name(t.device) if t.device.startswith("cuda") else platform.processor() or "cpu"
    return {"device": t.device, "device_name": name, "threads": t.threads, "batch_size": t.batch_size,
            "torch": torch.__version__, "train_device": str(ctx.device)}


def run_trial(policy: Policy, ctx: TrialContext, *, keep_model: bool = True) -> TrialResult:
    """Apply ``policy`` to a copy of the baseline, fine-tune, measure.

    Raises ``TrialFailed`` (technique cannot apply, NaN loss, out of memory) and
    ``Stopped`` (pre-screened before training, or stopped early).
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[f"{name}_s"] = round(now - clock, 4)
        clock = now

    if (known := ctx.known_failures.get(runtime_key(policy))) is not None:
        raise TrialFailed(known, known_as=runtime_key(policy))
    torch.manual_seed(ctx.seed)
    example = ctx.example_batch()
    model = copy.deepcopy(ctx.teacher).to("cpu").requires_grad_(True)
    try:
        techniques = build_techniques(policy, ctx)
        key = cost_key(policy)
        cheap = ctx.cheap_cache.get(key)
        if cheap is not None and ctx.prescreen is not None and (reason := ctx.prescreen(cheap)):
            raise Stopped(f"{reason} (cached)", cheap, stage="prescreen")
        for t in techniques:
            model = t.compress(model)
        lap("compress")

        if cheap is None:
            cheap = ctx.cheap_cache[key] = cost_metrics(model, policy, ctx, example)
        if ctx.prescreen is not None and (reason := ctx.prescreen(cheap)):
            raise Stopped(reason, cheap, stage="prescreen")
        lap("cheap_metrics")

        for t in techniques:
            model = t.before_finetune(model)
        on_epoch = (lambda e, row: ctx.on_epoch(e, row, cheap)) if ctx.on_epoch else None
        augment = build_batch_transform(policy.augmentation, ctx.data, seed=ctx.seed)
        fit: FitResult = fine_tune(
            model, ctx.data.train, ctx.data.val, policy, epochs=ctx.epochs, device=ctx.device,
            seed=ctx.seed, techniques=techniques, on_epoch=on_epoch,
            batch_transform=augment, eval_batch_size=ctx.eval_batch_size)
        if fit.stopped_early:
            raise Stopped(fit.stop_reason, cheap, stage="early_stopping", history=fit.history)
        timings["data_s"] = round(fit.data_seconds, 4)
        lap("finetune")

        for t in techniques:
            model = t.after_finetune(model)
        model.to("cpu").eval()
        structure = structure_metrics(model, example)
        for t in techniques:
            model = t.post_training(model)
        lap("post_training")

        runtime, runtime_proof = deploy_runtime(model, policy, ctx)
        lap("runtime")

        metrics = {**structure, **deployed_metrics(model, ctx, runtime=runtime)}
        lap("measure")
    except torch.OutOfMemoryError as exc:
        raise TrialFailed(f"out of memory: {str(exc).splitlines()[0][:200]}") from None
    except MemoryError:
        raise TrialFailed("out of memory (CPU)") from None

    proof: dict[str, Any] = {}
    for t in techniques:
        proof.update(t.proof())
    if augment is not None:
        proof.update(augment.describe())
    proof["runtime"] = runtime_proof
    proof["size_before_mb"] = ctx.baseline_metrics.get("size_mb")
    proof["size_after_mb"] = metrics["size_mb"]
    return TrialResult(policy=policy, metrics=metrics, proof=proof, history=fit.history, timings=timings,
                       measured_on=measured_on(ctx), model=model if keep_model else None,
                       epochs_run=fit.epochs_run, cheap_metrics=cheap)
