"""The sensitivity pass in the report: a table (loss rise and accuracy drop per layer group,
for each format the pass quantized alone and each pruning ratio) and a bar chart of the loss
rises. ``report.data`` reads the pass (``runs/<name>/sensitivity.json``); a study without
per-layer knobs has none, and the section says so."""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go


def esc(value: Any) -> str:   # report.tables has one too, but it imports the figures, which import this
    return html.escape(str(value), quote=True)


def _columns(s: dict[str, Any]) -> list[tuple[str, dict[str, list[float]]]]:
    return ([(f"int8 {fmt}" if not fmt.startswith(("int8", "fp8")) else fmt, t) for fmt, t in s["quantization"].items()]
            + [(f"pruned {r}", t) for r, t in s["pruning"].items()])


def sensitivity_figure(s: dict[str, Any] | None) -> go.Figure | None:
    if not s:
        return None
    groups = s["groups"]
    fig = go.Figure()
    for name, table in _columns(s):
        fig.add_trace(go.Bar(x=[html.escape(g) for g in groups], y=[table.get(g, [None])[0] for g in groups],
                             name=html.escape(name)))
    fig.update_layout(title={"text": "Sensitivity per layer group: task-loss rise when only that group changes",
                             "x": 0.0, "xanchor": "left"}, barmode="group", template="plotly_white",
                      yaxis_title="loss rise", xaxis_title="layer group", height=450,
                      margin=dict(l=60, r=20, t=90, b=80),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def sensitivity_section(s: dict[str, Any] | None, figs: dict) -> str:
    if not s:
        return ('<section id="sensitivity"><h2>Sensitivity</h2><p class="note">no sensitivity pass: the search '
                "space has no per-layer knob (quantization.keep_float_top_k, pruning.allocation: sensitivity)</p>"
                "</section>")
    columns = _columns(s)
    head = "".join(f"<th>{esc(name)}</th>" for name, _ in columns)
    rows = ""
    for g in s["groups"]:
        cells = "".join(f"<td>{'-' if g not in t else esc(f'{t[g][0]:+.4f} / {t[g][1]:+.2%}')}</td>"
                        for _, t in columns)
        rows += f"<tr><td>{esc(g)}</td>{cells}</tr>"
    note = (f"Measured on the trained baseline, {s['samples']} validation samples, no fine-tuning: each cell is the "
            "task-loss rise / accuracy drop when only that group is quantized (static int8 calibrated on training "
            "batches) or has that share of its layers' output channels zeroed (smallest L1 first). "
            f"Baseline loss {s['loss']:.4f}, accuracy {s['accuracy']:.2%}; the pass took {s.get('seconds', 0):.1f} s.")
    if s.get("skipped"):
        note += " Not measured: " + "; ".join(f"{k} ({v})" for k, v in s["skipped"].items())
    fig = '<div id="fig-sensitivity" class="figure"></div>' if "sensitivity" in figs else ""
    return (f'<section id="sensitivity"><h2>Sensitivity</h2><p class="note">{esc(note)}</p>{fig}'
            f'<table class="trials"><thead><tr><th>layer group</th>{head}</tr></thead><tbody>{rows}</tbody></table>'
            "</section>")
