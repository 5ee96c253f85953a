"""Energy and cost per inference: counter windows on recorded counter sequences (wrap-around,
reads between updates, windows too short), the RAPL and NVML counters behind their interface,
validation where no counter exists or no price is given, cost from throughput and price, and
studies that search on cost and on energy end to end."""

from __future__ import annotations

import sys
import time
import types

import optuna
import pytest
import torch
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.errors import ConfigError
from autocompress.metrics import counters, energy
from autocompress.metrics.cost import cost_usd_per_1k
from autocompress.metrics.counters import CounterError
from autocompress.metrics.energy import count_windows, measure_energy
from autocompress.metrics.registry import format_measured, why_unavailable
from autocompress.search import record
from autocompress.spec.config import spec_from_dict

from conftest import tiny_study

runner = CliRunner()
ENERGY = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "energy_mj", "direction": "minimize"}]
COST = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "cost_usd_per_1k", "direction": "minimize"}]


class Recorded:
    """A counter replaying recorded values, one per read."""

    def __init__(self, values: list[float], range_mj: float | None = None, name: str = "recorded") -> None:
        self.values, self.range_mj, self.name, self.reads = list(values), range_mj, name, 0

    def read(self) -> float:
        value = self.values[min(self.reads, len(self.values) - 1)]
        self.reads += 1
        return value


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def stepper(clock: FakeClock, seconds: float = 0.1, samples: int = 4):
    """A step of inference that takes ``seconds`` on the fake clock and runs ``samples``."""
    def step() -> int:
        clock.t += seconds
        return samples
    return step


def windows_of(values, *, range_mj=None, windows=1, min_window_s=0.25, stall_s=1.0, more=()):
    clock = FakeClock()
    recorded = [Recorded(values, range_mj), *more]
    return count_windows(recorded, stepper(clock), windows=windows, min_window_s=min_window_s, stall_s=stall_s,
                         clock=clock)


# -- counter windows on recorded sequences -------------------------------------------------------------------------
def test_a_wrap_around_between_two_reads_is_counted_modulo_the_range():
    # RAPL-like: wraps at 1000 mJ; read 3 goes 990 -> 20, i.e. +30, not -970
    [w] = windows_of([900, 950, 990, 20, 60], range_mj=1000)
    assert w.energy_mj == pytest.approx(40 + 30 + 40) and w.samples == 12 and w.seconds == pytest.approx(0.3)


def test_counters_are_summed_each_with_its_own_wrap():
    other = Recorded([5000, 5010, 5020, 5030, 5040], range_mj=None, name="package-1")
    [w] = windows_of([900, 950, 990, 20, 60], range_mj=1000, more=[other])
    assert w.energy_mj == pytest.approx(110 + 30)


def test_reads_between_updates_extend_the_window_to_the_next_update():
    # ticks at t=0.1 (opens), 0.2 (too early: 0.1 s < 0.15 s), then the counter holds still
    # while inference runs; the window closes only at the next update (t=0.6)
    [w] = windows_of([0, 10, 20, 20, 20, 20, 50], min_window_s=0.15)
    assert w.seconds == pytest.approx(0.5) and w.samples == 20 and w.energy_mj == 40
    assert w.energy_mj / w.samples == 2.0   # closing at t=0.3, on the clock alone, would give 10 / 8


def test_a_window_shorter_than_the_minimum_is_extended_and_windows_are_back_to_back():
    values = [0, *range(7, 7 * 40, 7)]     # an update on every read, 0.1 s apart
    found = windows_of(values, windows=3, min_window_s=0.25)
    assert [w.seconds for w in found] == pytest.approx([0.3, 0.3, 0.3])   # never closed at 0.1 or 0.2
    assert [w.samples for w in found] == [12, 12, 12]
    assert sum(w.energy_mj for w in found) == 7 * 9   # contiguous: nothing between windows is lost


def test_what_ran_before_the_first_update_is_not_counted():
    [w] = windows_of([3, 3, 3, 8, 13, 18, 23], min_window_s=0.25)
    assert w.energy_mj == 15 and w.samples == 12   # opened at the update to 8, after 3 steps


def test_a_counter_that_never_advances_is_an_error_never_a_zero():
    with pytest.raises(CounterError, match="recorded did not advance in 1 s"):
        windows_of([42.0] * 5)
    with pytest.raises(CounterError, match="did not advance"):   # advanced once, then stuck
        windows_of([0, 10, 10], min_window_s=0.25)


def test_a_counter_without_a_range_that_runs_backwards_is_an_error():
    with pytest.raises(CounterError, match="went backwards"):
        windows_of([100, 110, 50])


# -- the counters behind the interface ------------------------------------------------------------------------------
def _zone(root, name, label, energy_uj=None, range_uj=262143328850):
    zone = root / name
    zone.mkdir()
    (zone / "name").write_text(label + "\n")
    if energy_uj is not None:
        (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{range_uj}\n")


def test_rapl_reads_package_zones_only(tmp_path, monkeypatch):
    _zone(tmp_path, "intel-rapl:0", "package-0", 123456789)
    _zone(tmp_path, "intel-rapl:0:0", "core", 1000)       # inside package-0: not added again
    _zone(tmp_path, "intel-rapl:1", "psys", 999999999)    # the whole SoC, overlapping the packages
    _zone(tmp_path, "intel-rapl:2", "package-1", 5000)
    monkeypatch.setattr(counters, "POWERCAP", tmp_path)
    found = counters.open_counters("cpu")
    assert [c.name for c in found] == ["RAPL package-0", "RAPL package-1"]
    assert found[0].read() == pytest.approx(123456.789) and found[0].range_mj == pytest.approx(262143328.85)
    assert why_unavailable("energy_mj", "cpu") is None


def test_no_readable_rapl_zone_is_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(counters, "POWERCAP", tmp_path / "absent")
    assert "no RAPL package zone under" in counters.energy_unavailable("cpu")
    _zone(tmp_path, "intel-rapl:0", "package-0", energy_uj=None)   # present, but energy_uj cannot be read
    monkeypatch.setattr(counters, "POWERCAP", tmp_path)
    assert "RAPL package-0 cannot be read" in counters.energy_unavailable("cpu")
    assert "CUDA (NVML) and CPU (RAPL) targets only" in counters.energy_unavailable("mps")


def _fake_nvml(monkeypatch, *, supported: bool = True):
    class NVMLError(Exception):
        pass

    energy_mj = iter(range(10**6, 10**9, 250))

    def total(handle):
        if not supported:
            raise NVMLError("Not Supported")
        return next(energy_mj)

    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetHandleByUUID=lambda u: f"handle-{u}", nvmlDeviceGetName=lambda h: "NVIDIA Test",
        nvmlDeviceGetTotalEnergyConsumption=total)
    monkeypatch.setitem(sys.modules, "pynvml", fake)


def test_nvml_counter_reads_the_total_energy_in_millijoules(monkeypatch):
    _fake_nvml(monkeypatch)
    [c] = counters.open_counters("cuda:0")
    assert c.name == "NVML total energy of NVIDIA Test" and c.range_mj is None
    assert c.read() + 250 == c.read()
    _fake_nvml(monkeypatch, supported=False)   # a GPU older than Volta
    assert "no total-energy counter for cuda:0 (Not Supported" in counters.energy_unavailable("cuda:0")
    monkeypatch.setitem(sys.modules, "pynvml", None)   # nvidia-ml-py not installed
    assert "nvidia-ml-py is not installed" in counters.energy_unavailable("cuda:0")


class Synthetic:
    """A counter of a device drawing ``watts``, updated every ``period_s`` of real time."""
    range_mj = None
    name = "synthetic"

    def __init__(self, watts: float = 5.0, period_s: float = 0.02) -> None:
        self.watts, self.period, self.t0 = watts, period_s, time.perf_counter()

    def read(self) -> float:
        t = time.perf_counter() - self.t0
        return self.watts * 1e3 * (t // self.period) * self.period


def test_measure_energy_runs_the_model_and_counts_from_update_to_update(monkeypatch, digits_ctx):
    monkeypatch.setattr(energy, "MIN_WINDOW_S", 0.5)   # not a whole number of updates
    e = measure_energy(digits_ctx.teacher, digits_ctx.example_batch(), counters=[Synthetic(5.0, 0.2)],
                       batch_size=4, threads=1)
    assert e.windows == 3 and e.seconds >= 3 * 0.5 and e.samples % 4 == 0
    # 5 W over the windows, per sample: the counter's update period (200 ms, 40% of the minimum
    # window) costs at most one step (5 ms; tens of ms on a loaded machine), not one period
    assert e.median_mj == pytest.approx(5000 * e.seconds / e.samples, rel=0.12)
    assert e.iqr_mj >= 0 and e.counters == "synthetic"


# -- validation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, override", [("objectives[1].metric", {"objectives": ENERGY}),
                                             ("constraints[1]", {"constraints": ["accuracy_drop <= 0.5",
                                                                                 "energy_mj <= 2"]})])
def test_energy_where_no_counter_exists_is_refused_at_validation(tmp_path, monkeypatch, field, override):
    monkeypatch.setattr(counters, "POWERCAP", tmp_path / "absent")   # as on this machine: no powercap
    with pytest.raises(ConfigError) as err:
        spec_from_dict(tiny_study(**override), "study.yaml")
    assert err.value.field == field and "\n" not in str(err.value)
    assert "energy_mj cannot be measured on this machine: this machine has no RAPL package zone" in str(err.value)


def test_the_cli_refuses_energy_without_a_counter_in_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                                  write_study):
    monkeypatch.setattr(counters, "POWERCAP", tmp_path / "absent")
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", str(write_study(objectives=ENERGY)), "--out", str(out)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and not out.exists() and not (tmp_path / "runs").exists()
    assert len(lines) == 1 and "objectives[1].metric: energy_mj cannot be measured" in lines[0]


def test_cost_without_a_price_is_refused_naming_file_and_field():
    with pytest.raises(ConfigError) as err:
        spec_from_dict(tiny_study(objectives=COST), "study.yaml")
    assert str(err.value) == ("study.yaml: objectives[1].metric: cost_usd_per_1k needs target.price_per_hour "
                              "(dollars per hour of the target device, e.g. 2.48)")
    spec = spec_from_dict(tiny_study(objectives=COST, target={"device": "cpu", "price_per_hour": 2.48}), "s.yaml")
    assert spec.target.price_per_hour == 2.48


# -- cost -------------------------------------------------------------------------------------------------------------
def test_cost_per_1k_inferences_from_throughput_and_price():
    # a batch of 8 every 20 ms is 400 samples/s: 1000 samples take 2.5 s, at $3.60/h that is $0.0025
    assert cost_usd_per_1k(3.6, latency_ms=20.0, batch_size=8) == pytest.approx(0.0025)
    assert cost_usd_per_1k(2.48, latency_ms=1.0, batch_size=1) == pytest.approx(2.48 / 3600)
    assert format_measured("cost_usd_per_1k", {"cost_usd_per_1k": 0.000688889}) == "0.0006889"


def test_cost_is_judged_before_training_like_latency():
    from autocompress.search.prescreen import prescreen_func
    from autocompress.spec.policy import Policy
    from autocompress.trial.plan import TrialPlan
    from autocompress.trial.result import Preview

    from test_efficiency import _done, _row, _stop

    target = {"device": "cpu", "price_per_hour": 2.48}
    plan = TrialPlan(Policy())
    assert "cost_usd_per_1k" in plan.final_after_compress()
    check = prescreen_func(spec_from_dict(tiny_study(target=target, constraints=["cost_usd_per_1k <= 0.001"]),
                                          "s.yaml"), plan)
    assert "cost_usd_per_1k = 0.002 already breaks 'cost_usd_per_1k <= 0.001'" in check(
        Preview({"cost_usd_per_1k": 0.002})).reason
    assert not check(Preview({"cost_usd_per_1k": 0.0005})).stops
    spec = spec_from_dict(tiny_study(objectives=COST, target=target, early_stopping={"rule": "dominated"}), "s.yaml")
    study = optuna.create_study(directions=spec.directions)
    _done(study, [0.9, 0.95, 0.97], {"cost_usd_per_1k": 0.001})
    rule = _stop()(spec, study)
    assert "dominated at epoch 1" in rule(1, _row(1, 0.5), Preview({"cost_usd_per_1k": 0.001}))
    assert rule(1, _row(1, 0.5), Preview({"cost_usd_per_1k": 0.0005})) is None   # cheaper: kept


def test_a_study_searching_on_cost_runs_end_to_end(write_study, tmp_path):
    target = {**tiny_study()["target"], "price_per_hour": 2.48}
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["search", str(write_study(objectives=COST, target=target)), "--out", str(run_dir),
                                 "--trials", "1"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}")
    records = record.read_all(study)
    assert len(records) == 2 and all(r.state.name == "COMPLETE" for r in records)
    for r in records:   # the baseline too
        m = r.metrics
        assert m["cost_usd_per_1k"] == pytest.approx(2.48 * m["latency_ms"] / 3600)
        assert "energy_mj" not in m   # not asked for: not measured
    for r in (r for r in records if not r.baseline):
        assert r.values == (r.metrics["accuracy"], r.metrics["cost_usd_per_1k"])
        assert r.preview.metrics["cost_usd_per_1k"] == pytest.approx(2.48 * r.preview.metrics["latency_ms"] / 3600)
    status = runner.invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0 and "$/1k" in status.output


def test_a_study_with_an_energy_constraint_measures_it_on_every_trial(write_study, tmp_path, monkeypatch):
    """With a counter (a stand-in here: this machine has none), energy_mj is measured on the
    baseline and every trial, with its spread and windows, and constrains the search."""
    monkeypatch.setattr(counters, "open_counters", lambda device: [Synthetic(5.0, 0.005)])
    monkeypatch.setattr(energy, "MIN_WINDOW_S", 0.05)
    run_dir = tmp_path / "run"
    study_file = write_study(constraints=["accuracy_drop <= 0.5", "energy_mj <= 1000"])
    result = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir), "--trials", "1"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}")
    records = record.read_all(study)
    assert len(records) == 2 and all(r.state.name == "COMPLETE" for r in records)
    for r in records:
        m = r.metrics
        assert m["energy_mj"] > 0 and m["energy_runs"] == 3 and m["energy_iqr_mj"] >= 0
        assert "(3 rounds)" in format_measured("energy_mj", m)
        if not r.baseline:
            assert r.constraints[1] == pytest.approx(m["energy_mj"] - 1000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_energy_on_the_gpu_is_nvmls_counter_difference(digits_ctx):
    reason = counters.energy_unavailable("cuda")
    if reason:
        pytest.skip(reason)
    model = digits_ctx.teacher.to("cuda")
    e = measure_energy(model, digits_ctx.example_batch(), counters=counters.open_counters("cuda"), device="cuda",
                       batch_size=32)
    assert e.windows == energy.WINDOWS and e.seconds >= energy.WINDOWS * energy.MIN_WINDOW_S
    assert e.median_mj > 0 and "NVML total energy of" in e.counters
