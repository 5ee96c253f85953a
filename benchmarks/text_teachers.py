"""What a 2-, 4- and 6-layer BERT reach on the built-in text task (run on purpose).

    python benchmarks/text_teachers.py [--epochs 12] [--layers 2,4,6] [--hidden 64] [--ffn 2] [--seq-len 48]

Each BERT is built from a config (random init, hidden size --hidden, 4 heads, FFN --ffn x hidden) on
the built-in ``reviews`` task (``zoo.reviews``: 2000 train / 400 val / 400 test, WordPiece
vocabulary of 1000 trained on the training texts), trained the way a study trains its baseline
(``trial.baseline.baseline_recipe``: AdamW, cosine schedule, batch 32) at each learning rate of
--lrs, and measured on val and test. Prints a markdown table (the best lr per depth by val
accuracy, then test accuracy, params, batch-1 CPU latency and the training time).
"""

from __future__ import annotations

import argparse
import time

import torch

from autocompress.metrics.latency import measure_latency
from autocompress.metrics.size import count_params
from autocompress.spec.fields import DataSpec, ModelSpec
from autocompress.spec.policy import Policy, TrainingPolicy
from autocompress.training.loop import FitPlan, fine_tune
from autocompress.metrics.accuracy import evaluate
from autocompress.zoo import build_data, build_model
from autocompress.zoo.data import make_loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--layers", default="2,4,6")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=2, help="FFN width as a multiple of the hidden size")
    ap.add_argument("--seq-len", type=int, default=48)
    ap.add_argument("--lrs", default="0.001,0.003")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = build_data(DataSpec(text={"builtin": "reviews", "seq_len": args.seq_len, "vocab_size": 1000}), seed=0)
    rows = []
    for layers in (int(x) for x in args.layers.split(",")):
        best = None
        for lr in (float(x) for x in args.lrs.split(",")):
            torch.manual_seed(0)
            config = {"model_type": "bert", "hidden_size": args.hidden, "num_hidden_layers": layers,
                      "num_attention_heads": 4, "intermediate_size": args.ffn * args.hidden}
            model = build_model(ModelSpec(transformers={"config": config}), num_classes=data.num_classes,
                                input_shape=data.input_shape, text=data.text)
            policy = Policy(training=TrainingPolicy(optimizer="adamw", lr=lr, weight_decay=1e-4, schedule="cosine",
                                                    batch_size=32))
            start = time.perf_counter()
            fine_tune(model, data.train, data.val, policy, FitPlan(epochs=args.epochs, device=torch.device("cpu"), seed=0))
            wall = time.perf_counter() - start
            val = evaluate(model, make_loader(data.val, 256, shuffle=False), "cpu")
            test = evaluate(model, make_loader(data.test, 256, shuffle=False), "cpu")
            print(f"layers {layers} lr {lr}: val {val:.3f} test {test:.3f} ({wall:.0f} s)", flush=True)
            if best is None or val > best[1]:
                x = torch.stack([data.test[0][0]])
                lat = measure_latency(model.eval(), x, device="cpu", batch_size=1, threads=1, max_time_s=1.0)
                best = (lr, val, test, count_params(model)[0], lat.median_ms, wall)
        rows.append((layers, *best))
    print(f"\n{args.epochs} epochs, hidden {args.hidden}, FFN {args.ffn * args.hidden}, seq_len {args.seq_len}\n")
    print("| layers | lr | val acc | test acc | params | latency ms (batch 1) | train s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for layers, lr, val, test, params, lat, wall in rows:
        print(f"| {layers} | {lr:g} | {val:.3f} | {test:.3f} | {params / 1e3:.0f}k | {lat:.2f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
