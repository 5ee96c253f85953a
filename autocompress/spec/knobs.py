"""One knob of a search space: its parsed form (``Knob``) and the checks of its entry in a
space file (``KnobParser``: values through ``validate.check_value``, ranges Optuna can sample
as written; ``parse_when``: conditions on values the knob named can take)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from autocompress.errors import ConfigError, suggest
from autocompress.spec.validate import check_value, shown, type_name


@dataclass(frozen=True)
class Knob:
    name: str                                  # "section.knob"
    distribution: BaseDistribution | None      # None: fixed value
    value: Any = None                          # the fixed value
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, params: dict[str, Any]) -> bool:
        return all(params.get(dep) in allowed for dep, allowed in self.when)


@dataclass(frozen=True)
class KnobParser:
    """Checks one knob's entry against its policy field (``validate.check_value``) and that a
    range can be sampled as written (Optuna would otherwise move ``high`` without a word)."""
    path: str
    field: dataclasses.Field
    where: str

    def fail(self, field_path: str, message: str) -> ConfigError:
        return ConfigError(self.where, field_path, message)

    def value(self, v: Any, field_path: str) -> Any:
        try:
            return check_value(self.field, v)
        except ValueError as exc:
            raise self.fail(field_path, str(exc)) from None

    def choices(self, spec: dict) -> BaseDistribution:
        if {"low", "high", "step", "log"} & set(spec):
            raise self.fail(self.path, "give either 'choices' or 'low'/'high', not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise self.fail(f"{self.path}.choices", f"expected a non-empty list, got {shown(choices)}")
        checked = [self.value(c, f"{self.path}.choices[{i}]") for i, c in enumerate(choices)]
        if any(isinstance(c, tuple) for c in checked):
            raise self.fail(f"{self.path}.choices", "list-valued knobs cannot be searched")
        for i, c in enumerate(checked):
            if c in checked[:i]:
                raise self.fail(f"{self.path}.choices[{i}]", f"duplicate choice {shown(c)}: list each choice once")
        return CategoricalDistribution(checked)

    def range(self, spec: dict) -> BaseDistribution:
        path, f = self.path, self.field
        missing = [k for k in ("low", "high") if k not in spec]
        if missing:
            raise self.fail(path, f"missing '{missing[0]}' (a range needs low and high, "
                                  "or use choices, or a bare value to fix it)")
        if f.type not in (int, float):
            choices_ok = f.metadata.get("choices")
            raise self.fail(path, f"a range needs a numeric knob; {path} is {type_name(f.type)}"
                                  + (f" {suggest('', choices_ok)}" if choices_ok else ""))
        low, high = self.value(spec["low"], f"{path}.low"), self.value(spec["high"], f"{path}.high")
        if low > high:
            raise self.fail(path, f"low ({low}) is greater than high ({high})")
        log, step = spec.get("log", False), self.step(spec.get("step"))
        if not isinstance(log, bool):
            raise self.fail(f"{path}.log", f"expected true or false, got {shown(log)}")
        if step is not None and log:
            raise self.fail(path, "'step' and 'log' cannot be used together")
        if log and low <= 0:
            raise self.fail(f"{path}.low", "a log range needs low > 0")
        if step is not None and high > low:
            self.check_grid(low, high, step)
        if f.type is int:
            return IntDistribution(low, high, log=log, step=step or 1)
        return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))

    def step(self, step: Any) -> Any:
        if step is None:
            return None
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
            raise self.fail(f"{self.path}.step", f"expected a positive, finite number, got {shown(step)}")
        if self.field.type is int:
            if float(step) != int(step):
                raise self.fail(f"{self.path}.step", f"an integer knob needs an integer step, got {step!r}")
            return int(step)
        return step

    def check_grid(self, low: float, high: float, step: float) -> None:
        """Optuna samples ``low + k * step`` and silently lowers ``high`` to the last point of
        that grid; a range it would change is refused here instead (decimal arithmetic, as Optuna)."""
        span, d_step = Decimal(str(high)) - Decimal(str(low)), Decimal(str(step))
        if d_step > span:
            raise self.fail(f"{self.path}.step", f"step {step} is larger than high - low ({float(span):g}): "
                                                 f"only low ({low}) could be sampled")
        if span % d_step:
            top = span // d_step * d_step + Decimal(str(low))
            top = int(top) if self.field.type is int else float(top)
            raise self.fail(f"{self.path}.step", f"step {step} does not divide high - low ({float(span):g}): Optuna would "
                                                 f"lower high to {top}; set high: {top} or another step")


def parse_when(path: str, when: Any, where: str, seen: dict[str, Knob], section: str) -> tuple:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise ConfigError(where, f"{path}.when", f"expected a mapping {{knob: [values]}}, got {shown(when)}")
    out = []
    for dep, allowed in when.items():
        dep_name = dep if "." in str(dep) else f"{section}.{dep}"
        if dep_name not in seen:
            raise ConfigError(where, f"{path}.when.{dep}",
                              "must name a knob declared earlier in the file "
                              f"{suggest(dep_name, list(seen))}" if seen else
                              "must name a knob declared earlier in the file")
        if not isinstance(allowed, list):
            allowed = [allowed]
        if not allowed:
            raise ConfigError(where, f"{path}.when.{dep}", "expected at least one value")
        for i, v in enumerate(allowed):
            if not _can_take(seen[dep_name], v):
                raise ConfigError(where, f"{path}.when.{dep}",
                                  f"{shown(v)} is not a value {dep_name} can take {_takes(seen[dep_name], v)}")
        out.append((dep_name, tuple(allowed)))
    return tuple(out)


def _can_take(knob: Knob, value: Any) -> bool:
    d = knob.distribution
    if d is None:
        return value == knob.value
    if isinstance(d, CategoricalDistribution):
        return value in d.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and d.low <= value <= d.high


def _takes(knob: Knob, value: Any) -> str:
    d = knob.distribution
    if d is None:
        return f"(it is fixed to {shown(knob.value)})"
    if isinstance(d, CategoricalDistribution):
        return suggest(value, list(d.choices))
    return f"(it ranges over [{d.low}, {d.high}])"
