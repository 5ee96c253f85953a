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
from autocompress.spec.knobs import Knob, KnobParser, parse_when
from autocompress.spec.policy import Policy, knob_fields, section_types
from autocompress.spec.yamlfile import read_yaml

_SPEC_KEYS = {"choices", "low", "high", "step", "log", "when", "value"}


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
        when = parse_when(path, spec.get("when"), where, seen, section)
    parser = KnobParser(path, f, where)
    if not isinstance(spec, dict) or set(spec) <= {"value", "when"}:
        value = spec.get("value") if isinstance(spec, dict) else spec
        if isinstance(spec, dict) and "value" not in spec:
            raise ConfigError(where, path, "a knob with only 'when' needs 'value', 'choices' or low/high")
        return Knob(path, None, parser.value(value, path), when)
    dist = parser.choices(spec) if "choices" in spec else parser.range(spec)
    return Knob(path, dist, None, when)
