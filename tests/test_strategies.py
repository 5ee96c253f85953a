"""Search strategies: successive halving over epochs (multi-objective promotion) and
cost-filtered candidate sampling."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autocompress.errors import ConfigError
from autocompress.search import candidates as cand
from autocompress.search import record
from autocompress.search.early_stopping import crowding, early_stop_func, fronts, promoted, rungs
from autocompress.search.study import run_study
from autocompress.spec.config import spec_from_dict
from autocompress.spec.policy import Policy
from autocompress.training.loop import Epoch
from autocompress.trial.plan import TrialPlan
from autocompress.trial.result import Preview

from conftest import tiny_study


def _spec(**overrides):
    return spec_from_dict(tiny_study(**overrides), "study.yaml")


def _done(study, curve, latency, state=optuna.trial.TrialState.COMPLETE):
    """A finished (or stopped) trial as the storage holds it, with a deployed-form preview."""
    policy = Policy()
    study.add_trial(optuna.trial.create_trial(
        state=state, values=[curve[-1], latency] if state == optuna.trial.TrialState.COMPLETE else None,
        user_attrs={"history": [{"epoch": i + 1, "val_accuracy": a} for i, a in enumerate(curve)],
                    "cheap_metrics": {"latency_ms": latency}, "preview_deployed": True,
                    "policy": policy.to_dict(), "structure_key": TrialPlan(policy).structure_key}))


def _row(epoch: int, acc: float) -> Epoch:
    return Epoch(epoch=epoch, train_loss=0.5, val_accuracy=acc, lr=0.01)


def test_rungs_are_geometric_and_below_the_last_epoch():
    assert rungs(1, 3, 3) == [1]
    assert rungs(1, 3, 10) == [1, 3, 9]
    assert rungs(2, 2, 9) == [2, 4, 8]
    assert rungs(1, 3, 1) == []


def test_non_dominated_sorting_on_a_crafted_table():
    # (minus accuracy, latency): a and b trade off, c is beaten by a, d by everyone
    a, b, c, d = (-0.9, 2.0), (-0.8, 1.0), (-0.85, 2.5), (-0.5, 3.0)
    assert fronts([a, b, c, d]) == [0, 0, 1, 2]
    assert fronts([a, a]) == [0, 0]          # equal points do not dominate each other
    assert cand.non_dominated([a, b, c, d]) == [0, 1]
    assert cand.non_dominated([c, None, a]) == [1, 2]   # a candidate that cannot be judged is kept


def test_promotion_rule_on_crafted_points():
    better = [(-0.9, 1.0), (-0.95, 0.5)]
    # 3 at the rung, eta 3: one may have better fronts... two do, so the trial stops
    assert not promoted((-0.5, 2.0), better, eta=3)
    # the same trial, cheaper than all: alone in the first front with them -> goes on
    assert promoted((-0.5, 0.1), better, eta=3)
    # fewer trials at the rung than eta: everyone goes on
    assert promoted((-0.1, 9.0), better[:1], eta=3)
    # 6 at the rung, eta 2: goes on while fewer than 3 lie in better fronts
    others = [(-0.9, 1.0), (-0.8, 1.1), (-0.3, 3.0), (-0.2, 3.0), (-0.1, 3.0)]
    assert promoted((-0.7, 1.2), others, eta=2)      # behind 2 of 6
    assert not promoted((-0.25, 3.5), others, eta=2)  # behind 5 of 6


def test_a_large_first_front_is_cut_by_crowding_distance():
    # five trials on one front, eta 3: about 1/3 go on, the extremes first, not the whole front
    line = [(-0.9, 5.0), (-0.8, 4.0), (-0.7, 3.0), (-0.6, 2.0), (-0.5, 1.0)]
    assert fronts(line) == [0] * 5
    assert crowding(line) == [float("inf"), 1.0, 1.0, 1.0, float("inf")]
    assert promoted(line[0], line[1:], eta=3) and promoted(line[4], line[:4], eta=3)
    assert not promoted(line[2], line[:2] + line[3:], eta=3)   # two extremes come before it
    # an isolated point of the front comes before crowded ones
    spread = [(-0.9, 5.0), (-0.85, 4.9), (-0.84, 4.8), (-0.2, 1.0), (-0.6, 3.0)]
    assert crowding(spread)[4] > crowding(spread)[1]


def test_halving_promotes_and_stops_on_crafted_curves():
    spec = _spec(early_stopping={"rule": "halving", "eta": 3, "min_epochs": 1})
    study = optuna.create_study(directions=spec.directions)
    _done(study, [0.90, 0.95, 0.97], latency=1.0)
    _done(study, [0.80, 0.90, 0.93], latency=0.5)
    _done(study, [0.40], latency=2.0, state=optuna.trial.TrialState.PRUNED)   # stopped earlier: still at rung 1
    rule = early_stop_func(spec, study, TrialPlan(Policy()), epochs=9)
    at = lambda e, acc, lat: rule(e, _row(e, acc), Preview({"latency_ms": lat}, deployed=True)).reason  # noqa: E731

    # rung 1 holds 4 trials with this one; it is behind the first two (and ahead of the third)
    reason = at(1, 0.60, 1.5)
    assert reason and "not promoted at epoch 1" in reason and "1/3" in reason and "4 trials" in reason
    assert at(1, 0.92, 1.5) is None      # the most accurate at rung 1: first front
    assert at(1, 0.10, 0.1) is None      # the cheapest: first front, however inaccurate
    assert at(2, 0.10, 5.0) is None      # epoch 2 is no rung (1, 3)
    # rung 3: two trials got there before, so with this one the rung holds eta = 3: judged
    assert at(3, 0.50, 2.0) is not None
    assert at(3, 0.98, 2.0) is None      # more accurate at epoch 3 than both (0.97, 0.93)


@pytest.mark.parametrize("bad, field", [({"candidates": 0}, "candidates"),
                                        ({"early_stopping": {"rule": "halving", "eta": 1}}, "early_stopping.eta"),
                                        ({"early_stopping": {"rule": "hyperband"}}, "early_stopping.rule")])
def test_bad_strategy_settings_name_the_field(bad, field):
    with pytest.raises(ConfigError) as err:
        _spec(**bad)
    assert field in str(err.value)


def test_the_candidate_step_trains_a_non_dominated_candidate(tmp_path: Path, monkeypatch):
    judged: list[list[cand.Candidate]] = []
    real_judge = cand.judge

    def spy(spec, ctx, params, policy):
        out = real_judge(spec, ctx, params, policy)
        if not judged or len(judged[-1]) == spec.candidates:
            judged.append([])
        judged[-1].append(out)
        return out

    monkeypatch.setattr(cand, "judge", spy)
    spec = _spec(candidates=4, budget={"trials": 2, "epochs": 1, "train_fraction": 0.2},
                 early_stopping="none", prescreen=False)
    run = run_study(spec, out=tmp_path / "run", log=lambda m: None)
    trials = [t for t in record.read_all(run.study) if not t.baseline]
    assert len(trials) == 2 and len(judged) == 2
    for t, drawn in zip(trials, judged):
        assert t.candidates["drawn"] == 4 and 1 <= t.candidates["kept"] <= 4 and t.candidates["seconds"] > 0
        usable = [c for c in drawn if c.out is None]
        assert t.candidates["screened_out"] == 4 - len(usable)
        chosen = usable[cand.non_dominated([c.point for c in usable])[0]]
        assert t.params == chosen.params             # the trial runs the first kept candidate
        assert all(c.point is not None for c in usable)   # every candidate here has final costs
        # and no other candidate beats it on untrained accuracy and every previewed cost
        assert not any(all(x <= y for x, y in zip(c.point, chosen.point)) and c.point != chosen.point
                       for c in usable)
    # the chosen candidate's preview was cached: the trial reused it instead of measuring again
    assert all(t.preview is not None for t in trials)


def test_a_gradual_candidate_is_judged_on_its_one_shot_twin(digits_ctx):
    """Gradual pruning's channels go only after fine-tuning; its final structure is the one-shot
    one at the same ratio, so the candidate step judges it on that (unjudged, it would always be
    kept, and picked more often than the sampler proposes it)."""
    spec = _spec(objectives=[{"metric": "accuracy", "direction": "maximize"},
                             {"metric": "params", "direction": "minimize"}])
    pruned = {"pruning": {"method": "gradual", "ratio": 0.5}}
    gradual = cand.judge(spec, digits_ctx, {}, Policy.from_dict(pruned))
    twin = cand.judge(spec, digits_ctx, {}, Policy.from_dict({"pruning": {"method": "structured", "ratio": 0.5}}))
    whole = cand.judge(spec, digits_ctx, {}, Policy())
    assert gradual.point is not None and gradual.point == twin.point
    assert gradual.point[1] < whole.point[1]           # judged on the shrunk structure's params
    assert gradual.policy.pruning.method == "gradual"  # the trial still runs the gradual schedule


@pytest.mark.slow
def test_the_search_efficiency_benchmark_runs_end_to_end(tmp_path: Path, capsys):
    """benchmarks/search_efficiency.py in its tiny configuration, so the script cannot rot."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "search_efficiency.py"
    spec = importlib.util.spec_from_file_location("search_efficiency", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.main(["--task", "digits", "--n", "1", "--k", "1", "--seeds", "0", "--tiny",
                          "--arms", "random", "new", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert set(summary) == {"random", "new", "_budget"}
    assert list(summary["random"]["hv_at"]) == [1, 2] and list(summary["new"]["hv_at"]) == [1]  # 2N and N trials
    for arm in ("random", "new"):
        assert all(0.0 <= mean <= 1.0 for mean, _ in summary[arm]["hv_at"].values())
        assert summary[arm]["equal_epochs"][0] <= max(m for m, _ in summary[arm]["hv_at"].values())
    assert "target: new HV at 1" in printed and "equal compute" in printed
    # every arm's study carries the extra params constraint (60% of the baseline's)
    stored = (tmp_path / "digits-new-seed0" / "study.yaml").read_text()
    assert "params <= " in stored


def test_a_candidate_step_that_cannot_draw_leaves_the_trial_to_the_sampler(tmp_path: Path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("sampler copy refused")

    monkeypatch.setattr(cand, "draw", broken)
    said: list[str] = []
    spec = _spec(candidates=3, budget={"trials": 1, "epochs": 1, "train_fraction": 0.2})
    run = run_study(spec, out=tmp_path / "run", log=said.append)
    trials = [t for t in record.read_all(run.study) if not t.baseline]
    assert len(trials) == 1 and trials[0].state.name == "COMPLETE" and trials[0].candidates is None
    assert any("candidate step could not draw (RuntimeError: sampler copy refused)" in m for m in said)
