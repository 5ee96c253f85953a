"""autocompress: an AutoML search engine for neural-network compression policies.

Everything the CLI does is a plain Python call too::

    from autocompress import load_study_spec, run_study
    run = run_study(load_study_spec("studies/digits_cnn.yaml"))

The names below are imported on first use: ``import autocompress`` alone stays cheap (the
engine's modules pull in torch, Optuna and NNI, several seconds on a small machine), so the
package's lowest layers and ``autocompress --help`` do not pay for the whole engine.
"""

from __future__ import annotations

import importlib
import logging as _logging
from typing import Any

# torch logs a CUDA_HOME warning when a CPU-only machine imports its extension helpers.
_logging.getLogger("torch.utils.cpp_extension").setLevel(_logging.ERROR)

from autocompress.version import __version__  # noqa: E402,F401

_PUBLIC = {
    "AutocompressError": "autocompress.errors",
    "ConfigError": "autocompress.errors",
    "TrialFailed": "autocompress.errors",
    "Policy": "autocompress.spec.policy",
    "SearchSpace": "autocompress.spec.space",
    "load_space": "autocompress.spec.space",
    "StudySpec": "autocompress.spec.config",
    "load_study_spec": "autocompress.spec.config",
    "TrialContext": "autocompress.trial.context",
    "TrialResult": "autocompress.trial.result",
    "run_trial": "autocompress.trial.run",
    "run_study": "autocompress.search.study",
    "ClusterOptions": "autocompress.search.cluster_run",
    "run_on_cluster": "autocompress.search.cluster_run",
    "load_exported": "autocompress.deploy.artifacts",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
