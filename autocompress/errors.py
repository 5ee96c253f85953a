"""Domain errors: each one becomes a single readable line and exit code 2 at the CLI boundary."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any


class AutocompressError(Exception):
    """A problem the user can fix (bad input, missing file, unknown study)."""


class ConfigError(AutocompressError):
    """A study or search-space file, or an argument, is invalid.

    The message names the file and the field path, e.g.
    ``studies/x.yaml: objectives[1].metric: unknown metric 'latncy_ms' (choose from: ...)``.
    """

    def __init__(self, source: str | None, field: str | None, message: str) -> None:
        self.source = source
        self.field = field
        self.message = message
        where = ": ".join(p for p in (source, field) if p)
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class FailureKey:
    """Knob values under which every policy fails the same way on this model, e.g. a runtime
    that cannot run a number format: ``key`` names them, ``knobs`` are the values."""
    key: str
    knobs: tuple[tuple[str, Any], ...]


class TrialFailed(Exception):
    """A trial cannot finish (technique does not apply, NaN loss, out of memory).

    The study records ``reason`` on the trial and goes on.
    """

    def __init__(self, reason: str, *, known_as: FailureKey | None = None) -> None:
        self.reason = reason
        # Set when every policy with this key fails the same way on this model (e.g. a runtime
        # without kernels for a number format): later trials with the key end before training.
        self.known_as = known_as
        super().__init__(reason)


def suggest(value: object, choices: "list[str] | tuple[str, ...]") -> str:
    """'(choose from: a, b, c)' plus a close match when there is one."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"(choose from: {', '.join(str(c) for c in choices)}){hint}"
