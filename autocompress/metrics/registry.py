"""The metric registry: every metric autocompress measures, declared once.

Config validation (objectives, constraints), pre-screening, early stopping, the report, the
trials table, the status table and the model card all read ``METRICS``; no other list of
metric names exists. A metric says what everyone needs to know about it:

- ``unit``: shown next to values, and it decides how a value is written (``format_value``;
  a missing value is "n/a"); ``short`` is its column head in the status table, where
  ``in_summary`` metrics are shown besides the objectives;
- ``direction``: which way is better (the default direction of an objective);
- ``kind``: ``quality`` (accuracy-like, known only after training) or ``cost``;
- ``final_at``: when its value is settled: ``structure`` (once the compressed structure is
  final: FLOPs, params), ``deployment`` (once the deployed form, number format plus runtime,
  exists: latency, size) or ``training`` (depends on the trained weights);
- ``previewed``: measured on the untrained compressed model's deployed form before training
  (``trial.measure.preview_costs``), so pre-screening and early stopping can judge it;
- ``runtime_dependent``: differs between runtimes for the same structure and format;
- ``noise_rtol``: relative noise of one measurement on a shared machine (latency);
- ``objective``: whether an objective or constraint may use it (detail columns may not);
- ``unavailable(device)``: why this machine cannot measure it for that target device, or None;
  ``needs``: the ``target`` setting it cannot be measured without (a price, a batch size).
  A study that uses such a metric as an objective or constraint is refused at validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

from autocompress.metrics.counters import energy_unavailable
from autocompress.metrics.memory import peak_memory_unavailable

Direction = Literal["maximize", "minimize"]
Stage = Literal["structure", "deployment", "training"]


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    direction: Direction
    description: str
    kind: Literal["quality", "cost"] = "cost"
    final_at: Stage = "training"
    previewed: bool = False
    runtime_dependent: bool = False
    noise_rtol: float = 0.0
    objective: bool = True
    short: str = ""
    in_summary: bool = False
    spread: str | None = None      # the metric holding this one's spread (IQR) over ``rounds``
    rounds: str | None = None
    exact: bool = False            # a count or a byte size: a ratio of two values is exact
    side_by_side: str | None = None  # the ratio to the baseline measured side by side (latency: speedup)
    unavailable: Callable[[str], str | None] | None = None
    needs: str | None = None       # a target setting (TargetSpec field) it cannot be measured without

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is at least as good as ``b`` within this metric's noise."""
        if self.direction == "minimize":
            return a <= b * (1 + self.noise_rtol) if b >= 0 else a <= b
        return a >= b * (1 - self.noise_rtol) if b >= 0 else a >= b

    @property
    def head(self) -> str:
        return self.short or self.name


_REGISTRY: tuple[Metric, ...] = (
    Metric("accuracy", "fraction", "maximize", "fraction of the validation split classified correctly",
           kind="quality", short="acc", in_summary=True),
    Metric("test_accuracy", "fraction", "maximize", "fraction of the test split classified correctly",
           kind="quality", short="test acc"),
    Metric("accuracy_drop", "fraction", "minimize", "baseline validation accuracy minus this model's",
           kind="quality", short="drop", in_summary=True),
    Metric("latency_ms", "ms", "minimize", "median latency of one batch on the target device, milliseconds",
           final_at="deployment", previewed=True, runtime_dependent=True, noise_rtol=0.05, short="lat ms",
           in_summary=True, side_by_side="speedup"),
    Metric("latency_iqr_ms", "ms", "minimize", "interquartile range of the latency runs, milliseconds",
           final_at="deployment", runtime_dependent=True, objective=False),
    Metric("latency_runs", "count", "maximize", "timed runs behind the latency median",
           objective=False),
    Metric("top1_agreement", "fraction", "maximize",
           "top-1 agreement of the deployed artifact's predictions with the eager model's on the validation "
           "split (1 for the eager runtime)", kind="quality", short="agree"),
    Metric("speedup", "x", "maximize",
           "baseline latency / this model's, median of per-round ratios measured side by side in one process",
           final_at="deployment", runtime_dependent=True, noise_rtol=0.05, short="speedup", in_summary=True,
           spread="speedup_iqr", rounds="speedup_rounds"),
    Metric("speedup_iqr", "x", "minimize", "interquartile range of the per-round speedups",
           final_at="deployment", runtime_dependent=True, objective=False),
    Metric("speedup_rounds", "count", "maximize", "rounds of the side-by-side measurement behind speedup",
           objective=False),
    Metric("size_ratio", "x", "minimize", "size_mb / the baseline's size_mb (bytes of the shipped artifacts)",
           final_at="deployment", runtime_dependent=True, exact=True),
    Metric("throughput_sps", "samples/s", "maximize",
           "samples per second at target.throughput_batch_size on the target device",
           final_at="deployment", runtime_dependent=True, noise_rtol=0.05, needs="throughput_batch_size"),
    Metric("cost_usd_per_1k", "USD", "minimize",
           "dollars per 1000 inferences: target.price_per_hour times the time 1000 samples take at the "
           "latency measurement's throughput (target.batch_size per latency_ms)",
           final_at="deployment", previewed=True, runtime_dependent=True, noise_rtol=0.05, short="$/1k",
           side_by_side="speedup", needs="price_per_hour"),
    Metric("energy_mj", "mJ", "minimize",
           "energy of one inference on the target device, millijoules: the difference of its hardware "
           "energy counter (NVML on CUDA, RAPL package zones on CPU; idle power included) over windows of "
           "at least 1 s of batches of target.batch_size, per sample; median over the windows",
           final_at="deployment", runtime_dependent=True, noise_rtol=0.05, short="mJ",
           spread="energy_iqr_mj", rounds="energy_runs", unavailable=energy_unavailable),
    Metric("energy_iqr_mj", "mJ", "minimize", "interquartile range of energy_mj over the counter windows",
           final_at="deployment", runtime_dependent=True, objective=False),
    Metric("energy_runs", "count", "maximize", "counter windows behind the energy_mj median", objective=False),
    Metric("peak_memory_mb", "MB", "minimize",
           "peak memory of inference on the target device, MB: CUDA max allocated (weights included); "
           "CPU growth of the process's peak RSS (a lower bound)",
           final_at="deployment", runtime_dependent=True, unavailable=peak_memory_unavailable),
    Metric("size_mb", "MB", "minimize",
           "serialized model, megabytes (10^6 bytes): the runtime's artifact (TorchScript archive, ONNX "
           "model) where it has one, else the state dict",
           final_at="deployment", previewed=True, runtime_dependent=True, short="MB", in_summary=True, exact=True),
    Metric("size_compressed_mb", "MB", "minimize",
           "serialized model after zlib compression (zeros compress), MB", runtime_dependent=True, exact=True),
    Metric("flops", "FLOPs/sample", "minimize", "floating-point operations of one sample's forward pass",
           final_at="structure", previewed=True, short="FLOPs", in_summary=True, exact=True),
    Metric("params", "count", "minimize",
           "parameters stored in the model (pruned-away channels are gone, zeros count)",
           final_at="structure", previewed=True, in_summary=True, exact=True),
    Metric("nonzero_params", "count", "minimize", "parameters that are not zero", previewed=True, exact=True),
)

METRICS: dict[str, Metric] = {m.name: m for m in _REGISTRY}


def objective_names() -> list[str]:
    """Metrics an objective or constraint may use."""
    return [m.name for m in _REGISTRY if m.objective]


def why_unavailable(name: str, device: str) -> str | None:
    """Why this machine cannot measure ``name`` for ``device`` (None: it can)."""
    check = METRICS[name].unavailable
    return check(device) if check is not None else None


def format_value(name: str, value: object, *, compact: bool = False) -> str:
    """A value as tables and cards show it, with the precision its unit deserves; "n/a" when
    it is missing (not measured, or not measurable on this machine). ``compact`` writes large
    numbers as 12.3k / 4.56M (the status table)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if compact and abs(value) >= 1e4:
        return f"{value / 1e6:.2f}M" if abs(value) >= 1e6 else f"{value / 1e3:.1f}k"
    unit = METRICS[name].unit if name in METRICS else ""
    if unit in ("count", "FLOPs/sample"):
        return f"{value:,.0f}"
    if unit in ("fraction", "MB"):
        return f"{value:.4f}"
    if unit in ("ms", "mJ", "USD"):
        return f"{value:.4g}"
    if unit == "x":
        return f"{value:.3g}x"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def format_measured(name: str, metrics: Mapping[str, object], *, compact: bool = False) -> str:
    """``format_value``, with the spread and rounds of a metric measured over rounds (a ratio
    measured side by side): "2.13x ±0.04 (5 rounds)"."""
    text = format_value(name, metrics.get(name), compact=compact)
    metric = METRICS.get(name)
    spread = metrics.get(metric.spread) if metric and metric.spread else None
    if text == "n/a" or not isinstance(spread, (int, float)):
        return text
    rounds = metrics.get(metric.rounds) if metric.rounds else None
    return f"{text} ±{spread:.2g}" + (f" ({int(rounds)} rounds)" if rounds and not compact else "")


def change(name: str, value: object, base: object, metrics: Mapping[str, object]) -> tuple[str, bool] | None:
    """How ``value`` compares with the baseline's ``base``, and whether that is better; None
    where no fair comparison exists. Fractions differ in points; exact metrics (counts, bytes)
    by their ratio; latency by the ratio measured side by side (``speedup``, with its spread
    and rounds), never by dividing two figures measured apart."""
    metric = METRICS.get(name)
    if metric is None or not isinstance(value, (int, float)) or not isinstance(base, (int, float)):
        return None
    if metric.unit == "fraction":
        d = value - base
        return f"{d * 100:+.2f} points", (d >= 0) == (metric.direction == "maximize")
    if metric.side_by_side and isinstance(metrics.get(metric.side_by_side), (int, float)):
        speedup = metrics[metric.side_by_side]
        return f"x{1 / speedup:.3g} (speedup {format_measured(metric.side_by_side, metrics)})", speedup >= 1
    if metric.exact and base:
        ratio = value / base
        return f"x{ratio:.3g} ({(ratio - 1) * 100:+.1f}%)", (ratio <= 1) == (metric.direction == "minimize")
    return None


def summary_names(objectives: list[str]) -> list[str]:
    """The status table's metric columns: the objectives, then the summary metrics."""
    return list(dict.fromkeys([*objectives, *(m.name for m in _REGISTRY if m.in_summary)]))


def metric_label(name: str) -> str:
    """"latency_ms", "accuracy (fraction)": the name, with the unit where the name lacks it."""
    metric = METRICS.get(name)
    return f"{name} ({metric.unit})" if metric and metric.unit not in name else name


def quality_names() -> set[str]:
    return {m.name for m in _REGISTRY if m.kind == "quality"}


def previewed_costs() -> list[str]:
    """Costs the untrained compressed model's preview measures, in registry order."""
    return [m.name for m in _REGISTRY if m.kind == "cost" and m.previewed]
