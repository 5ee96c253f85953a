"""The baseline (teacher): the user's model trained once per study with a fixed recipe, or
loaded from their checkpoint; cached under the run directory and measured like a trial."""

from __future__ import annotations

import json
import time
from pathlib import Path
import torch
from torch import nn

from autocompress.errors import AutocompressError
from autocompress.spec.config import StudySpec
from autocompress.spec.policy import Policy, TrainingPolicy
from autocompress.training.loop import FitPlan, fine_tune
from autocompress.trial.context import TrialContext
from autocompress.trial.measure import deployed_metrics, structure_metrics
from autocompress.utils import atomic_torch_save, atomic_write_text, error_line, seed_everything

BASELINE_FILE = "baseline.pt"
BASELINE_METRICS_FILE = "baseline.json"


def baseline_recipe(spec: StudySpec) -> Policy:
    b = spec.baseline
    return Policy(training=TrainingPolicy(optimizer="adamw", lr=b.lr, weight_decay=b.weight_decay,
                                          schedule="cosine", batch_size=b.batch_size))


def prepare_baseline(model: nn.Module, ctx: TrialContext, spec: StudySpec, run_dir: Path,
                     *, log=lambda msg: None) -> dict[str, float]:
    """Train (or load the cached) baseline into ``model`` and return its measured metrics.

    ``ctx.teacher`` must be ``model``. The checkpoint and metrics are written atomically.
    """
    ckpt, metrics_file = run_dir / BASELINE_FILE, run_dir / BASELINE_METRICS_FILE
    if ckpt.is_file() and metrics_file.is_file():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            metrics = json.loads(metrics_file.read_text())
        except Exception as exc:
            raise AutocompressError(f"{ckpt}: cached baseline does not match the study's model "
                                    f"({type(exc).__name__}); delete it to retrain, or use another --out") from None
        log(f"baseline loaded from {ckpt}")
        return metrics

    start = time.perf_counter()
    if spec.model.checkpoint is None and spec.baseline.epochs > 0:
        log(f"training the baseline for {spec.baseline.epochs} epochs (once per study)")
        seed_everything(spec.seed)
        try:
            fine_tune(model, ctx.data.train, ctx.data.val, baseline_recipe(spec),
                      FitPlan(epochs=spec.baseline.epochs, device=ctx.device, seed=spec.seed))
        except (KeyboardInterrupt, AutocompressError):
            raise
        except Exception as exc:  # e.g. an unreadable image deep in the data set, a NaN loss
            raise AutocompressError(f"training the baseline failed: {getattr(exc, 'reason', None) or error_line(exc)}; "
                                    "the study is kept, run the same command again once fixed") from None
    elif spec.model.checkpoint is None:
        log("warning: baseline.epochs is 0 and the model has no checkpoint: the teacher and every "
            "trial start from random weights")
    model.to("cpu").eval()
    train_s = time.perf_counter() - start
    example = ctx.example_batch()
    metrics = {**structure_metrics(model, example), **deployed_metrics(model, ctx)}
    metrics["accuracy_drop"] = 0.0
    metrics["train_s"] = round(train_s, 2)
    atomic_torch_save(model.state_dict(), ckpt)
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2))
    log(f"baseline: accuracy {metrics['accuracy']:.4f}, latency {metrics['latency_ms']:.3g} ms, "
        f"size {metrics['size_mb']:.3g} MB")
    return metrics
