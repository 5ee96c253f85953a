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


@torch.inference_mode()
def measure_latency(model: nn.Module, example: torch.Tensor, *, device: str = "cpu", batch_size: int = 1,
                    threads: int | None = 1, max_time_s: float = 1.0) -> LatencyStats:
    """Median latency of ``model(batch)`` for a batch of ``batch_size`` samples like ``example``."""
    model.eval()
    reps = -(-batch_size // example.shape[0])
    x = example.repeat(reps, *([1] * (example.dim() - 1)))[:batch_size].to(device)
    n_threads = threads or torch.get_num_threads()
    for _ in range(3):  # warm-up (allocator, lazy init, oneDNN primitive cache)
        model(x)
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=n_threads)
    m = timer.adaptive_autorange(threshold=0.05, min_run_time=min(0.05, max_time_s),
                                 max_run_time=max_time_s)
    return LatencyStats(median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3, runs=m.number_per_run * len(m.times),
                        batch_size=batch_size, threads=n_threads, device=device)
