"""The sections of the report page, one HTML builder each, from a ``ReportData`` (and the
figures, for the sections that place them). ``html.render_html`` puts them together."""

from __future__ import annotations

import yaml

from autocompress.report.data import UNITS, ReportData
from autocompress.report.figures import label
from autocompress.report.tables import esc, flatten, fmt, history_table, kv_table, metrics_table, plain


def summary_section(data: ReportData) -> str:
    s = data.summary
    budget = s.get("budget") or {}
    budget_text = ", ".join(f"{k} {v}" for k, v in budget.items() if v is not None) or "-"
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s.get("counts", {}).items())) or "none"
    items = [
        ("study", esc(s["study"])), ("description", esc(s.get("description")) or "-"),
        ("model", esc(s.get("model"))), ("data", esc(s.get("data"))),
        ("data splits", "<br>".join(esc(f"{d['name']}: {d['size']} samples, {d['origin']}")
                                    for d in s.get("data_splits", [])) or "-"),
        ("objectives", esc(", ".join(s.get("objectives", [])))),
        ("constraints", esc(", ".join(s.get("constraints", [])) or "none")),
        ("budget", esc(budget_text)), ("sampler", esc(s.get("sampler"))), ("seed", esc(s.get("seed"))),
        ("trials", esc(counts)), ("Pareto front", esc(f"{len(data.front.trials)} feasible point(s)")),
        ("latency measured on", "<br>".join(esc(d) for d in s.get("devices", [])) or "-"),
        ("started", esc(s.get("started") or "-")), ("last trial finished", esc(s.get("finished") or "-")),
    ]
    base = s.get("baseline_metrics") or {}
    return (f'<section id="summary"><h2>Study</h2><div class="grid"><div>{kv_table(items)}</div>'
            f'<div><h3>Baseline (uncompressed, measured)</h3>{metrics_table(base) if base else "<p>-</p>"}</div>'
            f"</div></section>")


def _figure_div(fid: str) -> str:
    return f'<div id="fig-{fid}" class="figure"></div>'


def front_section(data: ReportData, figs: dict) -> str:
    n = len(data.metric_names)
    body = _figure_div("pareto") if "pareto" in figs else ""
    if "pareto3d" in figs:
        body += _figure_div("pareto3d")
    if "splom" in figs:
        body += _figure_div("splom")
    note = ("Red diamonds: the feasible Pareto front; blue: other feasible trials; grey x: trials that break a "
            "constraint; gold star: the baseline. Hover a point for its policy.")
    if n > 2:
        note += (" With more than two objectives, a point off the 2D front can still be on the front in "
                 "another objective.")
    return f'<section id="front"><h2>Pareto front</h2><p class="note">{esc(note)}</p>{body}</section>'


def hv_section(data: ReportData, figs: dict) -> str:
    if "hypervolume" not in figs:
        return ('<section id="hypervolume"><h2>Hypervolume</h2><p class="note">no feasible complete trial yet</p>'
                "</section>")
    ref = ", ".join(f"{label(m)} {v:.4g}" for m, v in zip(data.metric_names, data.hv_reference))
    note = ("Each objective scaled to 0 (best observed) .. 1 (worst observed) over feasible trials; reference point "
            f"1.1 on every axis ({ref}); divided by the reference box, so 1 would be a single point best in "
            "everything.")
    return (f'<section id="hypervolume"><h2>Hypervolume</h2><p class="note">{esc(note)}</p>'
            f'{_figure_div("hypervolume")}</section>')


def importance_section(data: ReportData, figs: dict) -> str:
    imp = data.importances
    body = _figure_div("importance") if "importance" in figs else ""
    note = f"<p class='note'>{esc(imp.note)}</p>" if imp.note else ""
    if not body and not note:
        note = "<p class='note'>no importances</p>"
    return f'<section id="importance"><h2>Knob importance</h2>{note}{body}</section>'


def trials_section(data: ReportData) -> str:
    f = data.trials
    if f.empty:
        return '<section id="trials"><h2>Trials</h2><p>no trials</p></section>'
    metric_cols = [c for c in UNITS if c in f.columns and f[c].notna().any()]
    extra = [m for m in data.metric_names if m not in metric_cols]
    knob_cols = [c for c in f.columns if "." in c]
    cols = ["number", "state", "feasible", "on_front", "policy", *metric_cols, *extra, *knob_cols,
            "duration_s", "reason"]
    heads = "".join(f"<th class='{'t' if c in ('state', 'policy', 'reason') or c in knob_cols else ''}'>"
                    f"{esc(label(c))}</th>" for c in cols)
    rows = []
    for _, r in f.iterrows():
        classes = [str(r["state"])]
        if r["on_front"]:
            classes.append("front")
        if r["baseline"]:
            classes.append("baseline")
        if r["feasible"] is False:
            classes.append("infeasible")
        cells = []
        for c in cols:
            v = r[c]
            if v is None or (isinstance(v, float) and v != v):   # a metric not measured; a knob not active
                cells.append(f"<td data-v=''>{'n/a' if c in UNITS else '-'}</td>")
            elif c in ("feasible", "on_front"):
                cells.append(f"<td>{'yes' if v else 'no'}</td>")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f"<td data-v='{esc(repr(float(v)))}'>{esc(fmt(c, v))}</td>")
            else:
                cells.append(f"<td class='t'>{esc(v)}</td>")
        rows.append(f"<tr class='{esc(' '.join(classes))}'>{''.join(cells)}</tr>")
    return (f'<section id="trials"><h2>Trials</h2><p class="note">Click a column to sort. Metrics are the '
            f"measured ones (validation accuracy unless named test_); rows: red = on the front, yellow = "
            f'baseline, grey = infeasible.</p><div class="scroll"><table class="sortable" id="trials-table">'
            f"<thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>")


def points_section(data: ReportData) -> str:
    base = data.summary.get("baseline_metrics") or {}
    parts = []
    for p in data.front_points:
        title = "baseline (no compression)" if p["baseline"] else f"trial {p['number']}: {p['summary']}"
        policy = yaml.safe_dump(p["policy"], sort_keys=False) if p["policy"] else "-"
        proof = kv_table((k, esc(plain(k, v))) for k, v in flatten(p["proof"]).items()) \
            if p["proof"] else "<p>-</p>"
        where = kv_table((k, esc(v)) for k, v in p["measured_on"].items()) if p["measured_on"] else "<p>-</p>"
        timings = kv_table((k, esc(f"{v:.3f}" if isinstance(v, float) else v)) for k, v in p["timings"].items()) \
            if p["timings"] else "<p>-</p>"
        history = history_table(p["history"])
        location = data.summary.get("run_dir") or data.study_name
        export_hint = "" if p["baseline"] else (f"<p class='note'>export it: <code>autocompress export "
                                                 f"{esc(location)} --trial {p['number']}</code></p>")
        parts.append(
            f"<details id='point-{p['number']}'{' open' if len(data.front_points) <= 3 else ''}>"
            f"<summary>{esc(title)}</summary>"
            f"{export_hint}<div class='grid'><div><h3>Measured metrics vs baseline</h3>"
            f"{metrics_table(p['metrics'], None if p['baseline'] else base)}</div>"
            f"<div><h3>Proof of compression</h3>{proof}<h3>Measured on</h3>{where}<h3>Timings (s)</h3>{timings}</div>"
            f"<div><h3>Policy</h3><pre>{esc(policy)}</pre></div></div>{history}</details>")
    body = "".join(parts) or "<p>no feasible complete trial yet</p>"
    return f'<section id="points"><h2>Front points</h2>{body}</section>'


def failures_section(data: ReportData) -> str:
    if not data.failures:
        return '<section id="failures"><h2>Failed and pruned trials</h2><p>none</p></section>'
    rows = "".join(f"<tr><td>{f['number']}</td><td class='t'>{esc(f['state'])}</td>"
                   f"<td class='t'>{esc(f['policy'])}</td><td class='t'>{esc(f['reason'])}</td></tr>"
                   for f in data.failures)
    return (f'<section id="failures"><h2>Failed and pruned trials</h2><table><tr><th>trial</th><th class="t">state</th>'
            f'<th class="t">policy</th><th class="t">reason</th></tr>{rows}</table></section>')
