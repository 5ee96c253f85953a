"""How much of a digits fine-tune goes to fetching and augmenting batches.

Runs ``fine_tune`` on the built-in digits CNN and data for each augmentation choice and
prints ``FitResult.data_seconds / train_seconds`` (the data-loading share of training,
augmentation included) and the milliseconds per batch spent on data.

    python benchmarks/augment_overhead.py [--epochs 3] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from autocompress.spec.policy import AugmentationPolicy, Policy, TrainingPolicy
from autocompress.training.augment import build_batch_transform
from autocompress.training.loop import FitPlan, fine_tune
from autocompress.zoo.data import digits
from autocompress.zoo.models import digits_cnn

CHOICES = [("none", "none"), ("crop", "none"), ("crop_flip", "none"), ("rotate_scale", "none"),
           ("combined", "none"), ("trivialaugment", "none"), ("randaugment", "none"),
           ("none", "mixup"), ("combined", "cutmix")]


def measure(policy: str, mix: str, *, epochs: int, seed: int = 0) -> dict[str, float]:
    data = digits()
    aug = AugmentationPolicy(policy=policy, mix=mix, mix_prob=1.0 if mix != "none" else 0.5)
    pol = Policy(training=TrainingPolicy(lr=3e-3, schedule="cosine"), augmentation=aug)
    torch.manual_seed(seed)
    model = digits_cnn(num_classes=data.num_classes, in_channels=1, input_shape=data.input_shape)
    fit = fine_tune(model, data.train, data.val, pol,
                    FitPlan(epochs=epochs, device=torch.device("cpu"), seed=seed,
                            batch_transform=build_batch_transform(aug, data, seed)))
    return {"data_share": fit.data_seconds / fit.train_seconds, "data_ms_per_batch": 1e3 * fit.data_seconds / fit.steps,
            "train_s": fit.train_seconds, "val_accuracy": fit.history[-1].val_accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"digits_cnn on digits, {args.epochs} epochs, {args.threads} threads")
    print(f"{'policy':>16} {'mix':>7} {'data share':>11} {'data ms/batch':>14} {'train s':>8} {'val acc':>8}")
    for policy, mix in CHOICES:
        m = measure(policy, mix, epochs=args.epochs)
        print(f"{policy:>16} {mix:>7} {m['data_share']:>10.1%} {m['data_ms_per_batch']:>14.2f} "
              f"{m['train_s']:>8.2f} {m['val_accuracy']:>8.3f}")


if __name__ == "__main__":
    main()
