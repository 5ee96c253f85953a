"""What every trial of a study shares: the data, the teacher, where it trains and where it is
measured, and the caches trials fill for each other (previews, known failures).

Built once, complete, and never changed afterwards (the caches are shared on purpose)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autocompress.devices import usable_cpus
from autocompress.trial.plan import TrialPlan
from autocompress.trial.result import Preview, Screen
from autocompress.training.loop import Epoch
from autocompress.zoo.data import DataBundle, make_loader


@dataclass(frozen=True)
class TargetSettings:
    """Where latency, energy and cost are measured (the deployment target)."""
    device: str = "cpu"
    batch_size: int = 1
    threads: int | None = 1
    max_time_s: float = 1.0
    throughput_batch_size: int | None = None   # also measure throughput_sps at this batch size
    seq_len: int | None = None                 # text: the length inputs are measured at (padding included)
    energy: bool = False                       # measure energy_mj (the study uses it: seconds per model)
    price_per_hour: float | None = None        # dollars per device-hour: cost_usd_per_1k

    @property
    def resolved_threads(self) -> int:
        """The CPU threads every runtime is given (``threads: null`` = every usable core, for
        PyTorch and ONNX Runtime alike)."""
        return self.threads or usable_cpus()


@dataclass(frozen=True)
class KnownFailure:
    """A failure every policy with the same knob values meets on this model (a runtime that
    cannot run a number format), and the trial that found it."""
    knobs: tuple[tuple[str, object], ...]
    reason: str


@dataclass(frozen=True)
class TrialContext:
    data: DataBundle
    teacher: nn.Module                        # the trained baseline; never modified
    baseline_metrics: Mapping[str, float]     # accuracy etc. of the teacher
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # training device
    target: TargetSettings = field(default_factory=TargetSettings)
    epochs: int = 3
    seed: int = 0
    eval_batch_size: int = 256
    base_dir: Path | None = None              # the study file's folder: paths in policies resolve against it
    where: tuple[str, str] = ("", "")         # (node, GPU) a cluster placed this worker on; recorded in measured_on
    # Called with the preview costs of the compressed, untrained model: stop before training
    # (a hard constraint already broken), go on, or measure again (a decision within noise).
    prescreen: Callable[[Preview], Screen] | None = None
    # Called after each epoch with (epoch, its history row, the preview): stop early
    # (multi-objective early stopping), go on, or measure the preview again.
    on_epoch: Callable[[int, Epoch, Preview], Screen] | None = None
    # Shared by the study's trials: previews by ``preview_key``, failures by ``plan.runtime_key``.
    previews: dict[str, Preview] = field(default_factory=dict)
    failures: dict[str, KnownFailure] = field(default_factory=dict)
    # The study's sensitivity pass (``compress.sensitivity.Sensitivity``), where a per-layer knob reads it.
    sensitivity: Any = None

    @property
    def target_device(self) -> str:
        return self.target.device

    def preview_key(self, plan: TrialPlan) -> str:
        """What decides a preview: the plan's cost key, and where and how it was timed."""
        t = self.target
        return f"{plan.cost_key} @{t.device}/{t.resolved_threads}t/b{t.batch_size}"

    def example_batch(self, n: int = 2) -> torch.Tensor:
        """``n`` training inputs; token ids padded or cut to ``target.seq_len`` where it is set."""
        loader = make_loader(self.data.train, n, shuffle=False)
        x = next(iter(loader))[0]
        if self.data.text is not None and self.target.seq_len:
            x = fit_length(x, self.target.seq_len, self.data.text.pad_id)
        return x


def fit_length(ids: torch.Tensor, length: int, pad_id: int) -> torch.Tensor:
    """Token ids cut to ``length`` (the last position keeps the row's last token, its [SEP]) or
    padded to it with ``pad_id``: what a deployed text model sees at that length."""
    n, have = ids.shape
    if length >= have:
        return torch.cat([ids, torch.full((n, length - have), pad_id, dtype=ids.dtype)], 1)
    cut = ids[:, :length].clone()
    last = (ids != pad_id).sum(1).clamp(min=1) - 1
    ends = ids[torch.arange(n), last]
    overflow = last >= length
    cut[overflow, -1] = ends[overflow]
    return cut
