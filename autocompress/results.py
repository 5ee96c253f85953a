"""Open a finished or running study for reading (status, report, export)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from autocompress.errors import AutocompressError
from autocompress.storage import STUDY_FILE, default_storage_url, find_run_dir, open_storage
from autocompress.utils import redact_url


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
        spec = yaml.safe_load((run_dir / STUDY_FILE).read_text()) or {}
        name = spec.get("name", study)
        storage = storage or spec.get("storage") or default_storage_url(run_dir)
    rdb = open_storage(storage, heartbeat=False)
    try:
        loaded = optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        raise AutocompressError(f"no study named '{name}' in {redact_url(storage)}") from None
    return Results(loaded, run_dir, spec)
