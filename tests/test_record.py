"""The trial record: one module writes and reads every user attribute; failures always have a
reason and always count toward the budget; older studies stay readable."""

from __future__ import annotations

import math
import re
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from autocompress.errors import FailureKey
from autocompress.search import record
from autocompress.search.budget import budget_used
from autocompress.spec.policy import Policy
from autocompress.training.loop import Epoch
from autocompress.trial.result import MeasuredOn, Preview, Stopped, TrialResult

PACKAGE = Path(__file__).resolve().parents[1] / "autocompress"


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(directions=["maximize"])


def test_a_result_round_trips_through_optuna_user_attributes():
    study = _study()
    trial = study.ask()
    policy = Policy.from_dict({"pruning": {"method": "structured", "ratio": 0.4}})
    result = TrialResult(policy=policy, metrics={"accuracy": 0.9, "peak_memory_mb": None},
                         proof={"pruning": {"sparsity": 0.4}}, history=(Epoch(1, 0.5, 0.8, 1e-3), Epoch(2, 0.3, 0.9, 5e-4)),
                         timings={"finetune_s": 1.5}, measured_on=MeasuredOn("cpu", "x86", 1, 1, "2.14", "cpu"),
                         preview=Preview({"flops": 10.0, "latency_ms": 0.2}, deployed=True), epochs_run=2)
    record.write_start(trial, policy, summary="structured l1 40%", keys=("s", "c"), pid=7)
    record.write_result(trial, result)
    study.tell(trial, 0.9)
    r = record.read(study.trials[0])
    assert r.policy == policy and r.policy_summary == "structured l1 40%"
    assert r.metrics == {"accuracy": 0.9, "peak_memory_mb": None} and r.proof == result.proof
    assert r.history == result.history and r.measured_on == result.measured_on
    assert r.preview == result.preview and r.epochs_run == 2 and r.timings == {"finetune_s": 1.5}
    assert (r.structure_key, r.cost_key, r.worker_pid) == ("s", "c", 7)
    assert r.state == TrialState.COMPLETE and r.counted and r.reason == ""


def test_a_stop_is_recorded_with_its_stage_preview_and_history():
    study = _study()
    trial = study.ask()
    record.write_stop(trial, Stopped("dominated at epoch 1", Preview({"flops": 5.0}), stage="early_stopping",
                                     history=(Epoch(1, 0.7, 0.5, 1e-3),)))
    study.tell(trial, state=TrialState.PRUNED)
    r = record.read(study.trials[0])
    assert r.stop == record.Stop("early_stopping", "dominated at epoch 1") and r.reason == "dominated at epoch 1"
    assert r.epochs_run == 1 and r.metrics == {"flops": 5.0} and not r.preview.deployed and r.counted


def test_a_failure_without_a_message_still_has_a_reason_and_counts():
    study = _study()
    trial = study.ask()
    record.write_failure(trial, "", known_as=FailureKey("onnxruntime:bf16", (("runtime.backend", "onnxruntime"),)))
    study.tell(trial, state=TrialState.FAIL)
    r = record.read(study.trials[0])
    assert r.fail_reason == "failed without a message" and r.counted
    assert r.known_as == FailureKey("onnxruntime:bf16", (("runtime.backend", "onnxruntime"),))


def test_a_trial_failed_by_the_heartbeat_or_interrupted_does_not_count():
    study = _study()
    killed, interrupted = study.ask(), study.ask()
    record.write_interrupted(interrupted)
    study.tell(killed, state=TrialState.FAIL)          # never reached write_failure: a dead worker
    study.tell(interrupted, state=TrialState.FAIL)
    assert [r.counted for r in record.read_all(study)] == [False, False] and budget_used(study) == 0


def test_older_studies_are_read():
    study = _study()
    study.add_trial(optuna.trial.create_trial(
        value=0.5, user_attrs={"cheap_metrics": {"flops": 3.0, "deployed": 1.0}, "failure_known_as": "eager:none",
                               "history": [{"epoch": 1, "val_accuracy": 0.4}], "prescreened": "too slow"}))
    r = record.read(study.trials[0])
    assert r.preview == Preview({"flops": 3.0}, deployed=True) and r.known_as is None
    assert r.history[0].val_accuracy == 0.4 and math.isnan(r.history[0].lr)
    assert r.stop == record.Stop("prescreen", "too slow")


def test_study_info_round_trips():
    study = _study()
    info = record.StudyInfo(model="builtin:digits_cnn", data="builtin", objectives=("maximize accuracy",),
                            constraints=("accuracy_drop <= 0.02",), sampler="tpe", study_yaml="name: x\n",
                            study_source="/x.yaml", baseline_metrics={"accuracy": 0.9})
    record.write_study_info(study, info)
    assert record.study_info(study) == info


def test_no_user_attribute_is_read_or_written_outside_the_record_module():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "search" / "record.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"\.user_attrs\b|set_user_attr\(|get_study_user_attrs", text):
            offenders.append(str(path.relative_to(PACKAGE)))
    # the storage API for a study that is not opened as optuna.Study hands attrs to record.read_study_info
    assert sorted(offenders) == ["search/checks.py", "search/study.py"]
    for name in offenders:
        text = (PACKAGE / name).read_text(encoding="utf-8")
        assert "read_study_info(" in text and ".user_attrs" not in text and "set_user_attr(" not in text


# -- through a real study: failures of any kind count, and the study reaches its budget ----------------
def _run(write_study, monkeypatch, broken, **overrides):
    from autocompress.search import objective
    from autocompress.search.study import run_study
    from autocompress.spec.config import load_study_spec

    monkeypatch.setattr(objective, "run_trial", broken)
    path = write_study(**overrides)
    return run_study(load_study_spec(path), out=path.parent / "run", log=lambda m: None)


def test_an_exception_without_a_message_fails_the_trial_with_a_reason_and_counts(write_study, monkeypatch):
    def broken(policy, ctx, keep_model=True):
        raise RuntimeError()

    run = _run(write_study, monkeypatch, broken, budget={"trials": 3, "epochs": 1, "train_fraction": 0.2})
    searched = [r for r in record.read_all(run.study) if not r.baseline]
    assert len(searched) == 3 and budget_used(run.study) == 3
    assert all(r.state == TrialState.FAIL and r.fail_reason == "RuntimeError" and r.counted for r in searched)


def test_an_objective_that_was_not_measured_fails_the_trial_with_a_reason(write_study, monkeypatch):
    def unmeasured(policy, ctx, keep_model=True):
        return TrialResult(policy=policy, metrics={"accuracy": 0.5, "latency_ms": None}, proof={}, history=(),
                           timings={}, measured_on=MeasuredOn("cpu"), preview=Preview({}), epochs_run=0)

    run = _run(write_study, monkeypatch, unmeasured, budget={"trials": 2, "epochs": 1, "train_fraction": 0.2})
    searched = [r for r in record.read_all(run.study) if not r.baseline]
    assert len(searched) == 2 and budget_used(run.study) == 2
    assert all("objective latency_ms was not measured" in r.fail_reason for r in searched)


def test_study_file_written_in_the_run_dir_is_the_resolved_one(write_study, monkeypatch):
    def broken(policy, ctx, keep_model=True):
        raise ValueError("nope")

    run = _run(write_study, monkeypatch, broken, budget={"trials": 1, "epochs": 1, "train_fraction": 0.2})
    written = yaml.safe_load((run.run_dir / "study.yaml").read_text())
    assert written["search_space"]["training"]["optimizer"] == {"choices": ["sgd", "adamw"]}
    assert record.study_info(run.study).study_yaml == (run.run_dir / "study.yaml").read_text()
