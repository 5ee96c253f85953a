"""Hand-made studies for report and export tests: the user attributes a search records, no training."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from autocompress.spec.policy import Policy

BASELINE = {"accuracy": 0.99, "latency_ms": 12.0, "size_mb": 1.2}
MAX_DROP = 0.10
# name: (accuracy, latency_ms, size_mb, pruning method, lr)
POINTS = {
    "A": (0.99, 10.0, 1.0, "none", 1e-3),
    "B": (0.98, 5.0, 0.5, "weight", 2e-3),
    "C": (0.975, 3.0, 0.6, "structured", 3e-3),
    "D": (0.90, 1.0, 0.3, "structured", 4e-3),
    "E": (0.50, 0.1, 0.1, "structured", 9e-3),      # breaks accuracy_drop <= 0.10
    "F": (0.95, 8.0, 0.9, "weight", 5e-3),          # dominated by B
}
DISTRIBUTIONS = {"pruning.method": CategoricalDistribution(["none", "weight", "structured"]),
                 "training.lr": FloatDistribution(1e-4, 1e-1, log=True)}
MEASURED_ON = {"device": "cpu", "device_name": "test cpu", "threads": 1, "batch_size": 1, "torch": "x"}


def crafted_study(*, name: str = "crafted", storage: str | None = None, three: bool = False,
                  summary: dict[str, str] | None = None) -> tuple[optuna.Study, dict[str, int]]:
    """A constrained study: baseline, six trials (one infeasible, one dominated), a failure and a
    pre-screened trial. Returns the study and {point name: trial number}."""
    names = ["accuracy", "latency_ms"] + (["size_mb"] if three else [])
    directions = ["maximize", "minimize"] + (["minimize"] if three else [])
    study = optuna.create_study(study_name=name, storage=storage, directions=directions)
    study.set_metric_names(names)
    for key, value in (("model", "builtin:digits_cnn"), ("data", "builtin:digits"),
                       ("objectives", [f"{d} {n}" for n, d in zip(names, directions)]),
                       ("constraints", [f"accuracy_drop <= {MAX_DROP}"]), ("sampler", "random"),
                       ("baseline_metrics", {**BASELINE, "accuracy_drop": 0.0})):
        study.set_user_attr(key, value)
    base = {**BASELINE, "accuracy_drop": 0.0}
    # constraints in the list format studies stored before Trial.set_constraint: still read
    study.add_trial(create_trial(values=[base[n] for n in names], system_attrs={"constraints": (-MAX_DROP,)},
                                 user_attrs={"baseline": True, "metrics": base, "policy": Policy().to_dict(),
                                             "policy_summary": "baseline (no compression)"}))
    numbers = {}
    for key, (acc, lat, size, method, lr) in POINTS.items():
        params = {"pruning.method": method, "training.lr": lr}
        metrics = {"accuracy": acc, "test_accuracy": acc - 0.005, "accuracy_drop": round(BASELINE["accuracy"] - acc, 6),
                   "latency_ms": lat, "latency_iqr_ms": lat / 50, "size_mb": size, "size_compressed_mb": size * 0.9,
                   "flops": 1e6 * size, "params": 1e5 * size, "nonzero_params": 1e5 * size}
        numbers[key] = len(study.trials)
        study.add_trial(create_trial(
            values=[metrics[n] for n in names], params=params, distributions=DISTRIBUTIONS,
            system_attrs={"constraints": (metrics["accuracy_drop"] - MAX_DROP,)},
            user_attrs={"metrics": metrics, "policy": Policy.from_flat(params).to_dict(),
                        "policy_summary": (summary or {}).get(key, f"{method} {key}"),
                        "measured_on": MEASURED_ON, "proof": {"params_after": metrics["params"]},
                        "history": [{"epoch": 1, "train_loss": 0.5, "val_accuracy": acc}],
                        "timings": {"finetune_s": 1.0}}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"pruning.method": "structured", "training.lr": 0.05},
                                 distributions=DISTRIBUTIONS,
                                 user_attrs={"fail_reason": "TrialFailed: speedup cannot shrink this model",
                                             "policy_summary": "structured X"}))
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"pruning.method": "weight", "training.lr": 0.06},
                                 distributions=DISTRIBUTIONS,
                                 user_attrs={"prescreened": "latency_ms 30 > 20 before training",
                                             "policy_summary": "weight Y"}))
    return study, numbers


def crafted_run_dir(tmp_path: Path, **kwargs) -> tuple[Path, dict[str, int]]:
    """A run folder like a search leaves: study.yaml plus an SQLite storage holding the study."""
    run = tmp_path / "run"
    run.mkdir()
    name = kwargs.get("name", "crafted")
    (run / "study.yaml").write_text(yaml.safe_dump({"name": name, "seed": 0}))
    _, numbers = crafted_study(storage=f"sqlite:///{run / 'study.db'}", **kwargs)
    return run, numbers
