"""Plotly figures of a ``ReportData``: they only draw what ``report.data`` computed.

Every user string in a figure (policy summaries, knob values) is HTML-escaped first: plotly
renders a small subset of HTML in labels and hover text, and escaped text shows as text.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from autocompress.metrics.registry import format_value, metric_label
from autocompress.report.data import ReportData
from autocompress.report.sensitivity import sensitivity_figure

COLORS = {"trial": "#7aa6d6", "front": "#d62728", "infeasible": "#9a9a9a", "baseline": "#f2b701"}
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=90, b=50), height=500,
              legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))


def _title(text: str) -> dict:
    return dict(text=text, x=0, xanchor="left", y=0.98, yanchor="top")


def label(metric: str) -> str:
    return metric_label(metric)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _knob_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if "." in c]


def hover_texts(rows: pd.DataFrame, metrics: list[str]) -> list[str]:
    """One escaped hover label per row: trial, policy, objective values, sampled knobs."""
    knobs = _knob_columns(rows)
    out = []
    for _, r in rows.iterrows():
        head = "baseline (no compression)" if r["baseline"] else f"trial {int(r['number'])}"
        lines = [f"<b>{html.escape(head)}</b>", html.escape(str(r.get("policy") or ""))]
        lines += [f"{html.escape(label(m))}: {format_value(m, r.get(m))}" for m in metrics]
        if not r["baseline"] and r.get("feasible") is False:
            lines.append("infeasible: breaks a constraint")
        lines += [f"{html.escape(k)} = {html.escape(_fmt(r[k]))}" for k in knobs
                  if r[k] is not None and r[k] == r[k]]
        out.append("<br>".join(lines))
    return out


def _groups(data: ReportData) -> dict[str, pd.DataFrame]:
    f = data.trials
    if f.empty:
        return {}
    done = f[f["state"] == "COMPLETE"]
    ok = done["feasible"].map(lambda v: v is not None and bool(v)).astype(bool)
    return {
        "trials (feasible)": done[ok & ~done["on_front"]],
        "infeasible (breaks a constraint)": done[~ok],
        "baseline": f[f["baseline"]],
        "Pareto front (feasible)": done[done["on_front"]],
    }


_STYLE = {
    "trials (feasible)": dict(color=COLORS["trial"], symbol="circle", size=9),
    "infeasible (breaks a constraint)": dict(color=COLORS["infeasible"], symbol="x", size=9),
    "Pareto front (feasible)": dict(color=COLORS["front"], symbol="diamond", size=12,
                                    line=dict(color="#333", width=1)),
    "baseline": dict(color=COLORS["baseline"], symbol="star", size=18, line=dict(color="#333", width=1)),
}


def pareto_figure(data: ReportData) -> go.Figure:
    """2D front for two objectives; objective over trials for one; first two of more."""
    metrics = data.metric_names
    fig = go.Figure()
    groups = _groups(data)
    if len(metrics) == 1:
        m = metrics[0]
        for name, rows in groups.items():
            fig.add_trace(go.Scatter(x=rows["number"], y=rows[m], mode="markers", name=name,
                                     marker=_STYLE[name], hovertext=hover_texts(rows, metrics),
                                     hoverinfo="text"))
        fig.update_layout(xaxis_title="trial", yaxis_title=label(m))
    else:
        x, y = metrics[0], metrics[1]
        for name, rows in groups.items():
            if name == "Pareto front (feasible)" and len(metrics) == 2:
                rows = rows.sort_values(x)
            mode = "lines+markers" if name == "Pareto front (feasible)" and len(metrics) == 2 else "markers"
            fig.add_trace(go.Scatter(x=rows[x], y=rows[y], mode=mode, name=name, marker=_STYLE[name],
                                     line=dict(color=COLORS["front"], width=1, dash="dot"),
                                     hovertext=hover_texts(rows, metrics), hoverinfo="text"))
        fig.update_layout(xaxis_title=label(x), yaxis_title=label(y))
    title = "Pareto front" + (f" ({label(metrics[0])} vs {label(metrics[1])})" if len(metrics) > 2 else "")
    fig.update_layout(title=_title(title), **LAYOUT)
    return fig


def pareto_3d_figure(data: ReportData) -> go.Figure | None:
    metrics = data.metric_names
    if len(metrics) < 3:
        return None
    x, y, z = metrics[:3]
    fig = go.Figure()
    for name, rows in _groups(data).items():
        style = dict(_STYLE[name])
        style["size"] = max(4, style["size"] // 2)
        # WebGL draws 3D markers as font glyphs: keep to shapes every font has
        style["symbol"] = {"star": "diamond", "x": "square"}.get(style["symbol"], style["symbol"])
        fig.add_trace(go.Scatter3d(x=rows[x], y=rows[y], z=rows[z], mode="markers", name=name, marker=style,
                                   hovertext=hover_texts(rows, metrics), hoverinfo="text"))
    fig.update_layout(title=_title("Pareto front, 3D"), scene=dict(xaxis_title=label(x), yaxis_title=label(y),
                                                            zaxis_title=label(z)), **{**LAYOUT, "height": 560})
    return fig


def scatter_matrix_figure(data: ReportData) -> go.Figure | None:
    metrics = data.metric_names
    if len(metrics) < 3:
        return None
    fig = go.Figure()
    for name, rows in _groups(data).items():
        fig.add_trace(go.Splom(dimensions=[dict(label=label(m), values=rows[m]) for m in metrics], name=name,
                               marker=dict(color=_STYLE[name]["color"], symbol=_STYLE[name]["symbol"], size=7),
                               hovertext=hover_texts(rows, metrics), hoverinfo="text",
                               diagonal_visible=False, showupperhalf=False))
    fig.update_layout(title=_title("Scatter matrix of the objectives"), dragmode="select",
                      **{**LAYOUT, "height": 220 * len(metrics)})
    return fig


def hypervolume_figure(data: ReportData) -> go.Figure | None:
    hv = data.hypervolume
    if hv.empty:
        return None
    fig = go.Figure(go.Scatter(x=hv["number"], y=hv["hypervolume"], mode="lines+markers", name="hypervolume",
                               line=dict(color=COLORS["front"], shape="hv")))
    fig.update_layout(title=_title("Hypervolume of the feasible front over trials"), xaxis_title="trial",
                      yaxis_title="normalized hypervolume (0..1)", **{**LAYOUT, "height": 360})
    return fig


def importance_figure(data: ReportData) -> go.Figure | None:
    imp = data.importances.by_objective
    if not any(imp.values()):
        return None
    knobs = sorted({k for v in imp.values() for k in v},
                   key=lambda k: sum(v.get(k, 0.0) for v in imp.values()))
    fig = go.Figure()
    for metric, values in imp.items():
        fig.add_trace(go.Bar(y=[html.escape(k) for k in knobs], x=[values.get(k, 0.0) for k in knobs],
                             orientation="h", name=html.escape(metric)))
    fig.update_layout(title=_title("Knob importance per objective (fANOVA, normalized)"), barmode="group",
                      xaxis_title="importance", **{**LAYOUT, "height": max(300, 60 + 40 * len(knobs) * len(imp))})
    return fig


def all_figures(data: ReportData) -> dict[str, go.Figure]:
    """Figure id -> figure, in page order; figures with nothing to show are left out."""
    figs = {"pareto": pareto_figure(data), "pareto3d": pareto_3d_figure(data),
            "splom": scatter_matrix_figure(data), "hypervolume": hypervolume_figure(data),
            "importance": importance_figure(data), "sensitivity": sensitivity_figure(data.sensitivity)}
    return {k: v for k, v in figs.items() if v is not None}
