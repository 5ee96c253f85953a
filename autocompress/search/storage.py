"""Where a study lives: the run directory and the Optuna storage.

The default store is an SQLite file under ``runs/<name>/study.db`` (Optuna's RDB storage, so
several local processes share it, heartbeats work, and ``optuna-dashboard sqlite:///...``
opens it). Any SQLAlchemy URL (e.g. ``postgresql://user@host/db``) is accepted instead.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from autocompress.errors import AutocompressError, ConfigError
from autocompress.utils import optuna_experimental, redact_url

STUDY_FILE = "study.yaml"          # the resolved study spec, written when the study is created
DB_FILE = "study.db"
STORAGE_FILE = "storage.url"       # a storage given with --storage, its password left out
HEARTBEAT_S = 30
GRACE_S = 90


def default_run_dir(name: str) -> Path:
    return Path("runs") / name


def default_storage_url(run_dir: Path) -> str:
    # quoted: a '?' or '#' in the run directory would otherwise end the path part of the URL
    return f"sqlite:///{quote(str((run_dir / DB_FILE).resolve()), safe='/ ')}"


def open_storage(url: str, *, heartbeat: bool = True, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S,
                 max_retry: int = 2) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats: a worker that dies has its trial failed after the grace
    period and re-queued (up to ``max_retry`` times)."""
    engine_kwargs = {}
    if url.startswith("sqlite"):
        # SQLite serializes writers; wait for the lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with optuna_experimental():
            kwargs = {}
            if heartbeat:
                kwargs = {"heartbeat_interval": heartbeat_s, "grace_period": grace_s,
                          "heartbeat_stale_trial_callback":
                              optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)}
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise AutocompressError(f"storage {redact_url(url)}: cannot open ({redact_url(detail)})") from None


def find_run_dir(name_or_dir: str) -> Path:
    """A run directory from a study name (``runs/<name>``) or a path."""
    p = Path(name_or_dir)
    for candidate in (p, default_run_dir(name_or_dir)):
        if (candidate / STUDY_FILE).is_file():
            return candidate
    raise ConfigError(None, None, f"no study '{name_or_dir}': neither {p}/{STUDY_FILE} nor "
                                  f"{default_run_dir(name_or_dir)}/{STUDY_FILE} exists "
                                  "(run 'autocompress search <study.yaml>' first, or pass --out)")


def check_url(url: str, field: str, source: str | None) -> None:
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(source, field, f"'{redact_url(url)}' is not a storage URL "
                                         "(examples: sqlite:///path/study.db, postgresql://user@host/db)") from None
