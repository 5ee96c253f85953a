"""Latency and size per number format, torch.ao against torchao, eager against torch.compile
(run on purpose; figures in docs/BENCHMARKS.md).

    python benchmarks/formats_latency.py [--device cpu] [--models mlp digits_cnn resnet18 mobilenet_v2]
                                         [--batches 1 32] [--no-compile] [--max-time 0.5]

For each model (random weights: latency does not depend on them) and number format, the model
is quantized the way a trial does it (``Quantization.post_training`` of a one-technique
pipeline, calibrated on random batches) and deployed with ``deploy`` in the eager runtime and
under ``torch.compile``; each is timed side by side with the fp32 eager model in one process
(5 rounds, the order reversed each round) at each batch size. Printed per row: the speedup over
fp32 eager (median of per-round ratios, IQR), the artifact's size and its ratio to fp32's, and
why a format did not run. Formats a device has no kernels for are skipped with the reason.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autocompress.compress import pipeline  # noqa: E402
from autocompress.deploy.runtimes import deploy  # noqa: E402
from autocompress.metrics.latency import Ratio, measure_side_by_side  # noqa: E402
from autocompress.spec.policy import Policy  # noqa: E402
from autocompress.trial.context import TargetSettings, TrialContext  # noqa: E402
from autocompress.zoo.data import DataBundle  # noqa: E402
from autocompress.zoo.models import create_model, torchvision_model  # noqa: E402

FORMATS = [  # (label, quantization section)
    ("fp32", {}),
    ("fp16", {"mode": "fp16"}),
    ("torch.ao dynamic int8", {"mode": "dynamic_int8"}),
    ("torch.ao static int8", {"mode": "static_int8"}),
    ("torchao int8 weight-only", {"mode": "int8_weight_only"}),
    ("torchao int8 dynamic", {"mode": "int8_dynamic_activation"}),
    ("torchao fp8 weight-only", {"mode": "fp8_weight_only"}),
    ("torchao static int8 (PT2E)", {"mode": "static_int8", "backend": "torchao"}),
    ("torchao fp8 dynamic", {"mode": "fp8_dynamic"}),
    ("torchao int4 weight-only", {"mode": "int4_weight_only"}),
]


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "mlp":   # Linear layers only: what torchao's weight formats act on
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                             nn.Linear(1024, 10)).eval(), (1, 28, 28)
    if name == "digits_cnn":
        return create_model(name, num_classes=10, in_channels=1, input_shape=(1, 8, 8)).eval(), (1, 8, 8)
    return torchvision_model(name, num_classes=10, in_channels=3).eval(), (3, 32, 32)


def context(model: nn.Module, shape: tuple[int, ...], device: str) -> TrialContext:
    data = TensorDataset(torch.randn(256, *shape), torch.randint(0, 10, (256,)))
    bundle = DataBundle("random", data, data, data, 10, shape)
    return TrialContext(data=bundle, teacher=model, baseline_metrics={}, target=TargetSettings(device=device))


def quantized(model: nn.Module, section: dict, ctx: TrialContext) -> nn.Module:
    """The model in a format, made the way a trial makes it."""
    policy = Policy.from_dict({"quantization": section} if section else {})
    out = copy.deepcopy(model)
    for technique in pipeline(policy).build(ctx):
        out = technique.post_training(technique.after_finetune(technique.before_finetune(technique.compress(out))))
    return out


def rows(name: str, device: str, batches: list[int], compile_too: bool, max_time: float) -> list[str]:
    model, shape = build(name)
    ctx = context(model, shape, device)
    example = torch.randn(2, *shape)
    fp32 = deploy(copy.deepcopy(model), "eager", example, device=device, threads=torch.get_num_threads())
    out = []
    for label, section in FORMATS:
        plan_fmt = pipeline(Policy.from_dict({"quantization": section} if section else {})).number_format
        if why := plan_fmt.unsupported_on(device):
            out.append(f"| {name} | {label} | - | - | - | - | skipped: {why} |")
            continue
        try:
            formatted = quantized(model, section, ctx)
        except Exception as exc:   # noqa: BLE001 - reported in the table
            out.append(f"| {name} | {label} | - | - | - | - | {getattr(exc, 'reason', exc)} |")
            continue
        for runtime in ["eager", "compile"] if compile_too else ["eager"]:
            out += _timed(name, label, formatted, runtime, (fp32, example, device, batches, max_time))
    return out


def _timed(name: str, label: str, formatted: nn.Module, runtime: str, setting: tuple) -> list[str]:
    fp32, example, device, batches, max_time = setting
    try:
        shipped = deploy(copy.deepcopy(formatted), runtime, example, device=device, threads=fp32.threads)
    except Exception as exc:   # noqa: BLE001 - reported in the table
        return [f"| {name} | {label} | {runtime} | - | - | - | {getattr(exc, 'reason', exc)} |"]
    size = f"{shipped.size_mb:.3f} MB (x{shipped.size_mb / fp32.size_mb:.2f})"
    cells = []
    for batch in batches:
        try:
            stats = measure_side_by_side({"fp32": fp32.module, "format": shipped.module}, example.to(device),
                                         device=device, batch_size=batch, threads=fp32.threads, max_time_s=max_time)
        except Exception as exc:   # noqa: BLE001 - e.g. a compiled graph that cannot take this batch size
            cells.append(f"failed: {str(exc).splitlines()[0][:80]}")
            continue
        r = Ratio.of(list(stats["fp32"].per_round), list(stats["format"].per_round))
        cells.append(f"{stats['format'].median_ms:.3g} ms, {r.median:.2f}x ±{r.iqr:.2f}")
    return [f"| {name} | {label} | {runtime} | {' | '.join(cells)} | {size} | |"]


def table(device: str, models: list[str], batches: list[int], compile_too: bool, max_time: float) -> str:
    head = (f"| model | format | runtime | {' | '.join(f'batch {b}: latency, speedup over fp32 eager' for b in batches)}"
            " | artifact size | note |")
    lines = [head, "|" + "---|" * (6 + len(batches) - 1)]
    for name in models:
        lines += rows(name, device, batches, compile_too, max_time)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=["mlp", "digits_cnn", "resnet18", "mobilenet_v2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (tens of seconds per model)")
    ap.add_argument("--max-time", type=float, default=0.5, help="seconds of timing per side-by-side measurement")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(table(args.device, args.models, args.batches, not args.no_compile, args.max_time))


if __name__ == "__main__":
    main()
