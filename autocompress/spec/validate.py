"""A policy value given by the user, checked against its ``Policy`` field: the one check for the
values of a search space, a policy file (``apply``) and the study's warm starts.

A field's metadata says what a search space could produce: ``choices`` for a categorical
knob, ``low``/``high`` for a numeric one, and its type (numbers are finite).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from autocompress.errors import ConfigError, suggest
from autocompress.spec.policy import Policy, coerce, knob_fields, section_types


def check_value(f: dataclasses.Field, value: Any) -> Any:
    """``value`` cast to the type of field ``f`` (``policy.coerce``), or ValueError saying why
    no search space could produce it: not a valid choice, wrong type, not finite, out of range."""
    v = coerce(f, value)
    choices = f.metadata.get("choices")
    if choices and v not in choices:
        hint = "; YAML reads unquoted on/off/yes/no as true/false: quote it" if isinstance(v, bool) else ""
        raise ValueError(f"invalid value {shown(v)} {suggest(v, choices)}{hint}")
    if not type_ok(f.type, v):
        raise ValueError(f"expected {type_name(f.type)}, got {shown(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v!r}")
    lo, hi = f.metadata.get("low"), f.metadata.get("high")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if lo is not None and v < lo or hi is not None and v > hi:
            raise ValueError(f"{v!r} is outside the valid range [{lo if lo is not None else '-inf'}, "
                             f"{hi if hi is not None else 'inf'}]")
    return v


def policy_from_user(raw: Any, source: str | None, field: str | None = None) -> Policy:
    """A ``Policy`` from the user's nested mapping ``{section: {knob: value}}`` (a policy file,
    a warm start), every value checked with ``check_value``. Errors are ``ConfigError`` naming
    ``source`` and the field path under ``field`` (e.g. ``policy.quantization.mode``)."""
    def at(*parts: Any) -> str | None:
        return ".".join(str(p) for p in (field, *parts) if p is not None) or None

    if not isinstance(raw, dict):
        raise ConfigError(source, at(), f"expected a mapping of policy sections {suggest('', list(section_types()))}")
    sections, nested = section_types(), {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(source, at(name), f"unknown section {suggest(name, list(sections))}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(source, at(name), f"expected a mapping of knobs, got {shown(values)}")
        knobs = knob_fields(sections[name])
        nested[name] = {}
        for knob, value in values.items():
            if knob not in knobs:
                raise ConfigError(source, at(name, knob), f"unknown knob {suggest(knob, list(knobs))}")
            try:
                nested[name][knob] = check_value(knobs[knob], value)
            except ValueError as exc:
                raise ConfigError(source, at(name, knob), str(exc)) from None
    return Policy.from_dict(nested)


def type_ok(t: Any, v: Any) -> bool:
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


def type_name(t: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        t, "a list of strings")


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line errors."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
