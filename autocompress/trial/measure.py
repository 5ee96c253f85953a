"""Measuring a model: FLOPs and params of its structure, and accuracy, latency, peak memory,
size, energy and cost of its deployed form (``deploy.runtimes.deploy``: what is measured is
what ships).

Latency and its ratio to the baseline's are measured side by side (``measure_side_by_side``):
the trial's artifact and the baseline's model in turn, over several rounds, so the ratio
printed for a point (``speedup``, with its rounds and spread) does not divide two figures
taken minutes apart on a machine whose speed drifts.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from autocompress.compress import Technique
from autocompress.deploy.agreement import check_predictions
from autocompress.deploy.runtimes import Deployment, deploy
from autocompress.errors import TrialFailed
from autocompress.metrics import counters
from autocompress.metrics.accuracy import evaluate, predict
from autocompress.metrics.cost import cost_usd_per_1k
from autocompress.metrics.energy import measure_energy
from autocompress.metrics.flops import count_flops
from autocompress.metrics.latency import Ratio, measure_latency, measure_side_by_side
from autocompress.metrics.memory import track_peak_memory
from autocompress.metrics.size import count_params
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


def deployed(model: nn.Module, plan: TrialPlan, ctx: TrialContext, example: torch.Tensor) -> Deployment:
    """``model`` (its number format applied) in the plan's runtime, on the target device; a
    conversion failure is known by the plan's ``failure_key`` (``TrialContext.failures``)."""
    dev = ctx.target.device
    try:
        return deploy(model.to(dev).eval(), plan.runtime.name, example.to(dev), device=dev,
                      threads=ctx.target.resolved_threads)
    except TrialFailed as exc:
        raise TrialFailed(exc.reason, known_as=plan.failure_key) from None


def preview_costs(model: nn.Module, plan: TrialPlan, ctx: TrialContext, example: torch.Tensor, *,
                  max_time_s: float = PREVIEW_MAX_TIME_S) -> Preview:
    """FLOPs and params of the compressed, untrained model, and its latency and size: in its
    deployed form when ``plan.previews_deployment`` (fresh copies of the techniques that set
    the number format run on a copy, then ``deploy``; neither latency nor size depends on the
    weights' values), else as the float model run eagerly. A runtime that cannot convert the
    deployed form fails the trial here, before training."""
    model.eval()
    costs = structure_metrics(model, example)
    if plan.previews_deployment:
        formatted = copy.deepcopy(model)
        for technique, declared in zip(plan.pipeline.build(ctx), plan.pipeline.declarations):
            if declared.number_format is not None:
                formatted = technique.post_training(technique.after_finetune(technique.before_finetune(formatted)))
        shipped = deployed(formatted, plan, ctx, example)
    else:
        shipped = deploy(model.to(ctx.target.device), "eager", example.to(ctx.target.device),
                         device=ctx.target.device, threads=ctx.target.resolved_threads)
    lat = measure_latency(shipped.module, example, device=ctx.target.device, batch_size=ctx.target.batch_size,
                          threads=shipped.threads, max_time_s=min(max_time_s, ctx.target.max_time_s))
    model.to("cpu")
    costs.update({"latency_ms": lat.median_ms, "size_mb": shipped.size_mb, **_cost(lat.median_ms, ctx)})
    return Preview(costs, deployed=plan.previews_deployment)


def finish(model: nn.Module, techniques: list[Technique], plan: TrialPlan, ctx: TrialContext
           ) -> tuple[nn.Module, Deployment, dict]:
    """The trained model's number format applied (``post_training``) and deployed in its
    runtime (the formatted model is returned too: it is what ``load_exported`` rebuilds); the
    validation predictions of the artifact compared with the eager model's
    (``TrialFailed`` when they show a broken conversion, ``deploy.agreement``)."""
    for t in techniques:
        model = t.post_training(model)
    dev = ctx.target.device
    shipped = deployed(model, plan, ctx, ctx.example_batch())
    proof = shipped.proof()
    if plan.runtime.converts:
        val = make_loader(ctx.data.val, ctx.eval_batch_size, shuffle=False)
        labels = torch.cat([torch.as_tensor(y).reshape(-1) for _, y in val])
        proof.update(check_predictions(predict(model, val, dev), predict(shipped.module, val, dev), labels).as_dict())
    else:
        proof["top1_agreement"] = 1.0   # the artifact is the eager model's own state dict
    return model, shipped, proof


def deployed_metrics(shipped: Deployment, ctx: TrialContext) -> dict[str, float | None]:
    """Accuracy (val and test), latency, speedup over the baseline, peak memory and size of the
    artifact as it ships: evaluated and timed through ``shipped.module``, sized by its bytes."""
    dev, t = ctx.target.device, ctx.target
    run = shipped.module
    acc = evaluate(run, make_loader(ctx.data.val, ctx.eval_batch_size, shuffle=False), dev)
    reference = {"baseline": ctx.teacher.to(dev)} if ctx.baseline_metrics else {}
    # CUDA: max allocated; CPU: growth of the process's peak RSS, a lower bound (metrics/memory.py)
    with track_peak_memory(dev) as peak:
        lat = measure_side_by_side({"trial": run, **reference}, ctx.example_batch(), device=dev,
                                   batch_size=t.batch_size, threads=shipped.threads,
                                   max_time_s=t.max_time_s * (1 + len(reference)))
    metrics = {**_throughput(run, ctx, shipped.threads), **_energy(run, ctx, shipped.threads), "accuracy": acc,
               "test_accuracy": evaluate(run, make_loader(ctx.data.test, ctx.eval_batch_size, shuffle=False), dev),
               # rounded: 0.40 - 0.35 is 0.05000000000000002 in floats, which broke 'accuracy_drop <= 0.05'
               "accuracy_drop": round(ctx.baseline_metrics.get("accuracy", acc) - acc, 12),
               "latency_ms": lat["trial"].median_ms, "latency_iqr_ms": lat["trial"].iqr_ms,
               "latency_runs": float(lat["trial"].runs), "peak_memory_mb": peak.mb,
               "size_mb": shipped.size_mb, "size_compressed_mb": shipped.compressed_size_mb,
               **_cost(lat["trial"].median_ms, ctx)}
    metrics.update(_ratios(lat, shipped, ctx))
    return metrics


def _cost(latency_ms: float, ctx: TrialContext) -> dict[str, float]:
    """Dollars per 1000 inferences at the latency measurement's throughput, where the study
    gives a price per device-hour."""
    t = ctx.target
    return {"cost_usd_per_1k": cost_usd_per_1k(t.price_per_hour, latency_ms, t.batch_size)} \
        if t.price_per_hour else {}


def _energy(run: nn.Module, ctx: TrialContext, threads: int) -> dict[str, float]:
    """Energy per inference from the target's hardware counters, where the study uses it
    (validation made sure a counter exists; one that fails now fails the trial, with why)."""
    t = ctx.target
    if not t.energy:
        return {}
    try:
        e = measure_energy(run, ctx.example_batch(), counters=counters.open_counters(t.device), device=t.device,
                           batch_size=t.batch_size, threads=threads)
    except counters.CounterError as exc:
        raise TrialFailed(f"energy_mj cannot be measured: {exc}") from None
    return {"energy_mj": e.median_mj, "energy_iqr_mj": e.iqr_mj, "energy_runs": float(e.windows)}


def _ratios(lat: dict, shipped: Deployment, ctx: TrialContext) -> dict[str, float]:
    """Speedup over the baseline (per-round ratios of side-by-side latencies) and size ratio
    (bytes); the baseline itself is 1 by definition."""
    if "baseline" not in lat:
        return {"speedup": 1.0, "speedup_iqr": 0.0, "speedup_rounds": 0.0, "size_ratio": 1.0}
    ratio = Ratio.of(list(lat["baseline"].per_round), list(lat["trial"].per_round))
    base_size = ctx.baseline_metrics.get("size_mb")
    return {"speedup": ratio.median, "speedup_iqr": ratio.iqr, "speedup_rounds": float(ratio.rounds),
            "size_ratio": shipped.size_mb / base_size if base_size else None}


def _throughput(run: nn.Module, ctx: TrialContext, threads: int) -> dict[str, float]:
    t = ctx.target
    if not t.throughput_batch_size:   # batch-N throughput is an objective of its own
        return {}
    big = measure_latency(run, ctx.example_batch(), device=t.device, batch_size=t.throughput_batch_size,
                          threads=threads, max_time_s=t.max_time_s)
    return {"throughput_sps": t.throughput_batch_size / (big.median_ms / 1e3)}


def baseline_metrics(model: nn.Module, ctx: TrialContext) -> dict[str, float | None]:
    """Everything a trial measures, for the uncompressed model deployed as it is (eager, fp32)."""
    model.to("cpu").eval()
    example = ctx.example_batch()
    shipped = deploy(model.to(ctx.target.device), "eager", example.to(ctx.target.device), device=ctx.target.device,
                     threads=ctx.target.resolved_threads)
    return {**structure_metrics(model.to("cpu"), example), **deployed_metrics(shipped, ctx), "top1_agreement": 1.0,
            "accuracy_drop": 0.0}
