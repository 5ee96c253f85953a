"""What one trial produced, as frozen records (no Optuna here: ``search.record`` stores them)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from autocompress.deploy.runtimes import Deployment
from autocompress.spec.policy import Policy
from autocompress.training.loop import Epoch


@dataclass(frozen=True)
class Preview:
    """The costs of the compressed, untrained model (``trial.measure.preview_costs``): FLOPs and
    params of its structure, and latency and size of its deployed form when ``deployed`` (then
    they are the trial's final latency and size), else of the float model run eagerly."""
    metrics: Mapping[str, float]
    deployed: bool = False
    remeasured: bool = False    # its latency was measured again, longer, for a decision within noise


@dataclass(frozen=True)
class Screen:
    """A pre-screening or early-stopping verdict: ``reason`` to end the trial, or, when the
    decision rests on a measurement within its noise of the bound (``borderline``), a request
    to measure again (longer) and ask once more before ending a trial."""
    reason: str | None = None
    borderline: bool = False

    @property
    def stops(self) -> bool:
        return self.reason is not None and not self.borderline


@dataclass(frozen=True)
class MeasuredOn:
    """Where and how a trial's numbers were measured."""
    device: str
    device_name: str = ""
    threads: int | None = None
    batch_size: int = 1
    torch: str = ""
    train_device: str = ""
    host: str = ""
    node: str = ""          # the cluster node that ran the trial (its Ray node address); "" off a cluster
    gpu: str = ""           # the GPU the cluster gave the worker (its index on the node); "" without one

    @property
    def placed_on(self) -> str:
        """Where a cluster ran the trial ("node 10.0.0.3 GPU 1"); "" off a cluster."""
        return f"node {self.node}" + (f" GPU {self.gpu}" if self.gpu else "") if self.node else ""

    @classmethod
    def here(cls, *, device: str, threads: int | None, batch_size: int, train_device: str,
             where: tuple[str, str] = ("", "")) -> "MeasuredOn":
        name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
        return cls(device, name, threads, batch_size, torch.__version__, train_device, platform.node(), *where)


@dataclass(frozen=True)
class TrialResult:
    """Everything a finished trial measured; ``model`` is the compressed model itself and
    ``deployment`` its artifact as measured (neither is stored in the record: the search
    saves them as files, ``deploy.artifacts.save_trial_model``)."""
    policy: Policy
    metrics: Mapping[str, float | None]
    proof: Mapping[str, Any]
    history: tuple[Epoch, ...]
    timings: Mapping[str, float]
    measured_on: MeasuredOn
    preview: Preview
    epochs_run: int
    model: nn.Module | None = field(default=None, compare=False, repr=False)
    deployment: Deployment | None = field(default=None, compare=False, repr=False)   # the artifact measured


class Stopped(Exception):
    """The trial was ended on purpose: ``stage`` "prescreen" (a hard constraint is broken by
    the structure, before any training) or "early_stopping" (clearly dominated mid-training)."""

    def __init__(self, reason: str, preview: Preview, *, stage: str, history: tuple[Epoch, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.preview = preview
        self.stage = stage
        self.history = tuple(history)
