"""Open a finished or running study for reading (status, report, export)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autocompress.errors import AutocompressError
from autocompress.search.storage import DB_FILE, STORAGE_FILE, STUDY_FILE, default_storage_url, find_run_dir, open_storage
from autocompress.utils import redact_url
from autocompress.spec.yamlfile import read_yaml


@dataclass
class Results:
    study: optuna.Study
    run_dir: Path | None
    spec: dict[str, Any]           # the resolved study file (empty when only a URL was given)


def load_results(study: str, *, storage: str | None = None) -> Results:
    """From a study name (``runs/<name>``), a run directory, or a name plus a storage URL."""
    run_dir: Path | None = None
    spec: dict[str, Any] = {}
    name = study
    if storage is None or (Path(study) / STUDY_FILE).is_file():
        run_dir = find_run_dir(study)
        spec = read_yaml(run_dir / STUDY_FILE, "run directory's study file")
        if not isinstance(spec, dict):
            raise AutocompressError(f"{run_dir / STUDY_FILE}: not a study file (expected a mapping)")
        name = spec.get("name", study)
        storage = storage or spec.get("storage") or _recorded_storage(run_dir)
    rdb = open_storage(storage, heartbeat=False)
    try:
        loaded = optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        raise AutocompressError(f"no study named '{name}' in {redact_url(storage)}") from None
    return Results(loaded, run_dir, spec)


def _recorded_storage(run_dir: Path) -> str:
    """The storage ``search --storage`` recorded in the run directory, else its SQLite file.
    A recorded URL lost its password: it must come from ``--storage`` or the environment."""
    recorded = run_dir / STORAGE_FILE
    if recorded.is_file():
        url = recorded.read_text(encoding="utf-8").strip()
        if ":***@" not in url:
            return url  # it had no password: usable as it is
        if os.environ.get("AUTOCOMPRESS_STORAGE"):
            return os.environ["AUTOCOMPRESS_STORAGE"]
        raise AutocompressError(f"the study in {run_dir} lives in {url}: pass --storage URL or set "
                                "AUTOCOMPRESS_STORAGE (its password is not stored)")
    if not (run_dir / DB_FILE).is_file():
        raise AutocompressError(f"{run_dir} has no {DB_FILE}: pass --storage URL for the study's storage")
    return default_storage_url(run_dir)
