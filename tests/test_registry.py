"""The metric registry: every metric once, read by validation, report, card and status."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.errors import ConfigError
from autocompress.metrics import memory
from autocompress.metrics.registry import METRICS, format_value, metric_label, summary_names, why_unavailable
from autocompress.spec.config import spec_from_dict

from conftest import tiny_study


def test_every_metric_the_engine_measures_is_registered(digits_ctx, monkeypatch):
    from dataclasses import replace

    from autocompress.deploy.runtimes import deploy
    from autocompress.trial.measure import baseline_metrics, deployed_metrics

    from autocompress.metrics import counters, energy

    from test_energy import Synthetic

    measured = set(baseline_metrics(digits_ctx.teacher, digits_ctx))
    monkeypatch.setattr(counters, "open_counters", lambda device: [Synthetic()])   # no counter on this machine
    monkeypatch.setattr(energy, "MIN_WINDOW_S", 0.05)
    ctx = replace(digits_ctx, target=replace(digits_ctx.target, throughput_batch_size=4, energy=True,
                                             price_per_hour=2.48))
    measured |= set(deployed_metrics(deploy(ctx.teacher, "eager", ctx.example_batch()), ctx))
    assert {"speedup", "speedup_iqr", "size_ratio", "top1_agreement", "throughput_sps", "energy_mj",
            "energy_iqr_mj", "energy_runs", "cost_usd_per_1k"} <= measured
    assert measured <= set(METRICS), measured - set(METRICS)


def test_report_units_and_csv_columns_come_from_the_registry():
    from autocompress.report.data import METRIC_COLUMNS, UNITS

    assert list(UNITS) == list(METRICS) == METRIC_COLUMNS
    assert UNITS["throughput_sps"] == "samples/s" and UNITS["peak_memory_mb"] == "MB"


def test_format_shows_missing_values_as_n_a_and_units_decide_precision():
    assert format_value("peak_memory_mb", None) == "n/a" and format_value("accuracy", float("nan")) == "n/a"
    assert format_value("accuracy", 0.91234) == "0.9123" and format_value("params", 12345.0) == "12,345"
    assert format_value("params", 12345.0, compact=True) == "12.3k" and format_value("flops", 2.5e6, compact=True) == "2.50M"
    assert metric_label("accuracy") == "accuracy (fraction)" and metric_label("latency_ms") == "latency_ms"


def test_status_columns_are_the_objectives_then_the_summary_metrics():
    assert summary_names(["size_mb", "test_accuracy"])[:2] == ["size_mb", "test_accuracy"]
    assert "accuracy" in summary_names([]) and summary_names([]).count("size_mb") == 1


@pytest.mark.parametrize("field, override", [
    ("objectives[1].metric", {"objectives": [{"metric": "accuracy", "direction": "maximize"},
                                             {"metric": "peak_memory_mb", "direction": "minimize"}]}),
    ("constraints[0]", {"constraints": ["peak_memory_mb <= 10"]}),
])
def test_an_objective_this_machine_cannot_measure_is_refused_at_validation(monkeypatch, field, override):
    monkeypatch.setattr(memory, "_CLEAR_REFS", "/proc/self/no-clear-refs")   # as where it is not writable
    assert why_unavailable("peak_memory_mb", "cpu") is not None
    with pytest.raises(ConfigError) as err:
        spec_from_dict(tiny_study(**override), "study.yaml")
    assert err.value.field == field and "peak_memory_mb cannot be measured on this machine" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_cli_refuses_it_in_one_line_and_writes_nothing(monkeypatch, write_study, tmp_path):
    monkeypatch.setattr(memory, "_CLEAR_REFS", "/proc/self/no-clear-refs")
    path = write_study(objectives=[{"metric": "peak_memory_mb", "direction": "minimize"}])
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["search", str(path), "--out", str(out)])
    assert result.exit_code == 2 and not out.exists()
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "objectives[0].metric: peak_memory_mb cannot be measured" in lines[0]


def test_a_machine_that_can_measure_it_accepts_it(monkeypatch, tmp_path):
    writable = tmp_path / "clear_refs"
    writable.write_text("")
    monkeypatch.setattr(memory, "_CLEAR_REFS", str(writable))
    if memory._status_kb("VmHWM") is None:
        pytest.skip("no /proc/self/status here")
    assert why_unavailable("peak_memory_mb", "cpu") is None
    spec = spec_from_dict(tiny_study(constraints=["peak_memory_mb <= 500"]), "study.yaml")
    assert spec.constraints[0].metric == "peak_memory_mb"


def test_detail_metrics_cannot_be_objectives():
    with pytest.raises(ConfigError, match="unknown metric 'latency_iqr_ms'"):
        spec_from_dict(tiny_study(objectives=[{"metric": "latency_iqr_ms", "direction": "minimize"}]), "s.yaml")


def test_noise_tolerance_is_declared_once():
    lat = METRICS["latency_ms"]
    assert lat.better(1.04, 1.0) and not lat.better(1.06, 1.0)
    assert METRICS["params"].better(100, 100) and not METRICS["params"].better(101, 100)
    assert METRICS["accuracy"].better(0.9, 0.8) and not METRICS["accuracy"].better(0.8, 0.9)
