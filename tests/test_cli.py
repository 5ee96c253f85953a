"""The CLI end to end on a tiny digits study: search, storage, trial attributes, status,
resume, and bad input (one line, exit code 2, nothing written)."""

from __future__ import annotations

import optuna
import pytest
import torch
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.search import record

runner = CliRunner()


def _load(run_dir, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'study.db'}")


def test_help_lists_commands_and_options():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "search" in result.output and "status" in result.output
    result = runner.invoke(app, ["search", "--help"])
    assert result.exit_code == 0 and "--trials" in result.output and "--out" in result.output


def test_search_status_and_resume(write_study, tmp_path):
    study_file = write_study()
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.output and str(run_dir) in result.output
    for name in ("study.db", "study.yaml", "baseline.pt", "baseline.json"):
        assert (run_dir / name).is_file(), name

    study = _load(run_dir)
    records = record.read_all(study)
    baseline = [r for r in records if r.baseline]
    searched = [r for r in records if not r.baseline]
    assert len(baseline) == 1 and baseline[0].number == 0
    assert len(searched) == 2 and all(r.state.name == "COMPLETE" for r in searched)
    assert study.metric_names == ["accuracy", "latency_ms"]
    for r in searched:
        m = r.metrics
        for key in ("accuracy", "test_accuracy", "accuracy_drop", "latency_ms", "size_mb", "flops", "params"):
            assert key in m, key
        assert r.values == (m["accuracy"], m["latency_ms"])
        assert m["flops"] > 0 and m["params"] > 0 and m["size_mb"] > 0 and m["latency_ms"] > 0
        assert r.policy is not None and r.policy.training.optimizer == r.params["training.optimizer"]
        assert {"compress_s", "finetune_s", "measure_s"} <= set(r.timings)
        assert r.history[0].epoch == 1 and r.epochs_run == len(r.history) == 1
        assert r.constraints  # feasibility known to the samplers and Optuna's plots
        assert r.measured_on is not None and r.measured_on.device == "cpu"

    # the saved baseline loads with weights_only
    state = torch.load(run_dir / "baseline.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    status = runner.invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0, status.output
    assert "2 complete" in status.output and "Pareto front" in status.output

    # resume with a larger budget: old trials kept, new ones added, baseline not retrained
    mtime = (run_dir / "baseline.pt").stat().st_mtime
    again = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir), "--trials", "3"])
    assert again.exit_code == 0, again.output
    study = _load(run_dir)
    numbers = [r.number for r in record.read_all(study) if not r.baseline]
    assert numbers == [1, 2, 3]
    assert [r.params for r in record.read_all(study)[:3]] == [r.params for r in records[:3]]
    assert (run_dir / "baseline.pt").stat().st_mtime == mtime
    # running again with the budget met runs nothing more
    runner.invoke(app, ["search", str(study_file), "--out", str(run_dir), "--trials", "3"])
    assert len(_load(run_dir).get_trials()) == 4


def test_same_command_twice_gives_the_same_trials(write_study, tmp_path):
    study_file = write_study(sampler="tpe")
    params = []
    for run in ("a", "b"):
        result = runner.invoke(app, ["search", str(study_file), "--out", str(tmp_path / run)])
        assert result.exit_code == 0, result.output
        records = record.read_all(_load(tmp_path / run))
        params.append([(r.params, r.metrics["accuracy"]) for r in records])
    assert params[0] == params[1]


def test_broken_trial_is_recorded_and_the_study_goes_on(write_study, tmp_path):
    # an lr so large the loss overflows to NaN/inf for SGD; adamw survives
    space = {"training": {"optimizer": {"choices": ["sgd"]}, "lr": {"low": 1e12, "high": 1e13},
                          "momentum": 0.9}}
    study_file = write_study(search_space=space)
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    trials = [r for r in record.read_all(_load(run_dir)) if not r.baseline]
    assert len(trials) == 2
    assert all(r.state.name == "FAIL" for r in trials)
    assert all("loss" in r.fail_reason and r.counted for r in trials)
    status = runner.invoke(app, ["status", str(run_dir)])
    assert "2 fail" in status.output and "failed: " in status.output


@pytest.mark.parametrize("override, words", [
    ({"model": {"factory": "no_such_module_xyz:build"}}, "cannot import module 'no_such_module_xyz'"),
    ({"model": {"builtin": "resnet9000"}}, "unknown model"),
    ({"data": {"builtin": "mnist"}}, "unknown data set"),
    ({"model": {"builtin": "digits_cnn", "checkpoint": "missing.pt"}}, "not found"),
    ({"objectives": [{"metric": "joy", "direction": "maximize"}]}, "unknown metric"),
    ({"storage": "not a url"}, "not a storage URL"),
])
def test_bad_input_exits_2_and_writes_nothing(write_study, tmp_path, override, words):
    study_file = write_study(**override)
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not run_dir.exists()


def test_checkpoint_that_does_not_match(write_study, tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    study_file = write_study(model={"builtin": "digits_cnn", "kwargs": {"width": 8}, "checkpoint": "wrong.pt"})
    result = runner.invoke(app, ["search", str(study_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "does not match the model" in result.output
    assert not (tmp_path / "run").exists()


def test_existing_study_with_other_objectives_is_refused(write_study, tmp_path):
    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["search", str(write_study()), "--out", str(run_dir), "--trials", "1"]).exit_code == 0
    before = (run_dir / "study.yaml").read_text()
    other = write_study("other.yaml", objectives=[{"metric": "size_mb", "direction": "minimize"}])
    result = runner.invoke(app, ["search", str(other), "--out", str(run_dir)])
    assert result.exit_code == 2 and "different objectives" in result.output
    assert (run_dir / "study.yaml").read_text() == before
    # another model or data set under the same name: its trials and baseline would be mixed in
    other = write_study("mlp.yaml", model={"builtin": "mlp"})
    result = runner.invoke(app, ["search", str(other), "--out", str(run_dir)])
    assert result.exit_code == 2 and "model: study 'tiny' was created with model builtin:digits_cnn" in result.output
    assert (run_dir / "study.yaml").read_text() == before


def test_failed_creation_in_an_existing_folder_keeps_the_users_files(write_study, tmp_path):
    import optuna

    db = tmp_path / "shared.db"
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{db}", directions=["minimize"])
    out = tmp_path / "my-experiments"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    study_file = write_study(storage=f"sqlite:///{db}")
    result = runner.invoke(app, ["search", str(study_file), "--out", str(out)])
    assert result.exit_code == 2 and "different objectives" in result.output, result.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_with_changed_knob_choices_is_refused(write_study, tmp_path):
    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["search", str(write_study()), "--out", str(run_dir), "--trials", "1"]).exit_code == 0
    space = {"training": {"optimizer": {"choices": ["sgd", "adam"]}, "lr": {"low": 1e-4, "high": 1e-1, "log": True},
                          "batch_size": 64}}
    result = runner.invoke(app, ["search", str(write_study("other.yaml", search_space=space)), "--out", str(run_dir),
                                 "--trials", "3"])
    # once refused, not one failed trial per attempt forever (choices a study cannot change in Optuna)
    assert result.exit_code == 2, result.output
    assert "search_space.training.optimizer" in result.output and "['sgd', 'adamw']" in result.output
    assert len(result.output.strip().splitlines()) == 1
    # a wider float range is fine: the study resumes
    space["training"]["optimizer"] = {"choices": ["sgd", "adamw"]}
    result = runner.invoke(app, ["search", str(write_study("wider.yaml", search_space=space)), "--out", str(run_dir),
                                 "--trials", "2"])
    assert result.exit_code == 0, result.output


def test_status_of_unknown_study(tmp_path):
    result = runner.invoke(app, ["status", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no study" in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "study.yaml").write_text("name: [unclosed\n")
    result = runner.invoke(app, ["status", str(broken)])
    assert result.exit_code == 2 and "study.yaml" in result.output and "invalid YAML" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_ctrl_c_stops_cleanly_and_the_study_resumes(write_study, tmp_path, monkeypatch):
    import autocompress.search.objective as objective_mod

    real = objective_mod.run_trial
    calls = []

    def interrupted_once(policy, ctx, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(policy, ctx, **kw)

    monkeypatch.setattr(objective_mod, "run_trial", interrupted_once)
    study_file = write_study()
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir)])
    assert result.exit_code == 130, result.output
    assert "run the same command to resume" in result.output
    records = record.read_all(_load(run_dir))
    assert [r.state.name for r in records] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert records[2].interrupted is True and not records[2].counted

    again = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir)])
    assert again.exit_code == 0, again.output
    searched = [r for r in record.read_all(_load(run_dir)) if not r.baseline]
    assert sum(r.state.name == "COMPLETE" for r in searched) == 2  # the interrupted trial did not count


def test_optuna_dashboard_opens_our_study(write_study, tmp_path):
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard

    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["search", str(write_study()), "--out", str(run_dir), "--trials", "1"]).exit_code == 0
    wsgi = optuna_dashboard.wsgi(f"sqlite:///{run_dir / 'study.db'}")
    environ = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(wsgi(environ, lambda s, h, *exc: status.append(s)))
    assert status[0].startswith("200")
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["tiny"]
    assert studies[0]["directions"] == ["maximize", "minimize"]


def test_status_of_a_study_without_trials_says_so(tmp_path):
    import optuna
    import yaml

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "study.yaml").write_text(yaml.safe_dump({"name": "empty"}))
    optuna.create_study(study_name="empty", storage=f"sqlite:///{run_dir / 'study.db'}",
                        directions=["maximize", "minimize"])
    result = runner.invoke(app, ["status", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "empty: no complete trial yet" in result.output and "Pareto front" not in result.output


def test_an_untrained_baseline_is_announced(write_study, tmp_path):
    result = runner.invoke(app, ["search", str(write_study(baseline={"epochs": 0})), "--out", str(tmp_path / "run"),
                                 "--trials", "1"])
    assert result.exit_code == 0, result.output
    assert "start from random weights" in result.output and "baseline: accuracy " in result.output
    trained = runner.invoke(app, ["search", str(write_study("t.yaml")), "--out", str(tmp_path / "t"), "--trials", "1"])
    assert "random weights" not in trained.output


def test_a_space_without_searched_knobs_is_announced(write_study, tmp_path):
    fixed = write_study(search_space={"pruning": {"method": "weight", "ratio": 0.5}})
    result = runner.invoke(app, ["search", str(fixed), "--out", str(tmp_path / "run"), "--trials", "1"])
    assert result.exit_code == 0 and "fixes every knob" in result.output, result.output
    result = runner.invoke(app, ["search", str(write_study("s.yaml")), "--out", str(tmp_path / "s"), "--trials", "1"])
    assert "fixes every knob" not in result.output


def test_a_baseline_that_cannot_train_is_one_line(write_study, tmp_path, monkeypatch):
    # a data set whose 7th sample cannot be read (a corrupt file deep in an image folder)
    (tmp_path / "flaky.py").write_text(
        "import torch\n"
        "class Flaky(torch.utils.data.Dataset):\n"
        "    reads = 0\n"
        "    def __len__(self):\n        return 40\n"
        "    def __getitem__(self, i):\n"
        "        self.reads += i == 7\n"
        "        if self.reads > 1:  # readable while the data set is checked, not in training\n"
        "            raise OSError('cannot identify image file img_7.png')\n"
        "        return torch.randn(4), i % 2\n"
        "def load():\n    return Flaky(), Flaky(), Flaky()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    study = write_study(data={"factory": "flaky:load"}, model={"builtin": "mlp"})
    result = runner.invoke(app, ["search", str(study), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "training the baseline failed: OSError: cannot identify image file img_7.png" in result.output
    assert "Traceback" not in result.output
