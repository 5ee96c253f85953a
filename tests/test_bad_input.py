"""The bad-input sweep: every malformed input gives one clear line, exit code 2, no
traceback, and leaves an existing study and its files untouched. One row per case."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from autocompress.cli import app

from conftest import PG_PASSWORD, tiny_study

runner = CliRunner()


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def _study(tmp: Path, **overrides) -> str:
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study(**overrides), sort_keys=False))
    return str(path)


def _file(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _space(tmp: Path, text: str) -> str:
    _file(tmp, "space.yaml", text)
    return _study(tmp, search_space="space.yaml")


def _ckpt(tmp: Path, obj) -> str:
    torch.save(obj, tmp / "ckpt.pt")
    return _study(tmp, model={"builtin": "digits_cnn", "kwargs": {"width": 8}, "checkpoint": "ckpt.pt"})


def _factory(tmp: Path, body: str) -> str:
    import sys

    sys.modules.pop("badfactory", None)  # each case brings its own version of the module
    _file(tmp, "badfactory.py", body)
    return _study(tmp, model={"factory": "badfactory:build"})


def _out(tmp: Path) -> str:
    return str(tmp / "out")  # a fresh folder a bad command must not create


def _target(**overrides) -> dict:
    return {**tiny_study()["target"], **overrides}


def _apply(tmp: Path, policy: str) -> list[str]:
    """apply a plain policy file with --study"""
    return ["apply", _file(tmp, "policy.yaml", policy), "--study", _study(tmp), "--out", _out(tmp), "--epochs", "0"]


def _worker(run_dir: str, *options: str) -> list[str]:
    return ["worker", "--study", "tiny", "--storage", f"sqlite:///{run_dir}/study.db", "--out", run_dir,
            "--trials", "1", *options]


def _duplicate(tmp: Path, key: str, again: str) -> str:
    """a valid study file with ``key: ...`` written a second time right after it"""
    text = yaml.safe_dump(tiny_study(), sort_keys=False)
    return _file(tmp, "s.yaml", text.replace(f"{key}\n", f"{key}\n{again}\n", 1))


def _taken(tmp: Path) -> str:
    return _file(tmp, "taken", "a regular file where a folder is needed")


_GPUS = torch.cuda.device_count()
_ABSENT_GPU = f"cuda:{_GPUS}"  # one past the last GPU: absent on every machine, with or without GPUs
_NO_GPU = _GPUS == 0
_NO_MPS = not torch.backends.mps.is_available()

# (id, argv builder(tmp, run_dir) -> list[str], words expected in the one line[, environment])
CASES = [
    # -- study file -------------------------------------------------------------------------
    ("empty-study", lambda t, r: ["search", _file(t, "s.yaml", ""), "--out", r], "empty study file"),
    ("yaml-syntax", lambda t, r: ["search", _file(t, "s.yaml", "name: [a\n"), "--out", r], "invalid YAML"),
    ("binary-garbage", lambda t, r: ["search", _file(t, "s.yaml", bytes(range(256)) * 4), "--out", r], "s.yaml"),
    ("top-level-list", lambda t, r: ["search", _file(t, "s.yaml", "- a\n- b\n"), "--out", r], "expected a mapping"),
    ("unknown-key", lambda t, r: ["search", _study(t, epochz=3), "--out", r], "epochz: unknown field"),
    ("missing-name", lambda t, r: ["search", _file(t, "s.yaml", "model: {builtin: mlp}\n"), "--out", r], "name"),
    ("name-wrong-type", lambda t, r: ["search", _study(t, name=["a"]), "--out", r], "name"),
    ("objectives-not-list", lambda t, r: ["search", _study(t, objectives="accuracy"), "--out", r], "objectives"),
    ("unknown-metric", lambda t, r: ["search", _study(t, objectives=[{"metric": "acc", "direction": "maximize"}]),
                                     "--out", r], "unknown metric 'acc'"),
    ("bad-direction", lambda t, r: ["search", _study(t, objectives=[{"metric": "accuracy", "direction": "max"}]),
                                    "--out", r], "objectives[0].direction"),
    ("negative-budget", lambda t, r: ["search", _study(t, budget={"trials": -1}), "--out", r], "budget.trials"),
    ("huge-budget", lambda t, r: ["search", _study(t, budget={"trials": 10**15}), "--out", r], "budget.trials"),
    ("negative-epochs", lambda t, r: ["search", _study(t, budget={"trials": 2, "epochs": -2}), "--out", r],
     "budget.epochs"),
    ("bad-timeout", lambda t, r: ["search", _study(t, budget={"timeout": "soonish"}), "--out", r], "budget.timeout"),
    ("zero-fraction", lambda t, r: ["search", _study(t, budget={"trials": 2, "train_fraction": 0}), "--out", r],
     "budget.train_fraction"),
    ("bad-constraint", lambda t, r: ["search", _study(t, constraints=["accuracy ~ 1"]), "--out", r], "constraints"),
    ("unknown-sampler", lambda t, r: ["search", _study(t, sampler="cmaes"), "--out", r], "sampler"),
    ("negative-seed", lambda t, r: ["search", _study(t, seed=-5), "--out", r], "seed"),
    ("zero-batch", lambda t, r: ["search", _study(t, target={"batch_size": 0}), "--out", r], "target.batch_size"),
    ("bad-device", lambda t, r: ["search", _study(t, device="gpu0"), "--out", r], "device"),
    ("bad-heartbeat", lambda t, r: ["search", _study(t, heartbeat={"interval_s": 10, "grace_s": 5}), "--out", r],
     "grace_s"),
    ("two-model-sources", lambda t, r: ["search", _study(t, model={"builtin": "mlp", "torchvision": "resnet18"}),
                                        "--out", r], "exactly one"),
    ("unknown-builtin-model", lambda t, r: ["search", _study(t, model={"builtin": "gpt9"}), "--out", r],
     "unknown model 'gpt9'"),
    ("unknown-data", lambda t, r: ["search", _study(t, data={"builtin": "imagenet"}), "--out", r],
     "unknown data set"),
    ("cifar-root-missing", lambda t, r: ["search", _study(t, data={"cifar10": {"root": "nope"}}), "--out", r],
     "never downloads"),
    # -- user code and checkpoints -------------------------------------------------------------
    ("factory-not-importable", lambda t, r: ["search", _study(t, model={"factory": "zz_missing_mod:build"}),
                                             "--out", r], "cannot import module"),
    ("factory-raises", lambda t, r: ["search", _factory(t, "def build(num_classes, in_channels):\n"
                                                          "    raise ValueError('no such width')\n"), "--out", r],
     "raised ValueError: no such width"),
    ("factory-not-a-module", lambda t, r: ["search", _factory(t, "def build(num_classes, in_channels):\n"
                                                                "    return 42\n"), "--out", r], "not nn.Module"),
    ("factory-returns-a-tuple", lambda t, r: ["search", _factory(t, "from torch import nn\n"
                                                                  "class M(nn.Linear):\n"
                                                                  "    def forward(self, x):\n"
                                                                  "        return super().forward(x.flatten(1)), x\n"
                                                                  "def build(num_classes, in_channels):\n"
                                                                  "    return M(64, num_classes)\n"), "--out", r],
     "the model returns a tuple"),
    ("checkpoint-not-state-dict", lambda t, r: ["search", _ckpt(t, [1, 2, 3]), "--out", r], "not a state dict"),
    ("checkpoint-pickled-code", lambda t, r: ["search", _ckpt(t, {"w": _Evil()}), "--out", r], "pickled code"),
    ("checkpoint-mismatch", lambda t, r: ["search", _ckpt(t, {"w": torch.zeros(2)}), "--out", r],
     "does not match the model"),
    # -- search space file ------------------------------------------------------------------------
    ("space-unknown-section", lambda t, r: ["search", _space(t, "prunning: {}\n"), "--out", r], "did you mean 'pruning'"),
    ("space-unknown-knob", lambda t, r: ["search", _space(t, "pruning: {ration: 0.5}\n"), "--out", r], "pruning.ration"),
    ("space-low-gt-high", lambda t, r: ["search", _space(t, "training: {lr: {low: 0.1, high: 0.01}}\n"), "--out", r],
     "greater than high"),
    ("space-missing", lambda t, r: ["search", _study(t, search_space="nowhere.yaml"), "--out", r], "not found"),
    ("space-yaml-syntax", lambda t, r: ["search", _space(t, "training: {lr: [\n"), "--out", r], "invalid YAML"),
    ("space-empty", lambda t, r: ["search", _space(t, ""), "--out", r], "empty search space"),
    ("space-wrong-type", lambda t, r: ["search", _space(t, "training: {batch_size: lots}\n"), "--out", r],
     "expected an integer"),
    ("space-bad-choice", lambda t, r: ["search", _space(t, "quantization: {mode: {choices: [int3]}}\n"), "--out", r],
     "invalid value 'int3'"),
    # -- command-line arguments ----------------------------------------------------------------------
    ("no-such-study-file", lambda t, r: ["search", str(t / "absent.yaml"), "--out", r], "not found"),
    ("trials-zero", lambda t, r: ["search", _study(t), "--out", r, "--trials", "0"], "--trials"),
    ("trials-not-a-number", lambda t, r: ["search", _study(t), "--out", r, "--trials", "many"], "--trials"),
    ("timeout-garbage", lambda t, r: ["search", _study(t), "--out", r, "--timeout", "later"], "--timeout"),
    ("workers-zero", lambda t, r: ["search", _study(t), "--out", r, "--workers", "0"], "--workers"),
    ("unknown-option", lambda t, r: ["search", _study(t), "--out", r, "--fast"], "--fast"),
    ("status-unknown-study", lambda t, r: ["status", str(t / "nothing")], "no study"),
    ("export-unknown-trial", lambda t, r: ["export", r, "--trial", "9999"], "9999"),
    ("export-unknown-metric", lambda t, r: ["export", r, "--minimize", "speed"], "speed"),
    ("report-unknown-study", lambda t, r: ["report", str(t / "nothing")], "no study"),
    # -- storage URLs -------------------------------------------------------------------------------------
    ("storage-not-a-url", lambda t, r: ["search", _study(t), "--out", r, "--storage", "just words"],
     "not a storage URL"),
    ("storage-unknown-dialect", lambda t, r: ["search", _study(t), "--out", r, "--storage", "nosuchdb://x/y"],
     "storage"),
    ("storage-unreachable", lambda t, r: ["search", _study(t), "--out", r, "--storage",
                                          f"postgresql://u:{PG_PASSWORD}@127.0.0.1:1/db"], "cannot open"),
    ("existing-study-other-objectives", lambda t, r: [
        "search", _study(t, objectives=[{"metric": "size_mb", "direction": "minimize"}]), "--out", r],
     "different objectives"),
    # -- values no search space could produce (policy files, warm starts) ---------------------------------
    ("apply-unknown-choice", lambda t, r: _apply(t, "quantization: {mode: int3}\n"),
     "quantization.mode: invalid value 'int3'"),
    ("apply-ratio-out-of-range", lambda t, r: _apply(t, "pruning: {method: weight, ratio: 1.5}\n"),
     "pruning.ratio: 1.5 is outside the valid range"),
    ("apply-wrong-type", lambda t, r: _apply(t, "training: {batch_size: big}\n"),
     "training.batch_size: expected an integer"),
    ("apply-bool-for-int", lambda t, r: _apply(t, "training: {batch_size: true}\n"), "training.batch_size"),
    ("apply-unknown-knob", lambda t, r: _apply(t, "pruning: {ration: 0.5}\n"), "did you mean 'ratio'"),
    ("apply-exported-unknown-choice", lambda t, r: ["apply", _file(t, "policy.yaml", "policy:\n  quantization: "
                                                                                       "{mode: int3}\n"),
                                                    "--out", _out(t)], "policy.quantization.mode"),
    ("warm-start-unknown-choice", lambda t, r: [
        "search", _study(t, warm_start={"policies": [{"quantization": {"mode": "int3"}}]}), "--out", _out(t)],
     "warm_start.policies[0].quantization.mode: invalid value 'int3'"),
    ("warm-start-out-of-range", lambda t, r: [
        "search", _study(t, warm_start={"policies": [{}, {"pruning": {"ratio": 7}}]}), "--out", _out(t)],
     "warm_start.policies[1].pruning.ratio"),
    ("warm-start-wrong-type", lambda t, r: [
        "search", _study(t, warm_start={"policies": [{"training": {"optimizer": 3}}]}), "--out", _out(t)],
     "warm_start.policies[0].training.optimizer"),
    # -- numbers that are not finite --------------------------------------------------------------------------
    ("budget-timeout-inf", lambda t, r: ["search", _file(t, "s.yaml", yaml.safe_dump(tiny_study()).replace(
        "train_fraction:", "timeout: .inf\n  train_fraction:")), "--out", _out(t)], "budget.timeout"),
    ("baseline-lr-nan", lambda t, r: ["search", _study(t, baseline={"epochs": 1, "lr": float("nan")}),
                                      "--out", _out(t)], "baseline.lr: expected a finite number"),
    ("target-max-time-inf", lambda t, r: ["search", _study(t, target=_target(max_time_s=float("inf"))),
                                          "--out", _out(t)], "target.max_time_s"),
    ("target-price-inf", lambda t, r: ["search", _study(t, target=_target(price_per_hour=float("inf"))),
                                       "--out", _out(t)], "target.price_per_hour: expected a finite number"),
    ("target-price-zero", lambda t, r: ["search", _study(t, target=_target(price_per_hour=0)), "--out", _out(t)],
     "target.price_per_hour: Input should be greater than 0"),
    ("cost-without-a-price", lambda t, r: ["search", _study(t, constraints=["cost_usd_per_1k <= 0.01"]),
                                           "--out", _out(t)],
     "constraints[0]: cost_usd_per_1k needs target.price_per_hour (dollars per hour of the target device"),
    ("margin-nan", lambda t, r: ["search", _study(t, early_stopping={"margin": float("nan")}), "--out", _out(t)],
     "early_stopping.margin"),
    ("constraint-bound-nan", lambda t, r: ["search", _study(t, constraints=["accuracy_drop <= .nan"]),
                                           "--out", _out(t)], "not a finite number"),
    ("constraint-bound-inf", lambda t, r: ["search", _study(t, constraints=["latency_ms <= inf"]),
                                           "--out", _out(t)], "not a finite number"),
    ("constraint-bound-minus-inf", lambda t, r: ["search", _study(t, constraints=[
        {"metric": "accuracy", "op": ">=", "bound": float("-inf")}]), "--out", _out(t)], "constraints[0].bound"),
    ("space-low-nan", lambda t, r: ["search", _space(t, "training: {lr: {low: .nan, high: 0.1}}\n"),
                                    "--out", _out(t)], "training.lr.low: expected a finite number"),
    ("space-step-inf", lambda t, r: ["search", _space(t, "pruning: {ratio: {low: 0.1, high: 0.5, step: .inf}}\n"),
                                     "--out", _out(t)], "pruning.ratio.step"),
    ("space-fixed-minus-inf", lambda t, r: ["search", _space(t, "training: {weight_decay: -.inf}\n"),
                                            "--out", _out(t)], "training.weight_decay"),
    ("space-choice-nan", lambda t, r: ["search", _space(t, "training: {lr: {choices: [0.01, .nan]}}\n"),
                                       "--out", _out(t)], "training.lr.choices[1]"),
    ("apply-lr-nan", lambda t, r: _apply(t, "training: {lr: .nan}\n"), "training.lr: expected a finite number"),
    ("timeout-nan", lambda t, r: ["search", _study(t), "--out", _out(t), "--timeout", "nan"], "--timeout"),
    ("timeout-inf", lambda t, r: ["search", _study(t), "--out", _out(t), "--timeout", "inf"], "--timeout"),
    ("worker-timeout-nan", lambda t, r: _worker(r, "--timeout", "nan"), "--timeout"),
    ("export-max-drop-nan", lambda t, r: ["export", r, "--max-accuracy-drop", "nan", "--out", _out(t)],
     "--max-accuracy-drop: expected a finite number"),
    ("export-min-accuracy-inf", lambda t, r: ["export", r, "--min-accuracy", "inf", "--out", _out(t)],
     "--min-accuracy: expected a finite number"),
    # -- ranges that cannot be sampled as written ---------------------------------------------------------------
    ("space-step-above-range", lambda t, r: ["search", _space(t, "pruning: {ratio: {low: 0.1, high: 0.2, step: 0.5}}"
                                                                 "\n"), "--out", _out(t)], "larger than high - low"),
    ("space-step-not-dividing", lambda t, r: ["search", _space(t, "pruning: {ratio: {low: 0.1, high: 0.5, "
                                                                  "step: 0.15}}\n"), "--out", _out(t)],
     "Optuna would lower high to 0.4"),
    ("space-int-step-not-dividing", lambda t, r: ["search", _space(t, "training: {batch_size: {low: 8, high: 64, "
                                                                      "step: 10}}\n"), "--out", _out(t)],
     "does not divide"),
    ("space-int-fractional-bound", lambda t, r: ["search", _space(t, "training: {batch_size: {low: 8.5, high: 64}}\n"),
                                                 "--out", _out(t)], "training.batch_size.low: expected an integer"),
    ("space-int-fractional-step", lambda t, r: ["search", _space(t, "training: {batch_size: {low: 8, high: 64, "
                                                                    "step: 2.5}}\n"), "--out", _out(t)],
     "integer step"),
    ("space-duplicate-choices", lambda t, r: ["search", _space(t, "training: {optimizer: {choices: [sgd, adamw, sgd]}}"
                                                                  "\n"), "--out", _out(t)],
     "training.optimizer.choices[2]: duplicate choice 'sgd'"),
    ("space-log-from-zero", lambda t, r: ["search", _space(t, "training: {lr: {low: 0, high: 0.1, log: true}}\n"),
                                          "--out", _out(t)], "log range needs low > 0"),
    ("space-when-impossible-value", lambda t, r: ["search", _space(t, "training:\n  optimizer: {choices: [sgd, adamw]}"
                                                                      "\n  momentum: {low: 0.5, high: 0.9, when: "
                                                                      "{optimizer: [sgdd]}}\n"), "--out", _out(t)],
     "did you mean 'sgd'"),
    # -- devices that are not here --------------------------------------------------------------------------------
    ("device-absent-gpu", lambda t, r: ["search", _study(t, device=_ABSENT_GPU), "--out", _out(t)],
     f"device: {_ABSENT_GPU} is not here"),
    ("target-device-absent-gpu", lambda t, r: ["search", _study(t, target=_target(device=_ABSENT_GPU)),
                                               "--out", _out(t)], f"target.device: {_ABSENT_GPU} is not here"),
    ("devices-list-absent-gpu", lambda t, r: ["search", _study(t, devices=["cpu", _ABSENT_GPU]), "--out", _out(t)],
     "devices[1]"),
    ("worker-device-absent-gpu", lambda t, r: _worker(r, "--device", _ABSENT_GPU), f"--device: {_ABSENT_GPU}"),
    ("worker-device-unknown", lambda t, r: _worker(r, "--device", "gpu0"), "--device: unknown device 'gpu0'"),
    *([("device-cuda-without-gpu", lambda t, r: ["search", _study(t, device="cuda"), "--out", _out(t)],
        "device: cuda is not here"),
       ("worker-device-cuda-without-gpu", lambda t, r: _worker(r, "--device", "cuda"), "--device: cuda")]
      if _NO_GPU else []),
    *([("device-mps-unavailable", lambda t, r: ["search", _study(t, device="mps"), "--out", _out(t)],
        "MPS (Apple Metal) is not available")] if _NO_MPS else []),
    # -- data the model cannot take ---------------------------------------------------------------------------------
    ("factory-wrong-input-channels", lambda t, r: ["search", _factory(t, "from torch import nn\n"
                                                                       "def build(num_classes, in_channels):\n"
                                                                       "    return nn.Sequential(nn.Conv2d(3, 4, 3),"
                                                                       " nn.Flatten(), nn.LazyLinear(num_classes))\n"),
                                                   "--out", _out(t)], "to have 3 channels"),
    ("factory-wrong-class-count", lambda t, r: ["search", _factory(t, "from torch import nn\n"
                                                                    "def build(num_classes, in_channels):\n"
                                                                    "    return nn.Sequential(nn.Flatten(), "
                                                                    "nn.Linear(64, 3))\n"), "--out", _out(t)],
     "outputs shape (2, 3); expected (batch, 10)"),
    ("factory-wrong-input-features", lambda t, r: ["search", _factory(t, "from torch import nn\n"
                                                                       "def build(num_classes, in_channels):\n"
                                                                       "    return nn.Sequential(nn.Flatten(), "
                                                                       "nn.Linear(32, num_classes))\n"),
                                                   "--out", _out(t)], "does not run on the data's inputs"),
    ("factory-returns-a-dict", lambda t, r: ["search", _factory(t, "from torch import nn\n"
                                                                 "class M(nn.Linear):\n"
                                                                 "    def forward(self, x):\n"
                                                                 "        return {'logits': super().forward("
                                                                 "x.flatten(1))}\n"
                                                                 "def build(num_classes, in_channels):\n"
                                                                 "    return M(64, num_classes)\n"), "--out", _out(t)],
     "returns a dict"),
    # -- output paths that cannot hold a run ------------------------------------------------------------------------
    ("out-is-a-file", lambda t, r: ["search", _study(t), "--out", _taken(t)], "--out: "),
    ("out-under-a-file", lambda t, r: ["search", _study(t), "--out", str(Path(_taken(t)) / "run")],
     "is not a folder"),
    ("worker-out-is-a-file", lambda t, r: [*_worker(r)[:-4], "--out", _taken(t)], "is a file; expected a folder"),
    ("report-out-folder-missing", lambda t, r: ["report", r, "--out", str(t / "missing" / "r.html")],
     "does not exist"),
    ("report-out-is-a-folder", lambda t, r: ["report", r, "--out", str(t)], "is a folder; expected a file name"),
    ("report-csv-under-a-file", lambda t, r: ["report", r, "--out", str(t / "r.html"), "--csv",
                                              str(Path(_taken(t)) / "t.csv")], "--csv: "),
    ("report-parquet-folder-missing", lambda t, r: ["report", r, "--out", str(t / "r.html"), "--parquet",
                                                    str(t / "missing" / "t.parquet")], "--parquet: "),
    ("export-out-is-a-file", lambda t, r: ["export", r, "--out", _taken(t)], "--out: "),
    ("apply-out-is-a-file", lambda t, r: [*_apply(t, "pruning: {method: none}\n")[:-4], "--out", _taken(t)],
     "is a file; expected a folder"),
    # -- YAML of any shape --------------------------------------------------------------------------------------------
    ("study-scalar", lambda t, r: ["search", _file(t, "s.yaml", "hello\n"), "--out", _out(t)], "expected a mapping"),
    ("study-number", lambda t, r: ["search", _file(t, "s.yaml", "42\n"), "--out", _out(t)], "expected a mapping"),
    ("study-only-a-comment", lambda t, r: ["search", _file(t, "s.yaml", "# nothing yet\n"), "--out", _out(t)],
     "empty study file"),
    ("study-tabs", lambda t, r: ["search", _file(t, "s.yaml", "name: x\n\tmodel: y\n"), "--out", _out(t)],
     "line 2: invalid YAML"),
    ("study-duplicate-key", lambda t, r: ["search", _duplicate(t, "seed: 0", "seed: 3"), "--out", _out(t)],
     "duplicate key 'seed' (first on line"),
    ("study-duplicate-nested-key", lambda t, r: ["search", _duplicate(t, "  epochs: 1", "  epochs: 4"),
                                                 "--out", _out(t)], "duplicate key 'epochs'"),
    ("space-file-duplicate-key", lambda t, r: ["search", _space(t, "training:\n  lr: 0.01\n  lr: 0.02\n"),
                                               "--out", _out(t)], "line 3: duplicate key 'lr'"),
    ("space-file-list", lambda t, r: ["search", _space(t, "- pruning\n"), "--out", _out(t)],
     "expected a mapping of sections"),
    ("space-inline-list", lambda t, r: ["search", _study(t, search_space=["pruning"]), "--out", _out(t)],
     "search_space: expected a mapping of sections"),
    ("space-section-list", lambda t, r: ["search", _space(t, "training: [lr]\n"), "--out", _out(t)],
     "training: expected a mapping of knobs"),
    ("space-knob-list", lambda t, r: ["search", _space(t, "training: {optimizer: [sgd, adamw]}\n"), "--out", _out(t)],
     "training.optimizer: invalid value"),
    ("space-when-a-string", lambda t, r: ["search", _space(t, "training:\n  optimizer: {choices: [sgd, adamw]}\n"
                                                              "  momentum: {low: 0.5, high: 0.9, when: optimizer}\n"),
                                          "--out", _out(t)], "expected a mapping {knob: [values]}"),
    ("policy-file-list", lambda t, r: _apply(t, "- pruning\n"), "expected a mapping"),
    ("policy-section-list", lambda t, r: _apply(t, "pruning: [weight]\n"), "pruning: expected a mapping of knobs"),
    ("policy-file-duplicate-key", lambda t, r: _apply(t, "pruning: {method: weight}\npruning: {method: none}\n"),
     "duplicate key 'pruning'"),
    ("storage-variable-not-a-url", lambda t, r: ["worker", "--study", "tiny", "--out", r], "AUTOCOMPRESS_STORAGE: ",
     {"AUTOCOMPRESS_STORAGE": "just words"}),
    ("status-storage-not-a-url", lambda t, r: ["status", "tiny", "--storage", "just words"], "--storage: "),
]


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A finished tiny study whose files must survive every bad command untouched."""
    root = tmp_path_factory.mktemp("existing")
    run_dir = root / "run"
    result = runner.invoke(app, ["search", _study(root), "--out", str(run_dir), "--trials", "1"])
    assert result.exit_code == 0, result.output
    return run_dir


def _fingerprint(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def _written(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*") if "__pycache__" not in p.parts}


def test_the_sweep_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, tmp_path, existing_run, monkeypatch):
    name, argv, words, *env = case
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _fingerprint(existing_run)
    args = argv(tmp_path, str(existing_run))
    files = _written(tmp_path)  # the inputs the case wrote; the command must add nothing
    result = runner.invoke(app, args, env=env[0] if env else None)
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out
    assert out.startswith("error:"), out
    assert words in out, out
    assert PG_PASSWORD not in out
    assert _fingerprint(existing_run) == before
    assert not (tmp_path / "runs").exists()
    assert _written(tmp_path) == files


def test_a_worker_is_held_to_its_own_devices_not_those_listed_for_another_machine(existing_run, tmp_path):
    """The study was created on a machine with GPUs this one lacks: a worker here names its own
    --device and joins; without one it would train on the study's device, which is refused."""
    import shutil

    import optuna

    run_dir = tmp_path / "run"
    shutil.copytree(existing_run, run_dir)
    storage = f"sqlite:///{run_dir}/study.db"
    study = optuna.load_study(study_name="tiny", storage=storage)
    raw = yaml.safe_load(study.user_attrs["study_yaml"])
    elsewhere = {**raw, "device": _ABSENT_GPU, "devices": [_ABSENT_GPU]}
    study.set_user_attr("study_yaml", yaml.safe_dump(elsewhere, sort_keys=False))  # the knobs' order matters
    worker = ["worker", "--study", "tiny", "--storage", storage, "--out", str(run_dir), "--trials", "1"]
    result = runner.invoke(app, [*worker, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, worker)
    assert result.exit_code == 2 and f"device: {_ABSENT_GPU} is not here" in result.output, result.output
