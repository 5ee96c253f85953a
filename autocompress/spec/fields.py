"""The parts of a study file: model, data, objectives, constraints, budget, baseline recipe,
target, early stopping, warm starts, heartbeats. Each is a frozen pydantic model that refuses
unknown fields; ``config.StudySpec`` puts them together."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autocompress.errors import suggest
from autocompress.metrics.registry import METRICS, objective_names


class Strict(BaseModel):
    # .nan/.inf in any number field is refused ("expected a finite number"), never compared
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


MODEL_SOURCES = ("builtin", "torchvision", "factory", "transformers")


class ModelSpec(Strict):
    builtin: str | None = None
    torchvision: str | None = None
    factory: str | None = Field(None, description='"package.module:function"')
    transformers: dict[str, Any] | None = Field(None, description="{path: a save_pretrained directory} or "
                                                                  "{config: {model_type: bert, ...}}")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="state dict loaded with weights_only=True")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        given = [k for k in MODEL_SOURCES if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(MODEL_SOURCES)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in MODEL_SOURCES if getattr(self, k))

    @property
    def reference(self) -> str:
        if self.kind == "transformers":
            t = self.transformers or {}
            return (f"transformers:{t['path']}" if "path" in t
                    else f"transformers:{(t.get('config') or {}).get('model_type', '?')} (config)")
        return f"{self.kind}:{getattr(self, self.kind)}"


class DataSpec(Strict):
    builtin: str | None = None
    cifar10: dict[str, Any] | None = None
    cifar100: dict[str, Any] | None = None
    imagefolder: dict[str, Any] | None = None
    factory: str | None = None
    text: dict[str, Any] | None = None   # token ids from texts: {builtin: reviews} or {train: file.csv, ...} (zoo.text)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        given = [k for k in ("builtin", "cifar10", "cifar100", "imagefolder", "factory", "text")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of builtin, cifar10, cifar100, imagefolder, factory, text")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("builtin", "cifar10", "cifar100", "imagefolder", "factory", "text")
                    if getattr(self, k) is not None)

    @property
    def reference(self) -> str:
        value = getattr(self, self.kind)
        return f"{self.kind}:{value}" if isinstance(value, str) else self.kind


class Objective(Strict):
    metric: str
    direction: Literal["maximize", "minimize"]

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS or not METRICS[v].objective:
            raise ValueError(f"unknown metric '{v}' {suggest(v, objective_names())}")
        return v


class Constraint(Strict):
    metric: str
    op: Literal["<=", ">="]
    bound: float

    @classmethod
    def parse(cls, text: str) -> "Constraint":
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(<=|>=)\s*(\S+)\s*", str(text))
        if not m:
            raise ValueError(f"cannot parse '{text}' (expected 'metric <= number' or 'metric >= number')")
        metric, op, bound = m.groups()
        if metric not in METRICS or not METRICS[metric].objective:
            raise ValueError(f"unknown metric '{metric}' {suggest(metric, objective_names())}")
        try:
            value = float(bound.lower().replace(".nan", "nan").replace(".inf", "inf"))
        except ValueError:
            raise ValueError(f"'{bound}' is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"the bound of '{text}' is not a finite number")
        return cls(metric=metric, op=op, bound=value)

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 means satisfied."""
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def parse_duration(value: Any) -> float | None:
    """'20m', '1h', '90s', '1h30m' or a number of seconds -> seconds."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("expected a duration like '20m' or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*",
                         str(value))
        if not m or not any(m.groups()):
            raise ValueError(f"cannot parse duration '{value}' (examples: 90s, 20m, 1h30m)")
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


def device_name(v: str, *, auto: bool) -> str:
    pattern = r"auto|cpu|cuda(:\d+)?|mps" if auto else r"cpu|cuda(:\d+)?|mps"
    if not re.fullmatch(pattern, v):
        raise ValueError(f"unknown device '{v}' (choose from: {'auto, ' if auto else ''}cpu, cuda, cuda:N, mps)")
    return v


class Budget(Strict):
    trials: int | None = Field(30, gt=0, le=1_000_000)
    timeout: float | None = Field(None, description="wall time: '20m', '1h' or seconds")
    epochs: int = Field(3, ge=0, le=10_000, description="fine-tune epochs of each trial")
    train_fraction: float = Field(1.0, gt=0.0, le=1.0,
                                  description="fraction of the training split each trial sees")

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float | None:
        return parse_duration(v)

    @model_validator(mode="after")
    def _some_limit(self) -> "Budget":
        if self.trials is None and self.timeout is None:
            raise ValueError("give trials, timeout or both")
        return self


class BaselineSpec(Strict):
    """How the teacher is trained when no checkpoint is given."""
    epochs: int = Field(15, ge=0, le=10_000)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-4, ge=0)


class TargetSpec(Strict):
    """Where and how latency (and energy, and cost) is measured: the device the model is deployed to."""
    device: str = "cpu"
    batch_size: int = Field(1, ge=1, le=65536)
    threads: int | None = Field(1, ge=1, le=1024, description="CPU threads; null = all")
    max_time_s: float = Field(1.0, gt=0, le=600, description="cap on timed runs per model")
    throughput_batch_size: int | None = Field(None, ge=1, le=65536,
                                              description="the batch size throughput_sps is measured at, e.g. 32")
    price_per_hour: float | None = Field(None, gt=0, le=1e6,
                                         description="dollars per hour of the target device, e.g. 2.48")
    seq_len: int | None = Field(None, ge=2, le=1_000_000,
                                description="text: the token sequence length latency and FLOPs are measured at, "
                                            "padding included (default: the data's seq_len)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return device_name(v, auto=False)


class EarlyStoppingSpec(Strict):
    """Multi-objective early stopping (see docs/ARCHITECTURE.md, "Early stopping")."""
    rule: Literal["none", "dominated", "halving"] = "dominated"
    grace_epochs: int = Field(1, ge=0, description="never stop before this many epochs (dominated)")
    margin: float = Field(0.02, ge=0, le=1, description="accuracy gap that counts as clearly worse (dominated)")
    min_dominators: int = Field(1, ge=1, description="trials that must dominate it at the same epoch (dominated)")
    eta: int = Field(3, ge=2, le=10, description="halving: 1/eta of a rung's trials go on to the next")
    min_epochs: int = Field(1, ge=1, description="halving: the first rung (then min_epochs * eta**k)")


class WarmStartSpec(Strict):
    """Policies enqueued first, so the front is never worse than these."""
    recipes: bool = Field(True, description="the standard recipes (autocompress.search.efficiency.RECIPES)")
    policies: list[dict[str, dict[str, Any]]] = Field(default_factory=list,
                                                      description="your own, as nested policy sections")


class HeartbeatSpec(Strict):
    """A worker that stops sending heartbeats for ``grace_s`` has its trial failed and retried."""
    interval_s: int = Field(30, ge=1, le=3600)
    grace_s: int = Field(90, ge=2, le=86400)
    max_retry: int = Field(2, ge=0, le=100)

    @model_validator(mode="after")
    def _grace(self) -> "HeartbeatSpec":
        if self.grace_s <= self.interval_s:
            raise ValueError("grace_s must be longer than interval_s")
        return self
