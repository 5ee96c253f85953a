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


# (id, argv builder(tmp, run_dir) -> list[str], words expected in the one line)
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


def test_the_sweep_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, tmp_path, existing_run, monkeypatch):
    name, argv, words = case
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _fingerprint(existing_run)
    result = runner.invoke(app, argv(tmp_path, str(existing_run)))
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1, out
    assert out.startswith("error:"), out
    assert words in out, out
    assert PG_PASSWORD not in out
    assert _fingerprint(existing_run) == before
    assert not (tmp_path / "runs").exists()
