"""The study's inputs and the context its trials run in, built from a study file: data and
model checked to fit, the baseline trained once (or loaded), the target settings. ``prepare``
(the search), export (re-running a trial) and ``apply`` share it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from autocompress.search.checks import check_forward
from autocompress.spec.config import StudySpec
from autocompress.spec.policy import Policy
from autocompress.trial.baseline import prepare_baseline
from autocompress.trial.context import TargetSettings, TrialContext
from autocompress.trial.sensitivity import formats_for, load_or_measure, needed
from autocompress.utils import resolve_device, seed_everything
from autocompress.zoo import build_data, build_model
from autocompress.zoo.data import DataBundle


def build_inputs(spec: StudySpec) -> tuple[DataBundle, nn.Module]:
    """The study's data and its model (untrained, or loaded from the checkpoint), checked to
    fit each other."""
    data = build_data(spec.data, seed=spec.seed, source=spec.source)
    seed_everything(spec.seed)  # the baseline's initial weights
    teacher = build_model(spec.model, num_classes=data.num_classes, input_shape=data.input_shape,
                          source=spec.source, text=data.text)
    check_forward(teacher, data, spec)
    return data, teacher


def trial_context(spec: StudySpec, data: DataBundle, teacher: nn.Module, *, device: str | None = None
                  ) -> TrialContext:
    """The context of ``spec``'s trials before the baseline is known (it trains the teacher)."""
    t = spec.target
    target = TargetSettings(device=t.device, batch_size=t.batch_size, threads=t.threads, max_time_s=t.max_time_s,
                            throughput_batch_size=t.throughput_batch_size, seq_len=t.seq_len,
                            energy="energy_mj" in spec.used_metrics, price_per_hour=t.price_per_hour)
    return TrialContext(data=data, teacher=teacher, baseline_metrics={}, device=resolve_device(device or spec.device),
                        target=target, epochs=spec.budget.epochs, seed=spec.seed, base_dir=spec.base_dir)


def with_baseline(ctx: TrialContext, spec: StudySpec, run_dir: Path, *, log: Callable[[str], None],
                  train_fraction: float | None = None) -> TrialContext:
    """``ctx`` once its teacher is trained (or loaded from ``run_dir``) and measured: frozen,
    with its metrics, and the training split the trials see (``budget.train_fraction``)."""
    metrics = prepare_baseline(ctx.teacher, ctx, spec, run_dir, log=log)
    ctx.teacher.eval().requires_grad_(False)
    fraction = spec.budget.train_fraction if train_fraction is None else train_fraction
    return replace(ctx, baseline_metrics=metrics, data=ctx.data.subset_train(fraction, spec.seed))


def study_context(spec: StudySpec, *, baseline_dir: Path, epochs: int | None = None,
                  train_fraction: float | None = None, say: Callable[[str], None] = lambda m: None,
                  policies: Sequence[Policy] = ()) -> TrialContext:
    """The TrialContext of ``spec``'s trials without an Optuna study: data, baseline (loaded
    from ``baseline_dir`` or trained and cached there), target device, and the sensitivity pass
    (cached there too) where one of ``policies`` reads it."""
    data, teacher = build_inputs(spec)
    Path(baseline_dir).mkdir(parents=True, exist_ok=True)
    ctx = with_baseline(trial_context(spec, data, teacher), spec, Path(baseline_dir), log=say,
                        train_fraction=train_fraction)
    if needed(list(policies)):
        ctx = replace(ctx, sensitivity=load_or_measure(ctx, Path(baseline_dir), formats_for(list(policies)), say=say))
    return ctx if epochs is None else replace(ctx, epochs=epochs)
