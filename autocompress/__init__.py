"""autocompress: an AutoML search engine for neural-network compression policies.

Everything the CLI does is a plain Python call too::

    from autocompress import load_study_spec, run_study
    run = run_study(load_study_spec("studies/digits_cnn.yaml"))
"""

import logging as _logging

# torch logs a CUDA_HOME warning when a CPU-only machine imports its extension helpers.
_logging.getLogger("torch.utils.cpp_extension").setLevel(_logging.ERROR)

from autocompress.spec.config import StudySpec, load_study_spec
from autocompress.errors import AutocompressError, ConfigError, TrialFailed
from autocompress.deploy.artifacts import load_exported
from autocompress.spec.policy import Policy
from autocompress.spec.space import SearchSpace, load_space
from autocompress.search.study import run_study
from autocompress.trial.run import TrialContext, TrialResult, run_trial

__version__ = "0.1.0"

__all__ = ["AutocompressError", "ConfigError", "Policy", "SearchSpace", "StudySpec", "TrialContext",
           "TrialFailed", "TrialResult", "load_exported", "load_space", "load_study_spec", "run_study",
           "run_trial"]
