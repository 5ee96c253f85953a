"""The baseline (teacher): the user's model trained once per study with a fixed recipe, or
loaded from their checkpoint; cached under the run directory and measured like a trial.

Two checks before it is cached, each on the validation split:

- stale BatchNorm statistics (``fresh_statistics``): eval-mode accuracy far below the accuracy
  with batch statistics (torchvision's MobileNetV3 after a short training: momentum 0.01) means
  the running statistics never caught up; they are re-estimated from training batches, and kept
  only if that does not lower the accuracy. "Far": more than ``stale_gap(n)``.
- chance (``check_above_chance``): a teacher whose accuracy cannot be told from 1/num_classes
  learned nothing, and every trial would be compared with noise: the study stops in one line
  naming the likely causes, before any trial, and nothing is cached, so the same command works
  again once the cause is fixed. A cached baseline at chance (written before this check) is
  trained again.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
import torch
from torch import nn

from autocompress.compress.batchnorm import batch_statistics_accuracy, recalibrate_batchnorm
from autocompress.errors import AutocompressError
from autocompress.metrics.accuracy import evaluate
from autocompress.spec.config import StudySpec
from autocompress.spec.policy import Policy, TrainingPolicy
from autocompress.training.loop import FitPlan, fine_tune
from autocompress.trial.context import TrialContext
from autocompress.trial.measure import baseline_metrics
from autocompress.utils import atomic_torch_save, atomic_write_text, error_line, seed_everything
from autocompress.zoo.data import make_loader

BASELINE_FILE = "baseline.pt"
BASELINE_METRICS_FILE = "baseline.json"
# A model that learned nothing scores 1/num_classes on average; its measured accuracy stays within
# CHANCE_Z binomial standard errors of that except with probability 0.13% (one-sided).
CHANCE_Z = 3.0
# Stale statistics: batch statistics beat eval mode by more than two binomial standard errors of an
# accuracy (at p = 1/2, the widest: 1/sqrt(n)) and by more than 2 points; smaller gaps are within
# the noise of batch statistics themselves and of the constraints a study usually sets (0.02).
STALE_MIN_GAP = 0.02
RECALIBRATION_BATCHES = 32   # training batches (of baseline.batch_size) when the statistics are stale


def baseline_recipe(spec: StudySpec) -> Policy:
    b = spec.baseline
    return Policy(training=TrainingPolicy(optimizer="adamw", lr=b.lr, weight_decay=b.weight_decay,
                                          schedule="cosine", batch_size=b.batch_size))


def prepare_baseline(model: nn.Module, ctx: TrialContext, spec: StudySpec, run_dir: Path,
                     *, log=lambda msg: None) -> dict[str, float]:
    """Train (or load the cached) baseline into ``model`` and return its measured metrics.

    ``ctx.teacher`` must be ``model``. The checkpoint and metrics are written atomically, and
    only for a baseline above chance (``check_above_chance`` raises ``AutocompressError``).
    """
    ckpt, metrics_file = run_dir / BASELINE_FILE, run_dir / BASELINE_METRICS_FILE
    if ckpt.is_file() and metrics_file.is_file():
        metrics = _load_cached(model, ckpt, metrics_file, ctx, log)
        if metrics is not None:
            return metrics

    start = time.perf_counter()
    how = _train(model, ctx, spec, log)
    if how is not None:   # random weights (baseline.epochs 0, no checkpoint) were announced already
        accuracy, note = fresh_statistics(model, ctx, spec, log)
        check_above_chance(accuracy, ctx, how, note, log)
    model.to("cpu").eval()
    train_s = time.perf_counter() - start
    metrics = baseline_metrics(model, ctx)
    metrics["train_s"] = round(train_s, 2)
    atomic_torch_save(model.state_dict(), ckpt)
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2))
    log(f"baseline: accuracy {metrics['accuracy']:.4f}, latency {metrics['latency_ms']:.3g} ms, "
        f"size {metrics['size_mb']:.3g} MB")
    return metrics


def _load_cached(model: nn.Module, ckpt: Path, metrics_file: Path, ctx: TrialContext, log
                 ) -> dict[str, float] | None:
    """The cached baseline loaded into ``model`` and its metrics; None (``model`` as it was, the
    files removed) when its accuracy is at chance."""
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        metrics = json.loads(metrics_file.read_text())
    except Exception as exc:
        raise AutocompressError(f"{ckpt}: cached baseline does not match the study's model "
                                f"({type(exc).__name__}); delete it to retrain, or use another --out") from None
    accuracy = metrics.get("accuracy")
    if accuracy is None or not at_chance(accuracy, ctx.data.num_classes, len(ctx.data.val)):
        log(f"baseline loaded from {ckpt}")
        return metrics
    log(f"cached baseline {ckpt} is at chance (val accuracy {accuracy:.2f}): training it again")
    model.load_state_dict(initial)
    ckpt.unlink()
    metrics_file.unlink()
    return None


def _train(model: nn.Module, ctx: TrialContext, spec: StudySpec, log) -> str | None:
    """Train ``model`` with the baseline recipe unless it comes from a checkpoint; says what the
    teacher is (for messages), None for random weights (baseline.epochs 0, no checkpoint)."""
    if spec.model.checkpoint is not None:
        return f"loading the checkpoint {spec.model.checkpoint}"
    if spec.baseline.epochs == 0:
        log("warning: baseline.epochs is 0 and the model has no checkpoint: the teacher and every "
            "trial start from random weights")
        return None
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
    return f"{spec.baseline.epochs} epoch{'s' if spec.baseline.epochs > 1 else ''}"


# -- the two checks ------------------------------------------------------------------------------
def stale_gap(samples: int) -> float:
    """How far eval-mode accuracy must fall below batch-statistics accuracy to call the running
    statistics stale: two binomial standard errors at p = 1/2 on ``samples``, at least 2 points."""
    return max(STALE_MIN_GAP, 1.0 / math.sqrt(max(samples, 1)))


def chance_level(num_classes: int, samples: int) -> float:
    """The highest val accuracy still at chance: 1/num_classes plus ``CHANCE_Z`` binomial standard
    errors of an accuracy measured on ``samples`` (0.147 for 10 classes and 360 samples)."""
    p = 1.0 / num_classes
    return p + CHANCE_Z * math.sqrt(p * (1.0 - p) / max(samples, 1))


def can_tell_chance(num_classes: int, samples: int) -> bool:
    """Whether ``samples`` validation samples tell chance from a model halfway to perfect, so that
    passing the chance test is not asking too much of a teacher (it takes 4 samples for 10 classes,
    19 for 3, 36 for 2)."""
    return num_classes >= 2 and chance_level(num_classes, samples) <= (1.0 + 1.0 / num_classes) / 2


def at_chance(accuracy: float, num_classes: int, samples: int) -> bool:
    """Whether ``accuracy`` cannot be told from chance (False where ``samples`` are too few to tell)."""
    return can_tell_chance(num_classes, samples) and accuracy <= chance_level(num_classes, samples)


def fresh_statistics(model: nn.Module, ctx: TrialContext, spec: StudySpec, log) -> tuple[float, str]:
    """The teacher's eval-mode val accuracy once its BatchNorm statistics are not stale, and what
    was found (for the chance message). Stale ones are re-estimated over ``RECALIBRATION_BATCHES``
    training batches; the re-estimate is undone if it lowers the accuracy."""
    val = make_loader(ctx.data.val, ctx.eval_batch_size, shuffle=False)
    model.to(ctx.device)
    before = evaluate(model, val, ctx.device)
    batch = batch_statistics_accuracy(model, val, ctx.device)
    if batch is None:
        return before, ""
    if batch - before <= stale_gap(len(ctx.data.val)):
        return before, f"batch statistics give {batch:.2f}"
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    train = make_loader(ctx.data.train, spec.baseline.batch_size, shuffle=True, seed=spec.seed)
    done = recalibrate_batchnorm(model, train, max_batches=RECALIBRATION_BATCHES, device=ctx.device)
    after = evaluate(model, val, ctx.device)
    found = (f"BatchNorm statistics were stale (val accuracy {before:.3f} in eval mode, {batch:.3f} with batch "
             f"statistics): re-estimated over {done.batches} training batches ({done.samples} samples, "
             f"{done.layers} layers)")
    if after < before:
        model.load_state_dict(saved)
        log(f"baseline: {found}, which gave {after:.3f}: the trained statistics are kept")
        return before, f"BatchNorm statistics re-estimated: {before:.2f} -> {after:.2f}, not kept"
    log(f"baseline: {found}: val accuracy {after:.3f}")
    return after, f"BatchNorm statistics re-estimated: {before:.2f} -> {after:.2f}"


def check_above_chance(accuracy: float, ctx: TrialContext, how: str, note: str, log) -> None:
    """Stop the study (``AutocompressError``, one line) when the teacher's val ``accuracy`` is at
    chance (``chance_level``); ``how`` it came to be and a ``note`` on its statistics go in the line."""
    k, n = ctx.data.num_classes, len(ctx.data.val)
    if k >= 2 and not can_tell_chance(k, n) and accuracy <= chance_level(k, n):
        log(f"warning: baseline val accuracy {accuracy:.2f} is not above chance for {k} classes, but {n} validation "
            "samples are too few to tell: the study goes on")
    if not at_chance(accuracy, k, n):
        return
    causes = ("a checkpoint trained on other data, another class order or another input normalisation"
              if how.startswith("loading") else
              "too few epochs or a too-high/low learning rate (baseline.epochs, baseline.lr), labels not "
              "matching the inputs")
    raise AutocompressError(
        f"baseline val accuracy {accuracy:.2f} is at chance for {k} classes (at most {chance_level(k, n):.2f} on {n} "
        f"validation "
        f"samples) after {how}: {causes}, or stale BatchNorm statistics ({note or 'no BatchNorm layer'}); "
        "nothing was cached: run the same command again once fixed")
