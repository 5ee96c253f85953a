"""Latency with ``torch.utils.benchmark``: warm-up, repeated timed runs until the spread is
small or a time cap is hit, synchronized on CUDA. Reports median, IQR and run count."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.utils.benchmark as benchmark
from torch import nn


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    iqr_ms: float
    runs: int
    batch_size: int
    threads: int
    device: str

    def as_dict(self) -> dict:
        return asdict(self)


def batch_of(example: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A batch of ``batch_size`` samples: ``example``'s rows repeated as often as needed."""
    reps = -(-batch_size // example.shape[0])
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:batch_size]


@torch.inference_mode()
def measure_latency(model: nn.Module, example: torch.Tensor, *, device: str = "cpu", batch_size: int = 1,
                    threads: int | None = 1, max_time_s: float = 1.0) -> LatencyStats:
    """Median latency of ``model(batch)`` for a batch of ``batch_size`` samples like ``example``."""
    model.eval()
    x = batch_of(example, batch_size).to(device)
    n_threads = threads or torch.get_num_threads()
    for _ in range(3):  # warm-up (allocator, lazy init, oneDNN primitive cache)
        model(x)
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=n_threads)
    m = timer.adaptive_autorange(threshold=0.05, min_run_time=min(0.05, max_time_s),
                                 max_run_time=max_time_s)
    return LatencyStats(median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3, runs=m.number_per_run * len(m.times),
                        batch_size=batch_size, threads=n_threads, device=device)


ROUNDS = 5   # side-by-side rounds: enough for a median and an IQR, few enough to stay cheap


@dataclass(frozen=True)
class Ratio:
    """A ratio of latencies measured side by side: per-round ratios, their median and spread."""
    median: float
    iqr: float
    rounds: int

    @classmethod
    def of(cls, numerators: list[float], denominators: list[float]) -> "Ratio":
        per_round = sorted(n / d for n, d in zip(numerators, denominators))
        q1, q3 = quantile(per_round, 0.25), quantile(per_round, 0.75)
        return cls(median=quantile(per_round, 0.5), iqr=q3 - q1, rounds=len(per_round))


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted ``values``."""
    pos = q * (len(values) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


@torch.inference_mode()
def measure_side_by_side(models: dict[str, nn.Module], example: torch.Tensor, *, device: str = "cpu",
                         batch_size: int = 1, threads: int = 1, max_time_s: float = 1.0) -> dict[str, "SideBySide"]:
    """Latency of several models measured in turn, ``ROUNDS`` times, the order reversed every
    round: on a shared machine whose speed drifts by tens of percent within minutes, drift
    then hits every model alike, so their ratios (``Ratio.of`` on ``per_round``) are fair
    where two separate measurements are not. Returns each model's stats over its per-round
    medians (``per_round`` in ms, in round order)."""
    x = batch_of(example, batch_size).to(device)
    timers = {}
    for name, model in models.items():
        model.eval()
        for _ in range(3):  # warm-up (allocator, lazy init, oneDNN primitive cache)
            model(x)
        timers[name] = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads)
    rounds = ROUNDS
    budget = max(0.005, max_time_s / (rounds * len(models)))
    medians: dict[str, list[float]] = {name: [] for name in models}
    runs = dict.fromkeys(models, 0)
    for r in range(rounds):
        for name in (list(models) if r % 2 == 0 else list(reversed(models))):
            m = timers[name].blocked_autorange(min_run_time=budget)
            medians[name].append(m.median * 1e3)
            runs[name] += m.number_per_run * len(m.times)
    return {name: SideBySide(median_ms=quantile(sorted(v), 0.5),
                             iqr_ms=quantile(sorted(v), 0.75) - quantile(sorted(v), 0.25), runs=runs[name],
                             batch_size=batch_size, threads=threads, device=device, per_round=tuple(v))
            for name, v in medians.items()}


@dataclass(frozen=True)
class SideBySide(LatencyStats):
    per_round: tuple[float, ...] = ()
