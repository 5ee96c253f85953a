"""Measuring a model: FLOPs and params of its structure, and accuracy, latency, peak memory
and size of its deployed form (run by its runtime, sized by its artifact where it has one)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from autocompress.deploy.runtimes import Runtime, build_runtime, check_predictions
from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate, predict
from autocompress.metrics.flops import count_flops
from autocompress.metrics.latency import measure_latency
from autocompress.metrics.memory import track_peak_memory
from autocompress.metrics.size import compressed_size_mb, count_params, size_mb
from autocompress.trial.context import TrialContext
from autocompress.trial.plan import TrialPlan
from autocompress.trial.result import Preview
from autocompress.zoo.data import make_loader

PREVIEW_MAX_TIME_S = 0.3   # the preview's latency run is capped shorter than the final one


def structure_metrics(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """FLOPs and params of a floating-point model (before int8 conversion)."""
    params, nonzero = count_params(model)
    return {"flops": float(count_flops(model, example)), "params": float(params),
            "nonzero_params": float(nonzero)}


def preview_costs(model: nn.Module, plan: TrialPlan, ctx: TrialContext, example: torch.Tensor) -> Preview:
    """FLOPs and params of the compressed, untrained model, and its latency and size: in its
    deployed form when ``plan.previews_deployment`` (a fresh quantization technique's
    ``post_training`` on a copy, then the runtime; neither latency nor size depends on the
    weights' values), else as the float model run eagerly. A runtime that cannot convert the
    deployed form fails the trial here, before training."""
    model.eval()
    costs = structure_metrics(model, example)
    deployed, runtime = model, None
    if plan.previews_deployment:
        deployed = copy.deepcopy(model)
        # fresh copies of the techniques that set the number format, run on the untrained copy
        for technique, declared in zip(plan.pipeline.build(ctx), plan.pipeline.declarations):
            if declared.number_format is not None:
                deployed = technique.post_training(technique.after_finetune(technique.before_finetune(deployed)))
        runtime = runtime_for(deployed, plan, ctx, example)
    deployed.to(ctx.target.device)  # timed where it will run (the inputs go there too)
    lat = measure_latency(runtime.module if runtime else deployed, example, device=ctx.target.device,
                          batch_size=ctx.target.batch_size, threads=ctx.target.threads,
                          max_time_s=min(PREVIEW_MAX_TIME_S, ctx.target.max_time_s))
    model.to("cpu")
    artifact = runtime is not None and runtime.artifact is not None
    costs.update({"latency_ms": lat.median_ms, "size_mb": runtime.size_mb if artifact else size_mb(deployed)})
    return Preview(costs, deployed=plan.previews_deployment)


def deployed_metrics(model: nn.Module, ctx: TrialContext, *, runtime: Runtime | None = None
                     ) -> dict[str, float | None]:
    """Accuracy (val and test), latency, peak memory, size of the model as it will be deployed:
    run by ``runtime.module`` when given, sized by its artifact where it has one (TorchScript
    archive, ONNX model), else by ``model``'s state dict."""
    dev, t = ctx.target.device, ctx.target
    model.to(dev).eval()
    run = runtime.module if runtime is not None else model
    acc = evaluate(run, make_loader(ctx.data.val, ctx.eval_batch_size, shuffle=False), dev)
    # CUDA: max allocated; CPU: growth of the process's peak RSS, a lower bound (metrics/memory.py)
    with track_peak_memory(dev) as peak:
        lat = measure_latency(run, ctx.example_batch(), device=dev, batch_size=t.batch_size,
                              threads=t.threads, max_time_s=t.max_time_s)
    artifact = runtime is not None and runtime.artifact is not None
    throughput = {}
    if t.throughput_batch_size:  # batch-N throughput is an objective of its own
        big = measure_latency(run, ctx.example_batch(), device=dev, batch_size=t.throughput_batch_size,
                              threads=t.threads, max_time_s=t.max_time_s)
        throughput = {"throughput_sps": t.throughput_batch_size / (big.median_ms / 1e3)}
    return {
        **throughput,
        "accuracy": acc,
        "test_accuracy": evaluate(run, make_loader(ctx.data.test, ctx.eval_batch_size, shuffle=False), dev),
        # rounded: 0.40 - 0.35 is 0.05000000000000002 in floats, which broke 'accuracy_drop <= 0.05'
        "accuracy_drop": round(ctx.baseline_metrics.get("accuracy", acc) - acc, 12),
        "latency_ms": lat.median_ms,
        "latency_iqr_ms": lat.iqr_ms,
        "latency_runs": float(lat.runs),
        "peak_memory_mb": peak.mb,
        "size_mb": runtime.size_mb if artifact else size_mb(model),
        "size_compressed_mb": runtime.compressed_size_mb if artifact else compressed_size_mb(model),
    }


def runtime_for(model: nn.Module, plan: TrialPlan, ctx: TrialContext, example: torch.Tensor) -> Runtime:
    """``model`` (moved to the target device) converted for the plan's runtime; a conversion
    failure is known by the plan's ``failure_key`` (``TrialContext.failures``)."""
    dev = ctx.target.device
    try:
        return build_runtime(model.to(dev).eval(), plan.runtime.name, example.to(dev), device=dev,
                             threads=ctx.target.threads)
    except TrialFailed as exc:
        raise TrialFailed(exc.reason, known_as=plan.failure_key) from None


def deploy_runtime(model: nn.Module, plan: TrialPlan, ctx: TrialContext) -> tuple[Runtime, dict]:
    """``model`` converted for the plan's runtime, its validation predictions re-checked against
    the eager model's (``TrialFailed`` when the conversion fails or changes them)."""
    dev = ctx.target.device
    runtime = runtime_for(model, plan, ctx, ctx.example_batch())
    proof = {**runtime.proof(), "size_source": runtime.artifact_kind if runtime.artifact else "state dict"}
    if plan.runtime.converts:
        val = make_loader(ctx.data.val, ctx.eval_batch_size, shuffle=False)
        proof.update(check_predictions(predict(model, val, dev), predict(runtime.module, val, dev)).as_dict())
    return runtime, proof
