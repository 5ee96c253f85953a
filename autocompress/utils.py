"""Small shared helpers: atomic file writes, seeding, credential-free storage URLs, error lines."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import optuna
import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a kill never leaves a
    half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a plain open() honours the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by path relative to it (``/``-separated)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def redact_url(url: str | None) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    if not url:
        return str(url)
    # the user name may be empty (postgresql://:secret@host/db): libpq then uses the OS user
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(name)


def error_line(exc: BaseException, limit: int = 240) -> str:
    """``Type: first line of the message`` (whitespace collapsed, cut at ``limit``): how a
    failure is told in one line, as a trial's reason or a CLI error."""
    text = " ".join(str(exc).strip().splitlines()[0].split()) if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


def device_of(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def optuna_experimental() -> Iterator[None]:
    """Use Optuna features it marks experimental (heartbeat retries, metric names, grouped
    TPE) without a warning per call: they are chosen on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


@contextlib.contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Importing torchao (directly, or through transformers where it is installed) registers enums
    that torch's pytree logs a warning about, two lines at every study start: errors only here."""
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pytree.setLevel(level)
