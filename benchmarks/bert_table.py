"""The BERT -> DistilBERT table in kind, on the text demo (run on purpose, after the demo study).

    python benchmarks/bert_table.py [--run runs/text-bert] [--epochs 4] [--seq-len 128] [--out DIR]
                                    [--trial N ...]

Side by side in one process: the study's teacher, a hand-made DistilBERT-style student (every
other layer kept, initialised from the teacher's, distilled with soft targets and hidden states,
``autocompress apply`` for --epochs), and the searched front's knee (``autocompress export``, the
default rule), and any other trials named with --trial (front points worth a row). Every model runs in the teacher's own runtime (eager PyTorch, each in its number
format), so a speedup is the compression's, not a runtime switch's. Latency at batch 1 and 32 on
token ids padded to --seq-len, measured interleaved (``measure_side_by_side``: the ratios to the
teacher are medians of per-round ratios); accuracy on the held-out test split. Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from autocompress import load_exported
from autocompress.metrics.accuracy import evaluate
from autocompress.metrics.latency import Ratio, measure_side_by_side
from autocompress.metrics.size import count_params, size_mb
from autocompress.search.context import build_inputs
from autocompress.spec.config import load_study_spec
from autocompress.trial.context import fit_length
from autocompress.zoo.data import make_loader

STUDENT = {"depth": {"layers": 2, "selection": "every_other"},
           "distillation": {"method": "soft", "alpha": 0.5, "temperature": 4.0, "hidden_weight": 1.0},
           "training": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 32, "schedule": "cosine"}}


def cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "autocompress", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"autocompress {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/text-bert"))
    ap.add_argument("--epochs", type=int, default=4, help="fine-tune epochs of the hand-made student")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-bert-table"))
    ap.add_argument("--trial", type=int, action="append", default=[], help="also a row for this trial")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = load_study_spec(args.run / "study.yaml")
    data, teacher = build_inputs(spec)
    teacher.load_state_dict(torch.load(args.run / "baseline.pt", weights_only=True))

    args.out.mkdir(parents=True, exist_ok=True)
    policy = args.out / "distilbert_style.yaml"
    policy.write_text(yaml.safe_dump(STUDENT, sort_keys=False))
    cli("apply", str(policy), "--study", str(args.run / "study.yaml"), "--epochs", str(args.epochs),
        "--out", str(args.out / "student"))
    cli("export", str(args.run), "--out", str(args.out / "knee"))
    knee_policy = yaml.safe_load((args.out / "knee" / "policy.yaml").read_text())
    models = {"teacher": teacher.eval(),
              "DistilBERT-style student": load_exported(args.out / "student", reads_text=False),
              f"searched knee (trial {knee_policy['study']['trial']})": load_exported(args.out / "knee",
                                                                                   reads_text=False)}
    folders = ["student", "knee"]
    for n in args.trial:
        cli("export", str(args.run), "--trial", str(n), "--out", str(args.out / f"trial{n}"))
        models[f"searched trial {n}"] = load_exported(args.out / f"trial{n}", reads_text=False)
        folders.append(f"trial{n}")
    ids = fit_length(torch.stack([data.test[i][0] for i in range(32)]), args.seq_len, data.text.pad_id)
    # params as the trials count them (int8 layers' packed weights included; count_params sees
    # only float tensors): from each bundle's metrics.json, the teacher's own
    params = {"teacher": count_params(teacher)[0]}
    for name, folder in zip(list(models)[1:], folders):
        params[name] = json.loads((args.out / folder / "metrics.json").read_text())["metrics"]["params"]
    rows = {name: {"params": params[name], "mb": size_mb(m),
                   "test": evaluate(m, make_loader(data.test, 256, shuffle=False), "cpu")}
            for name, m in models.items()}
    for batch in (1, 32):
        timed = measure_side_by_side(models, ids, batch_size=batch, threads=1, max_time_s=4.0)
        for name in models:
            rows[name][f"b{batch}"] = timed[name].median_ms
            rows[name][f"x{batch}"] = Ratio.of(list(timed["teacher"].per_round), list(timed[name].per_round))
    print(f"\nseq_len {args.seq_len}, 1 thread, eager PyTorch for every model; the student fine-tuned "
          f"{args.epochs} epochs\n")
    print("| model | params | size MB | test acc | latency b1 ms | speedup b1 | latency b32 ms | speedup b32 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['params'] / 1e3:.1f}k | {r['mb']:.3f} | {r['test']:.4f} | {r['b1']:.2f} | "
              f"{r['x1'].median:.2f}x ±{r['x1'].iqr:.2f} | {r['b32']:.1f} | {r['x32'].median:.2f}x ±{r['x32'].iqr:.2f} |")


if __name__ == "__main__":
    main()
