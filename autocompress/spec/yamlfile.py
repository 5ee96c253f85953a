"""Reading the user's YAML files: one place that turns every way a file can be unreadable
into a ConfigError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autocompress.errors import ConfigError


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse ``path``; ``what`` names the file's role in errors ("study file", ...)."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ConfigError(source, None, f"{what} not found")
    if not path.is_file():
        raise ConfigError(source, None, "not a file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, None, "not a text file (expected YAML)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(source, None, f"{line}invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
