"""StudySpec: the validated study file (model, data, space, objectives, constraints, budget).

Loaded and checked once, at the edge; errors name the file and the field path and list
the valid choices. Paths inside the file are relative to the file itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autocompress.errors import ConfigError, suggest
from autocompress.metrics import METRICS
from autocompress.spec.space import SearchSpace, load_space

SAMPLERS = ("nsga2", "tpe", "gp", "random")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    builtin: str | None = None
    torchvision: str | None = None
    factory: str | None = Field(None, description='"package.module:function"')
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="state dict loaded with weights_only=True")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        given = [k for k in ("builtin", "torchvision", "factory") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of builtin, torchvision, factory")
        return self

    @property
    def reference(self) -> str:
        kind = next(k for k in ("builtin", "torchvision", "factory") if getattr(self, k))
        return f"{kind}:{getattr(self, kind)}"


class DataSpec(_Strict):
    builtin: str | None = None
    cifar10: dict[str, Any] | None = None
    cifar100: dict[str, Any] | None = None
    imagefolder: dict[str, Any] | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        given = [k for k in ("builtin", "cifar10", "cifar100", "imagefolder", "factory")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of builtin, cifar10, cifar100, imagefolder, factory")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("builtin", "cifar10", "cifar100", "imagefolder", "factory")
                    if getattr(self, k) is not None)

    @property
    def reference(self) -> str:
        value = getattr(self, self.kind)
        return f"{self.kind}:{value}" if isinstance(value, str) else self.kind


class Objective(_Strict):
    metric: str
    direction: Literal["maximize", "minimize"]

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"unknown metric '{v}' {suggest(v, list(METRICS))}")
        return v


class Constraint(_Strict):
    metric: str
    op: Literal["<=", ">="]
    bound: float

    @classmethod
    def parse(cls, text: str) -> "Constraint":
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*", str(text))
        if not m:
            raise ValueError(f"cannot parse '{text}' (expected 'metric <= number' or 'metric >= number')")
        metric, op, bound = m.groups()
        if metric not in METRICS:
            raise ValueError(f"unknown metric '{metric}' {suggest(metric, list(METRICS))}")
        try:
            value = float(bound)
        except ValueError:
            raise ValueError(f"'{bound}' is not a number") from None
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
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


def _device_name(v: str, *, auto: bool) -> str:
    pattern = r"auto|cpu|cuda(:\d+)?|mps" if auto else r"cpu|cuda(:\d+)?|mps"
    if not re.fullmatch(pattern, v):
        raise ValueError(f"unknown device '{v}' (choose from: {'auto, ' if auto else ''}cpu, cuda, cuda:N, mps)")
    return v


class Budget(_Strict):
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


class BaselineSpec(_Strict):
    """How the teacher is trained when no checkpoint is given."""
    epochs: int = Field(15, ge=0, le=10_000)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-4, ge=0)


class TargetSpec(_Strict):
    """Where and how latency is measured: the device the model is deployed to."""
    device: str = "cpu"
    batch_size: int = Field(1, ge=1, le=65536)
    threads: int | None = Field(1, ge=1, le=1024, description="CPU threads; null = all")
    max_time_s: float = Field(1.0, gt=0, le=600, description="cap on timed runs per model")
    throughput_batch_size: int | None = Field(None, ge=1, le=65536,
                                              description="also measure throughput_sps at this batch size")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _device_name(v, auto=False)


class EarlyStoppingSpec(_Strict):
    """Multi-objective early stopping (see docs/ARCHITECTURE.md, "Early stopping")."""
    rule: Literal["none", "dominated"] = "dominated"
    grace_epochs: int = Field(1, ge=0, description="never stop before this many epochs")
    margin: float = Field(0.02, ge=0, le=1, description="accuracy gap that counts as clearly worse")
    min_dominators: int = Field(1, ge=1, description="trials that must dominate it at the same epoch")


class WarmStartSpec(_Strict):
    """Policies enqueued first, so the front is never worse than these."""
    recipes: bool = Field(True, description="the standard recipes (autocompress.search.efficiency.RECIPES)")
    policies: list[dict[str, dict[str, Any]]] = Field(default_factory=list,
                                                      description="your own, as nested policy sections")


class HeartbeatSpec(_Strict):
    """A worker that stops sending heartbeats for ``grace_s`` has its trial failed and retried."""
    interval_s: int = Field(30, ge=1, le=3600)
    grace_s: int = Field(90, ge=2, le=86400)
    max_retry: int = Field(2, ge=0, le=100)

    @model_validator(mode="after")
    def _grace(self) -> "HeartbeatSpec":
        if self.grace_s <= self.interval_s:
            raise ValueError("grace_s must be longer than interval_s")
        return self


class StudySpec(_Strict):
    name: str
    description: str = ""
    model: ModelSpec
    data: DataSpec
    search_space: str | dict[str, Any]
    objectives: list[Objective] = Field(min_length=1)
    constraints: list[Constraint] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    target: TargetSpec = Field(default_factory=TargetSpec)
    device: str = Field("auto", description="training device: auto, cpu, cuda, cuda:N, mps")
    devices: list[str] | None = Field(None, description="local workers, one per listed device "
                                                        "(search --workers overrides the count)")
    sampler: Literal["nsga2", "tpe", "gp", "random"] = "tpe"  # best at small budgets (docs/BENCHMARKS.md)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    storage: str | None = None
    prescreen: bool = Field(True, description="end a trial before training when a hard constraint "
                                              "is already broken by its structure")
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    warm_start: WarmStartSpec = Field(default_factory=WarmStartSpec)
    heartbeat: HeartbeatSpec = Field(default_factory=HeartbeatSpec)

    # set by load_study_spec, not by the file
    source: str | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("use letters, digits, '-', '_' and '.' (at most 100, no spaces)")
        return v

    @field_validator("constraints", mode="before")
    @classmethod
    def _constraints(cls, v: Any) -> Any:
        if not isinstance(v, list):
            raise ValueError("expected a list like ['accuracy_drop <= 0.02']")
        return [Constraint.parse(c) if isinstance(c, str) else c for c in v]

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _early_stopping(cls, v: Any) -> Any:
        return {"rule": v} if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _device_name(v, auto=True)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str] | None) -> list[str] | None:
        for d in v or []:
            _device_name(d, auto=False)
        if v is not None and not v:
            raise ValueError("give at least one device, or leave devices out")
        return v

    @model_validator(mode="after")
    def _objectives_unique(self) -> "StudySpec":
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError("each metric may appear once in objectives")
        used = names + [c.metric for c in self.constraints]
        if "throughput_sps" in used and not self.target.throughput_batch_size:
            raise ValueError("throughput_sps needs target.throughput_batch_size (e.g. 32)")
        return self

    @property
    def base_dir(self) -> Path:
        return Path(self.source).parent if self.source else Path.cwd()

    def resolve_path(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def load_space(self) -> SearchSpace:
        if isinstance(self.search_space, dict):
            return load_space(self.search_space, origin=f"{self.source or 'study'}: search_space")
        return load_space(self.resolve_path(self.search_space))

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "value_error")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: dict) -> str:
    msg = err.get("msg", "invalid")
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    return msg


def spec_from_dict(raw: Any, source: str) -> StudySpec:
    if raw is None:
        raise ConfigError(source, None, "empty study file")
    if not isinstance(raw, dict):
        raise ConfigError(source, None, "expected a mapping (name, model, data, search_space, objectives, ...)")
    try:
        spec = StudySpec.model_validate({**raw, "source": source})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _loc(err["loc"])
        msg = _message(err)
        if err.get("type") == "extra_forbidden":
            parent = err["loc"][:-1]
            fields = _fields_at(StudySpec, parent)
            msg = f"unknown field {suggest(err['loc'][-1], fields)}" if fields else msg
        raise ConfigError(source, loc or None, msg) from None
    spec.load_space()  # validate the space now, not at the first trial
    from autocompress.spec.policy import Policy

    for i, p in enumerate(spec.warm_start.policies):
        try:
            Policy.from_dict(p)
        except (ValueError, TypeError) as exc:
            raise ConfigError(source, f"warm_start.policies[{i}]", str(exc)) from None
    return spec


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return [n for n in current.model_fields if n != "source"]


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file; raises ConfigError naming the file and field."""
    from autocompress.spec.yamlfile import read_yaml

    return spec_from_dict(read_yaml(path, "study file"), str(path))


def spec_to_yaml(spec: StudySpec) -> str:
    """The resolved study, space inlined, for ``runs/<name>/study.yaml``."""
    data = spec.model_dump(mode="json", exclude={"source"})
    data["constraints"] = [str(c) for c in spec.constraints]
    data["search_space"] = spec.load_space().to_dict()
    return yaml.safe_dump(data, sort_keys=False)
