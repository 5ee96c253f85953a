"""Latency repeatability, and the speedup of each runtime and number format, on this machine.

(a) The same model measured twice in a row with ``metrics.latency.measure_latency`` (what a
    trial uses): median, IQR, timed runs, and the relative difference of the two medians.
(b) Each runtime (eager, torchscript, compile, onnxruntime) x each number format (fp32,
    static int8 through torch.ao FX): median latency, speedup over eager fp32, top-1
    agreement and max |logit diff| with the same model in eager mode, and the growth of the
    process's peak RSS during the timed runs (a lower bound, see ``metrics/memory.py``).

Models: the digits CNN (1x8x8 inputs, real digits images) and resnet18 at 3x32x32 (random
inputs), both with random weights: latency does not depend on the weights' values. int8 models
are calibrated on 256 of those inputs. Trials per hour with 1 vs 2 workers: benchmarks/workers_throughput.py.

    python benchmarks/runtimes_latency.py [--threads 1] [--batch-sizes 1 32] [--max-time 2]
                                          [--skip-compile]
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
from torch import nn

from autocompress.devices import cpu_name, usable_cpus
from autocompress.errors import TrialFailed
from autocompress.metrics.latency import LatencyStats, measure_latency
from autocompress.metrics.memory import track_peak_memory
from autocompress.deploy.runtimes import BACKENDS, build_runtime, check_predictions
from autocompress.zoo.data import digits
from autocompress.zoo.models import create_model, torchvision_model


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """name -> (eval-mode fp32 model, 256 inputs)."""
    torch.manual_seed(0)
    data = digits()
    x_digits = torch.stack([data.val[i][0] for i in range(min(256, len(data.val)))])
    return {
        "digits_cnn": (create_model("digits_cnn", num_classes=10, in_channels=1,
                                    input_shape=(1, 8, 8)).eval(), x_digits),
        "resnet18": (torchvision_model("resnet18", num_classes=10, in_channels=3).eval(),
                     torch.randn(256, 3, 32, 32)),
    }


def static_int8(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    from autocompress.compress.quantization.torch_ao import convert, prepare_static

    prepared = prepare_static(copy.deepcopy(model), inputs[:2], per_channel=True)
    with torch.no_grad():
        for chunk in inputs.split(32):
            prepared(chunk)
    return convert(prepared)


def latency(model: nn.Module, x: torch.Tensor, batch: int, args) -> LatencyStats:
    return measure_latency(model, x, batch_size=batch, threads=args.threads, max_time_s=args.max_time)


def repeatability(zoo, args) -> None:
    print(f"\n(a) the same model measured twice in a row (eager fp32, {args.threads} thread(s), "
          f"max {args.max_time:g} s each)")
    print(f"{'model':>11} {'batch':>5} | {'median ms':>9} {'IQR ms':>8} {'runs':>6} | "
          f"{'median ms':>9} {'IQR ms':>8} {'runs':>6} | {'rel diff':>8}")
    for name, (model, x) in zoo.items():
        for batch in args.batch_sizes:
            a, b = latency(model, x, batch, args), latency(model, x, batch, args)
            rel = abs(a.median_ms - b.median_ms) / min(a.median_ms, b.median_ms)
            print(f"{name:>11} {batch:>5} | {a.median_ms:>9.3f} {a.iqr_ms:>8.3f} {a.runs:>6} | "
                  f"{b.median_ms:>9.3f} {b.iqr_ms:>8.3f} {b.runs:>6} | {rel:>8.1%}")


def speedups(zoo, args) -> None:
    backends = [b for b in BACKENDS if not (args.skip_compile and b == "compile")]
    print(f"\n(b) runtimes x number formats ({args.threads} thread(s); speedup over eager fp32 at "
          "the same batch; agreement with the same model run eagerly, on 256 inputs)")
    print(f"{'model':>11} {'format':>6} {'runtime':>12} {'batch':>5} | {'median ms':>9} {'IQR ms':>8} "
          f"{'speedup':>7} | {'top-1 agr':>9} {'max diff':>9} {'tol':>8} {'build s':>7} {'RSS+ MB':>7}")
    for name, (model, x) in zoo.items():
        formats = {"fp32": model}
        try:
            formats["int8"] = static_int8(model, x)
        except TrialFailed as exc:
            print(f"{name:>11}   int8: not available ({exc.reason})")
        eager_ms: dict[int, float] = {}
        for fmt, m in formats.items():
            with torch.inference_mode():
                reference = m(x)
            for backend in backends:
                for batch in args.batch_sizes:
                    try:
                        # built on the measured batch shape, so torch.compile compiles it once
                        rt = build_runtime(m, backend, x[:batch], threads=args.threads)
                        with torch.inference_mode():
                            agree = check_predictions(reference, torch.cat([rt.module(c) for c in x.split(batch)]))
                    except TrialFailed as exc:
                        print(f"{name:>11} {fmt:>6} {backend:>12} {batch:>5} | failed: {exc.reason[:110]}")
                        continue
                    with track_peak_memory("cpu") as peak:
                        lat = latency(rt.module, x, batch, args)
                    if fmt == "fp32" and backend == "eager":
                        eager_ms[batch] = lat.median_ms
                    rss = "n/a" if peak.mb is None else f"{peak.mb:.2f}"
                    print(f"{name:>11} {fmt:>6} {backend:>12} {batch:>5} | {lat.median_ms:>9.3f} "
                          f"{lat.iqr_ms:>8.3f} {eager_ms[batch] / lat.median_ms:>6.2f}x | "
                          f"{agree.top1_agreement:>9.1%} {agree.max_abs_diff:>9.2g} {agree.tolerance:>8.2g} "
                          f"{rt.build_s:>7.1f} {rss:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads of each timed run (trials use 1 by default)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-time", type=float, default=2.0, help="seconds cap of one latency measurement")
    parser.add_argument("--skip-compile", action="store_true", help="torch.compile takes minutes on a small CPU")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()}, {usable_cpus()} cores usable; torch {torch.__version__}; "
          f"engine {torch.backends.quantized.engine}")
    zoo = models()
    repeatability(zoo, args)
    speedups(zoo, args)


if __name__ == "__main__":
    main()
