"""Reading the user's YAML files: one place that turns every way a file can be unreadable
into a ConfigError naming the file (and the line, where YAML knows it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autocompress.errors import ConfigError


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping with the same key twice: PyYAML would keep the last one without a word."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first
            except TypeError:  # an unhashable key: SafeLoader refuses it with its own message
                continue
            if seen:
                raise DuplicateKey(None, None, f"duplicate key '{key}' (first on line {first[key]}): "
                                               "give each key once", key_node.start_mark)
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse ``path``; ``what`` names the file's role in errors ("study file", ...)."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ConfigError(source, None, f"{what} not found")
    if not path.is_file():
        raise ConfigError(source, None, "not a file")
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(source, None, "not a text file (expected YAML)") from None
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read it ({exc.strerror or type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, DuplicateKey):
            raise ConfigError(source, None, f"{line}{problem}") from None
        tabs = "; indent with spaces, not tabs" if "'\\t'" in problem else ""
        raise ConfigError(source, None, f"{line}invalid YAML ({' '.join(problem.split())}){tabs}") from None


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a mapping with the same key twice (``DuplicateKey``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
