"""The accelerator path once for real: a small 1-worker study on one device (run on purpose).

    python benchmarks/gpu_study.py [--device cuda] [--trials 12] [--model digits_cnn]
                                   [--out runs/bench-gpu]

(a) Latency of the baseline model on the device per number format (fp32, fp16, bf16) at
    batch 1 and batch 32: median, IQR and timed runs from ``measure_latency`` (what trials
    use; CUDA-synchronized), and peak inference memory (CUDA max allocated).
(b) A small study with one worker: fine-tuned on the device (AMP off/bf16/fp16 searched),
    latency measured on the same device, quantization mode in none/fp16/bf16 (int8 torch.ao
    kernels are CPU-only), structured pruning searched. Prints one row per trial (policy,
    accuracy, latency with IQR and runs, peak memory, where it was measured), the wall time and
    trials per hour.
(c) The table of ``benchmarks/formats_latency.py`` on the device: every number format
    (torch.ao and torchao, fp8 and int4 where the GPU has kernels), eager and torch.compile.

With ``--device cpu`` it runs the same code on the CPU (a smoke check of the script; the
figures for docs/BENCHMARKS.md come from a GPU).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from autocompress.spec.config import spec_from_dict  # noqa: E402
from autocompress.metrics.latency import measure_latency  # noqa: E402
from autocompress.metrics.memory import track_peak_memory  # noqa: E402
from autocompress.search.record import read_all  # noqa: E402
from autocompress.search.study import run_study  # noqa: E402
from autocompress.compress.quantization import FLOAT_DTYPES, CastInputs  # noqa: E402
from autocompress.zoo.models import create_model, torchvision_model  # noqa: E402

SPACE = {
    "pruning": {"method": {"choices": ["none", "structured"]},
                "criterion": {"choices": ["l1", "fpgm"], "when": {"method": ["structured"]}},
                "ratio": {"low": 0.2, "high": 0.7, "step": 0.05, "when": {"method": ["structured"]}}},
    "quantization": {"mode": {"choices": ["none", "fp16", "bf16"]}},
    "distillation": {"method": {"choices": ["none", "soft"]},
                     "temperature": {"low": 1.0, "high": 8.0, "when": {"method": ["soft"]}}},
    "training": {"amp": {"choices": ["off", "bf16", "fp16"]},
                 "optimizer": {"choices": ["sgd", "adamw"]},
                 "lr": {"low": 1.0e-4, "high": 0.05, "log": True}},
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from autocompress.devices import cpu_name

    return cpu_name()


def format_latency(model: torch.nn.Module, example: torch.Tensor, device: torch.device) -> None:
    print(f"\n(a) baseline latency by number format on {device_name(device)} ({device})\n")
    print("| format | batch | median ms | IQR ms | runs | peak memory MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for fmt in ("fp32", "fp16", "bf16"):
        m = copy.deepcopy(model).eval()
        if fmt != "fp32":  # as quantization.mode fp16/bf16 deploys it
            m = CastInputs(m.to(FLOAT_DTYPES[fmt]), FLOAT_DTYPES[fmt]).eval()
        m.to(device)
        for batch in (1, 32):
            try:
                with track_peak_memory(device) as peak:
                    lat = measure_latency(m, example, device=device, batch_size=batch, threads=1, max_time_s=2.0)
            except RuntimeError as exc:  # e.g. a format without kernels on this device
                print(f"| {fmt} | {batch} | fails: {str(exc).splitlines()[0][:80]} | | | |")
                continue
            mem = f"{peak.mb:.1f}" if peak.mb is not None else "n/a"
            print(f"| {fmt} | {batch} | {lat.median_ms:.3f} | {lat.iqr_ms:.3f} | {lat.runs} | {mem} |")


def study(args: argparse.Namespace) -> None:
    raw = {
        "name": "gpu-bench", "model": {"builtin": "digits_cnn"} if args.model == "digits_cnn"
        else {"torchvision": args.model},
        "data": {"builtin": "digits"}, "search_space": SPACE,
        "objectives": [{"metric": "accuracy", "direction": "maximize"},
                       {"metric": "latency_ms", "direction": "minimize"}],
        "budget": {"trials": args.trials, "epochs": 2}, "baseline": {"epochs": 5},
        "device": args.device, "target": {"device": args.device, "batch_size": 1, "threads": 1},
        "sampler": "tpe", "seed": 0, "warm_start": {"recipes": False},
    }
    spec = spec_from_dict(raw, "benchmarks/gpu_study.py")
    print(f"\n(b) {args.trials}-trial study, 1 worker, fine-tuned and measured on {args.device}\n")
    start = time.time()
    run = run_study(spec, out=args.out, log=lambda m: None)
    wall = time.time() - start
    print("| trial | state | policy | amp | accuracy | latency ms (IQR, runs) | peak MB | measured on |")
    print("|---:|---|---|---|---:|---|---:|---|")
    records = [r for r in read_all(run.study) if not r.baseline]
    for r in records:
        m, on = r.metrics, r.measured_on
        amp = r.policy.training.amp if r.policy else ""
        lat = (f"{m['latency_ms']:.3f} ({m['latency_iqr_ms']:.3f}, {int(m['latency_runs'])})"
               if m.get("latency_ms") is not None else r.reason[:60])
        acc = f"{m['accuracy']:.4f}" if "accuracy" in m else ""
        peak = f"{m['peak_memory_mb']:.1f}" if m.get("peak_memory_mb") is not None else ""
        print(f"| {r.number} | {r.state.name} | {r.policy_summary} | {amp} | {acc} | "
              f"{lat} | {peak} | {on.device_name if on else ''} ({on.device if on else ''}) |")
    done = len(records)
    print(f"\n{done} trials in {wall:.1f} s (baseline training included) -> {done / wall * 3600:.0f} trials/hour; "
          f"torch {torch.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--model", default="digits_cnn", help="digits_cnn, or a torchvision model name for (a)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-gpu")
    args = ap.parse_args()
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu for a smoke check")
    torch.manual_seed(0)
    if args.model == "digits_cnn":
        model, example = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8)), \
            torch.randn(32, 1, 8, 8)
    else:
        model, example = torchvision_model(args.model, num_classes=10, in_channels=3), torch.randn(32, 3, 32, 32)
    format_latency(model, example, device)
    if args.model == "digits_cnn":
        study(args)
    # (c) every number format, torch.ao and torchao, eager and torch.compile, side by side with fp32
    from formats_latency import table

    print(f"\n(c) number formats on {device_name(device)}, side by side with fp32 eager\n")
    print(table(str(device), ["mlp", "resnet18"], [1, 32], compile_too=True, max_time=0.5))


if __name__ == "__main__":
    main()
