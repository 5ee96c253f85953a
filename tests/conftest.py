"""Shared fixtures: tiny study files and a small digits trial context."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_SPACE = {
    "training": {
        "optimizer": {"choices": ["sgd", "adamw"]},
        "lr": {"low": 1e-3, "high": 1e-2, "log": True},
        "momentum": {"low": 0.8, "high": 0.95, "when": {"optimizer": ["sgd"]}},
        "batch_size": 64,
    }
}


def tiny_study(**overrides) -> dict:
    """A study that runs in seconds: digits, 20% of the training split, 1-epoch trials."""
    study = {
        "name": "tiny",
        "model": {"builtin": "digits_cnn", "kwargs": {"width": 8}},
        "data": {"builtin": "digits"},
        "search_space": TINY_SPACE,
        "objectives": [{"metric": "accuracy", "direction": "maximize"},
                       {"metric": "latency_ms", "direction": "minimize"}],
        "constraints": ["accuracy_drop <= 0.5"],
        "budget": {"trials": 2, "epochs": 1, "train_fraction": 0.2},
        "baseline": {"epochs": 1},
        "target": {"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.05},
        "device": "cpu",
        "sampler": "random",
        "seed": 0,
    }
    study.update(overrides)
    return study


@pytest.fixture
def write_study(tmp_path: Path):
    """write_study(**overrides) -> path of a study YAML in tmp_path."""

    def write(filename: str = "study.yaml", **overrides) -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(tiny_study(**overrides), sort_keys=False))
        return path

    return write


@pytest.fixture
def write_text(tmp_path: Path):
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture(scope="session")
def digits_bundle():
    from autocompress.zoo.data import digits

    return digits()


@pytest.fixture
def digits_ctx(digits_bundle):
    """A TrialContext with an (untrained) small digits CNN as the teacher."""
    from autocompress.trial import TargetSettings, TrialContext
    from autocompress.zoo.models import create_model

    torch.manual_seed(0)
    teacher = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=8)
    teacher.eval().requires_grad_(False)
    return TrialContext(data=digits_bundle.subset_train(0.3, 0), teacher=teacher,
                        baseline_metrics={"accuracy": 0.1, "size_mb": 0.05},
                        target=TargetSettings(max_time_s=0.05), epochs=1, seed=0)
