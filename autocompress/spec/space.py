"""Search space: YAML knobs -> Optuna distributions -> a frozen ``Policy``.

A space file has one section per policy part (``pruning``, ``quantization``, ...) and one
entry per knob::

    pruning:
      method:    {choices: [none, weight, structured]}      # categorical
      ratio:     {low: 0.1, high: 0.8, step: 0.05,           # float (int when the knob is int)
                  when: {method: [weight, structured]}}      # only sampled when active
    training:
      lr:        {low: 1.0e-4, high: 0.1, log: true}
      batch_size: 64                                         # a bare value is fixed

``when`` names knobs declared earlier (``knob`` in the same section or ``section.knob``).
Inactive knobs keep the policy's default value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from autocompress.errors import ConfigError, suggest
from autocompress.spec.policy import Policy, coerce, knob_fields, section_types
from autocompress.spec.yamlfile import read_yaml

_SPEC_KEYS = {"choices", "low", "high", "step", "log", "when", "value"}


@dataclass(frozen=True)
class Knob:
    name: str                                  # "section.knob"
    distribution: BaseDistribution | None      # None: fixed value
    value: Any = None                          # the fixed value
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, params: dict[str, Any]) -> bool:
        return all(params.get(dep) in allowed for dep, allowed in self.when)


class SearchSpace:
    """An ordered list of knobs; ``sample(trial)`` gives a ``Policy``."""

    def __init__(self, knobs: list[Knob]) -> None:
        self.knobs = knobs

    @property
    def searched(self) -> list[Knob]:
        return [k for k in self.knobs if k.distribution is not None]

    def sample(self, trial: "optuna.Trial") -> Policy:
        """Suggest every active knob on ``trial``; fixed knobs are applied silently."""
        values: dict[str, Any] = {}
        for knob in self.knobs:
            if not knob.active(values):
                continue
            if knob.distribution is None:
                values[knob.name] = knob.value
            else:
                values[knob.name] = _suggest(trial, knob.name, knob.distribution)
        return Policy.from_flat(values)

    def resolve(self, params: dict[str, Any]) -> Policy:
        """The policy a trial with these Optuna params ran (fixed knobs added back)."""
        values: dict[str, Any] = {}
        for knob in self.knobs:
            if not knob.active(values):
                continue
            values[knob.name] = knob.value if knob.distribution is None else params.get(knob.name)
        return Policy.from_flat({k: v for k, v in values.items() if v is not None})

    def distributions(self) -> dict[str, BaseDistribution]:
        return {k.name: k.distribution for k in self.searched}

    def fixed(self) -> dict[str, Any]:
        return {k.name: k.value for k in self.knobs if k.distribution is None}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved space, in the file format (written next to the results)."""
        out: dict[str, dict[str, Any]] = {}
        for k in self.knobs:
            section, _, name = k.name.partition(".")
            d = k.distribution
            if d is None:
                spec: Any = list(k.value) if isinstance(k.value, tuple) else k.value
            elif isinstance(d, CategoricalDistribution):
                spec = {"choices": list(d.choices)}
            else:
                spec = {"low": d.low, "high": d.high}
                if d.log:
                    spec["log"] = True
                if d.step is not None and not (isinstance(d, IntDistribution) and d.step == 1):
                    spec["step"] = d.step
            if k.when:
                if not isinstance(spec, dict):
                    spec = {"value": spec}
                spec["when"] = {dep: list(vals) for dep, vals in k.when}
            out.setdefault(section, {})[name] = spec
        return out


def _suggest(trial: "optuna.Trial", name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def load_space(source: str | Path | dict, *, origin: str | None = None) -> SearchSpace:
    """Load and validate a space from a YAML file path or an already-parsed mapping."""
    if isinstance(source, dict):
        raw, where = source, origin or "search_space"
    else:
        where = str(source)
        raw = read_yaml(source, "search space file")
    if raw is None:
        raise ConfigError(where, None, "empty search space")
    if not isinstance(raw, dict):
        raise ConfigError(where, None, "expected a mapping of sections (pruning, quantization, ...)")
    return parse_space(raw, where)


def parse_space(raw: dict, where: str) -> SearchSpace:
    sections = section_types()
    knobs: list[Knob] = []
    seen: dict[str, Knob] = {}
    for section, entries in raw.items():
        if section not in sections:
            raise ConfigError(where, str(section), f"unknown section {suggest(section, list(sections))}")
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ConfigError(where, section, "expected a mapping of knobs")
        fields = knob_fields(sections[section])
        for name, spec in entries.items():
            path = f"{section}.{name}"
            if name not in fields:
                raise ConfigError(where, path, f"unknown knob {suggest(name, list(fields))}")
            knob = _parse_knob(path, fields[name], spec, where, seen, section)
            knobs.append(knob)
            seen[path] = knob
    return SearchSpace(knobs)


def _parse_knob(path: str, f: dataclasses.Field, spec: Any, where: str,
                seen: dict[str, Knob], section: str) -> Knob:
    when: tuple = ()
    if isinstance(spec, dict):
        bad = set(spec) - _SPEC_KEYS
        if bad:
            raise ConfigError(where, f"{path}.{sorted(bad)[0]}",
                              f"unknown key {suggest(sorted(bad)[0], sorted(_SPEC_KEYS))}")
        when = _parse_when(path, spec.get("when"), where, seen, section)
    parser = _KnobParser(path, f, where)
    if not isinstance(spec, dict) or set(spec) <= {"value", "when"}:
        value = spec.get("value") if isinstance(spec, dict) else spec
        if isinstance(spec, dict) and "value" not in spec:
            raise ConfigError(where, path, "a knob with only 'when' needs 'value', 'choices' or low/high")
        return Knob(path, None, parser.value(value, path), when)
    dist = parser.choices(spec) if "choices" in spec else parser.range(spec)
    return Knob(path, dist, None, when)


@dataclass(frozen=True)
class _KnobParser:
    """Checks one knob's entry against its policy field (choices, type, valid range)."""
    path: str
    field: dataclasses.Field
    where: str

    def fail(self, field_path: str, message: str) -> ConfigError:
        return ConfigError(self.where, field_path, message)

    def value(self, v: Any, field_path: str) -> Any:
        f, meta = self.field, self.field.metadata
        v = coerce(f, v)
        if meta.get("choices") and v not in meta["choices"]:
            raise self.fail(field_path, f"invalid value {v!r} {suggest(v, meta['choices'])}")
        if not _type_ok(f.type, v):
            raise self.fail(field_path, f"expected {_type_name(f.type)}, got {v!r}")
        lo, hi = meta.get("low"), meta.get("high")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if lo is not None and v < lo or hi is not None and v > hi:
                raise self.fail(field_path, f"{v!r} is outside the valid range [{lo if lo is not None else '-inf'}, "
                                            f"{hi if hi is not None else 'inf'}]")
        return v

    def choices(self, spec: dict) -> BaseDistribution:
        if {"low", "high", "step", "log"} & set(spec):
            raise self.fail(self.path, "give either 'choices' or 'low'/'high', not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise self.fail(f"{self.path}.choices", "expected a non-empty list")
        checked = [self.value(c, f"{self.path}.choices[{i}]") for i, c in enumerate(choices)]
        if any(isinstance(c, tuple) for c in checked):
            raise self.fail(f"{self.path}.choices", "list-valued knobs cannot be searched")
        return CategoricalDistribution(checked)

    def range(self, spec: dict) -> BaseDistribution:
        path, f = self.path, self.field
        missing = [k for k in ("low", "high") if k not in spec]
        if missing:
            raise self.fail(path, f"missing '{missing[0]}' (a range needs low and high, "
                                  "or use choices, or a bare value to fix it)")
        if f.type not in (int, float):
            choices_ok = f.metadata.get("choices")
            raise self.fail(path, f"a range needs a numeric knob; {path} is {_type_name(f.type)}"
                                  + (f" {suggest('', choices_ok)}" if choices_ok else ""))
        low, high = self.value(spec["low"], f"{path}.low"), self.value(spec["high"], f"{path}.high")
        if low > high:
            raise self.fail(path, f"low ({low}) is greater than high ({high})")
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise self.fail(f"{path}.log", f"expected true or false, got {log!r}")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
                raise self.fail(f"{path}.step", f"expected a positive number, got {step!r}")
            if log:
                raise self.fail(path, "'step' and 'log' cannot be used together")
        if log and low <= 0:
            raise self.fail(f"{path}.low", "a log range needs low > 0")
        try:
            if f.type is int:
                return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
            return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None


def _parse_when(path: str, when: Any, where: str, seen: dict[str, Knob], section: str) -> tuple:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise ConfigError(where, f"{path}.when", "expected a mapping {knob: [values]}")
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
        out.append((dep_name, tuple(allowed)))
    return tuple(out)


def _type_ok(t: Any, v: Any) -> bool:
    if t is bool:
        return isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t is str:
        return isinstance(v, str)
    if str(t).startswith("tuple"):
        return isinstance(v, tuple) and all(isinstance(x, str) for x in v)
    return True


def _type_name(t: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        t, "a list of strings")
