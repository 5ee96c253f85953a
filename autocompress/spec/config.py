"""StudySpec: the validated study file (model, data, space, objectives, constraints, budget).

Loaded and checked once, at the edge; errors name the file and the field path and list
the valid choices. Paths inside the file are relative to the file itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from autocompress.errors import ConfigError, suggest
from autocompress.metrics.registry import METRICS, why_unavailable
from autocompress.spec.fields import (BaselineSpec, Budget, Constraint, DataSpec, EarlyStoppingSpec, HeartbeatSpec,
                                      ModelSpec, Objective, Strict, TargetSpec, WarmStartSpec, device_name,
                                      parse_duration)
from autocompress.spec.space import SearchSpace, load_space
from autocompress.spec.validate import policy_from_user, shown
from autocompress.spec.yamlfile import read_yaml

SAMPLERS = ("nsga2", "tpe", "gp", "random")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

__all__ = ["BaselineSpec", "Budget", "Constraint", "DataSpec", "EarlyStoppingSpec", "HeartbeatSpec", "ModelSpec",
           "Objective", "StudySpec", "TargetSpec", "WarmStartSpec", "load_study_spec", "parse_duration",
           "spec_from_dict", "spec_to_yaml"]


class StudySpec(Strict):
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
    candidates: int = Field(4, ge=1, le=256, description="policies drawn and previewed per trial; the trial "
                                                         "runs one that no other beats on cost and untrained "
                                                         "accuracy (1: no filtering; docs/BENCHMARKS.md)")
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

    @field_validator("search_space", mode="before")
    @classmethod
    def _space(cls, v: Any) -> Any:
        if not isinstance(v, (str, dict)):
            raise ValueError(f"expected a mapping of sections (pruning, quantization, ...) or the path of a space "
                             f"file, got {shown(v)}")
        return v

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _early_stopping(cls, v: Any) -> Any:
        return {"rule": v} if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return device_name(v, auto=True)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: list[str] | None) -> list[str] | None:
        for d in v or []:
            device_name(d, auto=False)
        if v is not None and not v:
            raise ValueError("give at least one device, or leave devices out")
        return v

    @model_validator(mode="after")
    def _objectives_unique(self) -> "StudySpec":
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError("each metric may appear once in objectives")
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

    @property
    def used_metrics(self) -> set[str]:
        """The metrics its objectives and constraints use."""
        return {*self.metric_names, *(c.metric for c in self.constraints)}


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


# pydantic's wording for a value of the wrong kind, in the words of a YAML file
_EXPECTED = {"dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
             "list_type": "a list", "string_type": "a string", "finite_number": "a finite number",
             "int_type": "an integer", "int_parsing": "an integer", "float_type": "a number",
             "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false"}


def _message(err: dict) -> str:
    msg = err.get("msg", "invalid")
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    if err.get("type") in _EXPECTED:
        msg = f"expected {_EXPECTED[err['type']]}, got {shown(err.get('input'))}"
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
    check_measurable(spec)
    for i, p in enumerate(spec.warm_start.policies):
        policy_from_user(p, source, f"warm_start.policies[{i}]")
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


def check_measurable(spec: StudySpec) -> None:
    """An objective or constraint on a metric this machine cannot measure for the study's
    target device, or without a target setting it needs (a price, a batch size), is refused
    here, not turned into failed trials or silent zeros (``metrics.registry``)."""
    used = [(f"objectives[{i}].metric", o.metric) for i, o in enumerate(spec.objectives)]
    used += [(f"constraints[{i}]", c.metric) for i, c in enumerate(spec.constraints)]
    for field, metric in used:
        needs = METRICS[metric].needs
        if needs and getattr(spec.target, needs) is None:
            what = TargetSpec.model_fields[needs].description
            raise ConfigError(spec.source, field, f"{metric} needs target.{needs} ({what})")
        reason = why_unavailable(metric, spec.target.device)
        if reason:
            raise ConfigError(spec.source, field, f"{metric} cannot be measured on this machine: {reason}")


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file; raises ConfigError naming the file and field."""
    return spec_from_dict(read_yaml(path, "study file"), str(path))


def spec_to_yaml(spec: StudySpec) -> str:
    """The resolved study, space inlined, for ``runs/<name>/study.yaml``."""
    data = spec.model_dump(mode="json", exclude={"source"})
    data["constraints"] = [str(c) for c in spec.constraints]
    data["search_space"] = spec.load_space().to_dict()
    return yaml.safe_dump(data, sort_keys=False)
