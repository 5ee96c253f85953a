"""Import user code from a "package.module:function" path written in the user's study file."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable


def import_callable(path: str, *, base_dir: Path | None = None) -> Callable[..., Any]:
    """Resolve ``"pkg.mod:fn"``; the study file's folder is importable too.

    Raises ValueError with a one-line reason when the path does not import.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"'{path}' is not of the form 'package.module:function'")
    if base_dir is not None and str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time error of user code is a config problem
        raise ValueError(f"cannot import module '{module_name}': {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"'{path}' is not callable")
    return obj
