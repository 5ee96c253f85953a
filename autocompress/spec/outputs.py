"""Output paths the user gives (run directory, export and apply folders, report files), checked
before anything is written: a folder must be creatable where it is named, a file must go into
an existing folder this process may write to. Errors name the option (``--out``, ``--csv``)."""

from __future__ import annotations

import os
from pathlib import Path

from autocompress.errors import ConfigError


def check_out_dir(path: str | Path, option: str) -> None:
    """``path`` is a folder, or one can be created there (with its missing parents)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(None, option, f"{path} is a file; expected a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise ConfigError(None, option, f"cannot create {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(None, option, f"cannot write to {existing} (permission denied)")


def check_out_file(path: str | Path, option: str) -> None:
    """``path`` names a file (not a folder) in an existing folder this process may write to."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(None, option, f"{path} is a folder; expected a file name")
    folder = path.parent
    if not folder.is_dir():
        existing = _nearest_existing(folder)
        what = f"{existing} is not a folder" if not existing.is_dir() else f"the folder {folder} does not exist"
        raise ConfigError(None, option, f"cannot write {path}: {what}")
    if not os.access(folder, os.W_OK | os.X_OK) or path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(None, option, f"cannot write {path} (permission denied)")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a broken link counts: it is in the way)."""
    current = path.absolute()
    while not (current.exists() or current.is_symlink()) and current != current.parent:
        current = current.parent
    return current
