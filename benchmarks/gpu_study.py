"""The accelerator path once for real: a small 1-worker study on one device (run on purpose).

    python benchmarks/gpu_study.py [--device cuda] [--trials 12] [--model digits_cnn]
                                   [--out runs/bench-gpu]

(a) Latency of the baseline model on the device per number format (fp32, fp16, bf16) at
    batch 1 and batch 32: median, IQR and timed runs from ``measure_latency`` (what trials
    use; CUDA-synchronized), peak inference memory (CUDA max allocated), and energy per
    inference from ``measure_energy`` (NVML's total-energy counter on a GPU, RAPL on a CPU;
    median over counter windows of at least 1 s, IQR, windows), or why it is n/a.
(b) A small study with one worker: fine-tuned on the device (AMP off/bf16/fp16 searched),
    latency measured on the same device, quantization mode in none/fp16/bf16 (int8 torch.ao
    kernels are CPU-only), structured pruning searched; energy_mj is a third objective where
    the device has an energy counter. Prints one row per trial (policy, accuracy, latency with
    IQR and runs, peak memory, energy, where it was measured), the wall time and trials per hour.
(c) The table of ``benchmarks/formats_latency.py`` on the device: every number format
    (torch.ao and torchao, fp8 and int4 where the GPU has kernels), eager and torch.compile.

With ``--device cpu`` it runs the same code on the CPU (a smoke check of the script; the
figures for docs/BENCHMARKS.md come from a GPU). Everything printed is also written to
``--tables`` (default ``<out>/tables.md``), so a short GPU lease leaves its tables behind.
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
from autocompress.metrics.counters import CounterError, energy_unavailable, open_counters  # noqa: E402
from autocompress.metrics.energy import measure_energy  # noqa: E402
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


TABLES: list[Path] = []   # where say() also writes


def say(text: str = "") -> None:
    print(text, flush=True)
    for path in TABLES:
        with path.open("a", encoding="utf-8") as f:
            f.write(text + "\n")


def energy_cell(model: torch.nn.Module, example: torch.Tensor, device: torch.device, batch: int) -> str:
    """Energy per inference (mJ per sample, IQR, counter windows), or n/a where there is no counter."""
    if energy_unavailable(str(device)):
        return "n/a"
    try:
        e = measure_energy(model, example, counters=open_counters(device), device=str(device), batch_size=batch)
    except CounterError as exc:   # a counter that stalls or runs backwards
        return f"fails: {exc}"
    return f"{e.median_mj:.4g} (±{e.iqr_mj:.2g}, {e.windows} windows of {e.seconds / e.windows:.1f} s)"


def format_latency(model: torch.nn.Module, example: torch.Tensor, device: torch.device) -> None:
    say(f"\n(a) baseline latency by number format on {device_name(device)} ({device})\n")
    reason = energy_unavailable(str(device))
    if reason:
        say(f"energy per inference is n/a here: {reason}\n")
    say("| format | batch | median ms | IQR ms | runs | peak memory MB | energy mJ/sample |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for fmt in ("fp32", "fp16", "bf16"):
        m = copy.deepcopy(model).eval()
        if fmt != "fp32":  # as quantization.mode fp16/bf16 deploys it
            m = CastInputs(m.to(FLOAT_DTYPES[fmt]), FLOAT_DTYPES[fmt]).eval()
        m.to(device)
        for batch in (1, 32):
            try:
                with track_peak_memory(device) as peak:
                    lat = measure_latency(m, example, device=device, batch_size=batch, threads=1, max_time_s=2.0)
                joules = energy_cell(m, example, device, batch)
            except RuntimeError as exc:  # e.g. a format without kernels on this device
                say(f"| {fmt} | {batch} | fails: {str(exc).splitlines()[0][:80]} | | | | |")
                continue
            mem = f"{peak.mb:.1f}" if peak.mb is not None else "n/a"
            say(f"| {fmt} | {batch} | {lat.median_ms:.3f} | {lat.iqr_ms:.3f} | {lat.runs} | {mem} | {joules} |")


def study(args: argparse.Namespace) -> None:
    raw = {
        "name": "gpu-bench", "model": {"builtin": "digits_cnn"} if args.model == "digits_cnn"
        else {"torchvision": args.model},
        "data": {"builtin": "digits"}, "search_space": SPACE,
        "objectives": [{"metric": "accuracy", "direction": "maximize"},
                       {"metric": "latency_ms", "direction": "minimize"}]
        + ([] if energy_unavailable(args.device) else [{"metric": "energy_mj", "direction": "minimize"}]),
        "budget": {"trials": args.trials, "epochs": 2}, "baseline": {"epochs": 5},
        "device": args.device, "target": {"device": args.device, "batch_size": 1, "threads": 1},
        "sampler": "tpe", "seed": 0, "warm_start": {"recipes": False},
    }
    spec = spec_from_dict(raw, "benchmarks/gpu_study.py")
    say(f"\n(b) {args.trials}-trial study, 1 worker, fine-tuned and measured on {args.device}"
        f" (objectives: {', '.join(spec.metric_names)})\n")
    start = time.time()
    run = run_study(spec, out=args.out, log=lambda m: None)
    wall = time.time() - start
    say("| trial | state | policy | amp | accuracy | latency ms (IQR, runs) | peak MB | energy mJ (IQR, windows) "
        "| measured on |")
    say("|---:|---|---|---|---:|---|---:|---|---|")
    records = [r for r in read_all(run.study) if not r.baseline]
    for r in records:
        m, on = r.metrics, r.measured_on
        amp = r.policy.training.amp if r.policy else ""
        lat = (f"{m['latency_ms']:.3f} ({m['latency_iqr_ms']:.3f}, {int(m['latency_runs'])})"
               if m.get("latency_ms") is not None else r.reason[:60])
        acc = f"{m['accuracy']:.4f}" if "accuracy" in m else ""
        peak = f"{m['peak_memory_mb']:.1f}" if m.get("peak_memory_mb") is not None else ""
        joules = (f"{m['energy_mj']:.4g} ({m['energy_iqr_mj']:.2g}, {int(m['energy_runs'])})"
                  if m.get("energy_mj") is not None else "n/a")
        say(f"| {r.number} | {r.state.name} | {r.policy_summary} | {amp} | {acc} | "
            f"{lat} | {peak} | {joules} | {on.device_name if on else ''} ({on.device if on else ''}) |")
    done = len(records)
    say(f"\n{done} trials in {wall:.1f} s (baseline training included) -> {done / wall * 3600:.0f} trials/hour; "
        f"torch {torch.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--model", default="digits_cnn", help="digits_cnn, or a torchvision model name for (a)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench-gpu")
    ap.add_argument("--tables", type=Path, default=None, help="also write every table here (default <out>/tables.md)")
    ap.add_argument("--no-compile", action="store_true", help="(c) without torch.compile (a quicker rehearsal)")
    args = ap.parse_args()
    tables = args.tables or args.out / "tables.md"
    tables.parent.mkdir(parents=True, exist_ok=True)
    tables.write_text(f"# benchmarks/gpu_study.py --device {args.device} --trials {args.trials}\n", encoding="utf-8")
    TABLES.append(tables)
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

    say(f"\n(c) number formats on {device_name(device)}, side by side with fp32 eager\n")
    say(table(str(device), ["mlp", "resnet18"], [1, 32], compile_too=not args.no_compile, max_time=0.5))
    print(f"\ntables written to {tables}")


if __name__ == "__main__":
    main()
