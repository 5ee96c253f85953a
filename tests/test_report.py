"""The report: its data (front, baseline, feasibility, failures), the self-contained escaped HTML,
the CLI, and the page as a browser renders it."""

from __future__ import annotations

import os
import re

import numpy as np
import optuna
import pandas as pd
import pytest
from crafted import POINTS, crafted_run_dir, crafted_study
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.report.browser import find_chromium, open_page
from autocompress.report.data import report_data
from autocompress.report.front import pareto_front
from autocompress.report.html import render_html

EVIL = "<script>alert(1)</script>"


@pytest.mark.parametrize("n_objectives", [2, 3])
def test_front_is_optunas_best_trials_when_unconstrained(n_objectives):
    rng = np.random.default_rng(n_objectives)
    directions = ["maximize"] + ["minimize"] * (n_objectives - 1)
    study = optuna.create_study(directions=directions)
    for _ in range(40):
        study.add_trial(optuna.trial.create_trial(values=list(rng.random(n_objectives))))
    front = pareto_front(study)
    assert {t.number for t in front.trials} == {t.number for t in study.best_trials}
    assert front.baseline is None


def test_report_data_marks_baseline_infeasible_front_and_failures():
    study, n = crafted_study()
    data = report_data(study)
    frame = data.trials.set_index("number")
    assert frame.loc[0, "state"] == "BASELINE" and bool(frame.loc[0, "baseline"])
    assert frame.loc[n["E"], "feasible"] is not None and not frame.loc[n["E"], "feasible"]
    assert not frame.loc[n["E"], "on_front"]
    assert {t.number for t in data.front.trials} == {n[k] for k in "ABCD"}  # E infeasible, F dominated
    assert data.front.baseline is not None and data.front.baseline.number == 0
    assert [p["number"] for p in data.front_points][0] == 0     # the baseline is shown with the front
    reasons = {f["state"]: f["reason"] for f in data.failures}
    assert "speedup" in reasons["FAIL"] and "before training" in reasons["PRUNED"]
    hv = data.hypervolume["hypervolume"].to_numpy()
    assert len(hv) == 6 and np.all(np.diff(hv) >= -1e-12) and 0 <= hv[-1] <= 1
    assert set(data.importances.by_objective) == {"accuracy", "latency_ms"}
    assert {"pruning.method", "training.lr"} <= set(data.trials.columns)
    assert data.summary["devices"] and data.summary["constraints"] == ["accuracy_drop <= 0.1"]


def test_importances_need_enough_trials():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1.0], params={"x": 0.5},
                                              distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    data = report_data(study)
    assert data.importances.by_objective == {} and "at least" in data.importances.note
    assert "no importances" in render_html(data) or "at least" in render_html(data)


def test_html_is_self_contained_and_offline():
    study, _ = crafted_study(three=True)
    page = render_html(report_data(study))
    assert not re.search(r"<script[^>]+src=", page, re.I)
    assert not re.search(r"<link[^>]+href=", page, re.I)
    assert not re.search(r"""src=["']?https?:""", page, re.I)
    assert page.count("<script>") == 3                     # error trap, plotly.js (once), render
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for section in ("summary", "front", "hypervolume", "importance", "trials", "points", "failures"):
        assert f'id="{section}"' in page
    assert 'id="fig-pareto3d"' in page and 'id="fig-splom"' in page


def test_user_strings_are_escaped():
    study, n = crafted_study(name=EVIL, summary={"B": "<img src=x onerror=alert(2)>", "C": "a & b"})
    page = render_html(report_data(study))
    assert EVIL not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    figure_json = page.split("id='figure-data'>", 1)[1].split("</script>", 1)[0]
    assert "<" not in figure_json and ">" not in figure_json    # nothing can close the element


def test_report_cli_writes_html_csv_and_parquet(tmp_path):
    run, n = crafted_run_dir(tmp_path)
    csv, parquet = tmp_path / "t.csv", tmp_path / "t.parquet"
    result = CliRunner().invoke(app, ["report", str(run), "--csv", str(csv), "--parquet", str(parquet)])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").is_file()
    assert len(pd.read_csv(csv)) == len(pd.read_parquet(parquet)) == 1 + len(POINTS) + 2


def test_report_cli_unknown_study_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


def _chromium_or_skip() -> None:
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium); the browser check is skipped")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    _chromium_or_skip()
    study, _ = crafted_study(name=EVIL, three=True, summary={"B": "<img src=x onerror=alert(2)>"})
    html_file = tmp_path / "report.html"
    html_file.write_text(render_html(report_data(study)), encoding="utf-8")
    page = open_page(html_file)
    assert page.rendered, page.console
    assert page.errors == [], page.errors
    assert not [c for c in page.console if "Uncaught" in c or "Refused" in c]
    front_div = page.dom.split('id="fig-pareto"', 1)[1].split('id="fig-pareto3d"', 1)[0]
    assert "plot-container" in front_div and "main-svg" in front_div       # the front plot was drawn
    assert page.dom.count('class="plot-container plotly"') == 5
    assert EVIL not in page.dom and "<img src=x" not in page.dom


def test_progress_shows_the_best_of_each_objective_on_the_front():
    from autocompress.cli.progress import SearchProgress

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "size_mb"])
    for acc, size in ((0.90, 0.5), (0.95, 0.8), (0.80, 0.9)):
        study.add_trial(optuna.trial.create_trial(values=[acc, size]))
    info = SearchProgress._info(study)
    assert info == "front 2 | best accuracy 0.95 | best size_mb 0.5"
    assert "latency" not in info


def test_stopped_early_trials_show_their_reason():
    from optuna.trial import TrialState, create_trial

    from autocompress.report.data import failures, trials_frame
    from autocompress.search.record import Stop, read_all

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(create_trial(state=TrialState.PRUNED,
                                 user_attrs={"stopped_early": "dominated at epoch 1: val accuracy 0.5"}))
    records = read_all(study)
    assert records[0].stop == Stop("early_stopping", "dominated at epoch 1: val accuracy 0.5")
    assert failures(records)[0]["reason"] == "dominated at epoch 1: val accuracy 0.5"
    frame = trials_frame(records, pareto_front(study, records))
    assert frame.loc[0, "reason"] == "dominated at epoch 1: val accuracy 0.5"
