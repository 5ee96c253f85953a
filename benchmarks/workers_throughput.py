"""Trials per hour with 1 vs 2 local workers on this machine (run on purpose).

    python benchmarks/workers_throughput.py [--trials 16]

Runs the digits study with the training-knob space (2 fine-tune epochs per trial) through
`autocompress search --workers N` for N = 1 and 2 and prints trials per hour. On a CPU the
cores are split between workers, so the gain depends on how well one trial uses all cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = {
            "name": "workers-bench", "model": {"builtin": "digits_cnn"}, "data": {"builtin": "digits"},
            "search_space": str(REPO / "search_spaces" / "training_knobs.yaml"),
            "objectives": [{"metric": "accuracy", "direction": "maximize"},
                           {"metric": "latency_ms", "direction": "minimize"}],
            "budget": {"trials": args.trials, "epochs": 2}, "baseline": {"epochs": 3},
            "early_stopping": "none", "warm_start": {"recipes": False}, "sampler": "random",
        }
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        for workers in (1, 2):
            out = Path(tmp) / f"run{workers}"
            # the baseline is trained once per run directory; train it before timing
            subprocess.run([sys.executable, "-m", "autocompress", "search", str(path), "--out", str(out),
                            "--trials", "1"], check=True, capture_output=True)
            start = time.time()
            subprocess.run([sys.executable, "-m", "autocompress", "search", str(path), "--out", str(out),
                            "--trials", str(args.trials + 1), "--workers", str(workers)],
                           check=True, capture_output=True)
            wall = time.time() - start
            print(f"{workers} worker(s): {args.trials} trials in {wall:.1f} s "
                  f"-> {args.trials / wall * 3600:.0f} trials/hour")


if __name__ == "__main__":
    main()
