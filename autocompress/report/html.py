"""Render a ``ReportData`` as one self-contained HTML file (plotly.js inlined once, no CDN,
no network: a Content-Security-Policy forbids fetching anything).

Every user string goes through ``html.escape``; figure JSON sits in a non-executed
``application/json`` block with ``<``, ``>`` and ``&`` written as ``\\u00XX`` escapes, so no
string from the study can close a tag or open a script.
"""

from __future__ import annotations

import html
import json
from typing import Any, Iterable

import plotly.io as pio
import yaml

from autocompress.report.data import UNITS, ReportData
from autocompress.report.figures import all_figures, label

CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; worker-src blob:")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:16px 28px}
header h1{margin:0 0 4px;font-size:22px} header p{margin:0;opacity:.85}
nav{padding:8px 28px;background:#e9eef3;position:sticky;top:0;z-index:10}
nav a{margin-right:16px;color:#1f3b57;text-decoration:none;font-weight:600}
main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px} h3{font-size:15px;margin:12px 0 6px}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:right;white-space:nowrap}
td.t{white-space:normal}
th{background:#f1f4f7;position:sticky;top:0} td.t,th.t{text-align:left}
table.sortable th{cursor:pointer;user-select:none} table.sortable th:after{content:" \\2195";color:#aaa}
.scroll{overflow:auto;max-height:640px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:12px} .grid>div{overflow-x:auto}
.kv td{text-align:left;white-space:normal;overflow-wrap:anywhere}
.kv td:first-child{color:#555;width:45%}
pre{background:#f6f8fa;padding:8px;border-radius:4px;font-size:12px;overflow:auto}
tr.front td{background:#fff4f4} tr.baseline td{background:#fffbe6} tr.infeasible td{color:#888}
tr.FAIL td,tr.PRUNED td{color:#a33}
.note{color:#666;font-size:13px} .good{color:#17803d} .bad{color:#b42318}
details{border-top:1px solid #eee;padding:6px 0} summary{cursor:pointer;font-weight:600}
#js-errors{color:#b42318;font-weight:600}
"""

# Records script errors, console.error calls and blocked fetches in the page itself: shown to
# the reader, and read from the DOM by the headless-browser test.
ERROR_TRAP = """
window.__reportErrors=[];
function __showErrors(){var d=document.getElementById('js-errors');
 if(d&&window.__reportErrors.length){d.hidden=false;d.textContent='script error: '+window.__reportErrors.join(' | ');}}
function __reportError(m){window.__reportErrors.push(String(m));__showErrors();}
window.addEventListener('error',function(e){__reportError(e.message||e);});
window.addEventListener('unhandledrejection',function(e){
 __reportError('unhandled rejection: '+((e.reason&&e.reason.message)||e.reason));});
document.addEventListener('securitypolicyviolation',function(e){
 __reportError('blocked: '+e.violatedDirective+' '+e.blockedURI);});
(function(){var ce=console.error;console.error=function(){__reportError(Array.prototype.join.call(arguments,' '));
 return ce.apply(console,arguments);};})();
"""

RENDER = """
(function(){
 var figs=JSON.parse(document.getElementById('figure-data').textContent);
 Object.keys(figs).forEach(function(id){
   var f=figs[id], el=document.getElementById('fig-'+id);
   if(el){Plotly.newPlot(el,f.data,f.layout,{responsive:true,displaylogo:false});}
 });
 function key(td){var v=td.getAttribute('data-v');if(v===null)v=td.textContent;
   var n=parseFloat(v);return (v!==''&&!isNaN(n)&&isFinite(v))?n:v.toLowerCase();}
 document.querySelectorAll('table.sortable').forEach(function(t){
   t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
     var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
     var asc=th.getAttribute('data-dir')!=='asc';th.setAttribute('data-dir',asc?'asc':'desc');
     rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
       if(typeof x!==typeof y){x=String(x);y=String(y);}
       return (x<y?-1:x>y?1:0)*(asc?1:-1);});
     rows.forEach(function(r){body.appendChild(r);});
   });});
 });
 __showErrors();
 document.body.setAttribute('data-rendered','1');
})();
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def safe_json(obj: Any) -> str:
    """JSON that cannot end the element it is embedded in."""
    text = obj if isinstance(obj, str) else json.dumps(obj, default=str)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def fmt(metric: str, v: Any) -> str:
    """A measured number as text, with the precision its unit deserves."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    unit = UNITS.get(metric, "")
    if unit in ("count", "FLOPs/sample") or metric.endswith("_runs"):
        return f"{v:,.0f}"
    if unit == "fraction":
        return f"{v:.4f}"
    if unit == "MB":
        return f"{v:.4f}"
    if unit == "ms":
        return f"{v:.4g}"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _kv_table(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def _metrics_table(metrics: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    names = [m for m in UNITS if m in metrics] + [m for m in metrics if m not in UNITS]
    extra = "<th>baseline</th><th>change</th>" if baseline else ""
    head = f"<tr><th class='t'>metric</th><th>value</th>{extra}</tr>"
    rows = []
    for m in names:
        v = metrics.get(m)
        cells = f"<td class='t'>{esc(label(m))}</td><td>{esc(fmt(m, v))}</td>"
        if baseline:
            b = baseline.get(m)
            cells += f"<td>{esc(fmt(m, b))}</td><td>{_change(m, v, b)}</td>"
        rows.append(f"<tr>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _change(metric: str, v: Any, b: Any) -> str:
    if metric not in UNITS or metric == "latency_iqr_ms":
        return ""
    if not isinstance(v, (int, float)) or not isinstance(b, (int, float)) or isinstance(v, bool):
        return ""
    if UNITS.get(metric) == "fraction":
        d = v - b
        good = d >= 0 if metric != "accuracy_drop" else d <= 0
        return f"<span class='{'good' if good else 'bad'}'>{d * 100:+.2f} points</span>"
    if not b:
        return ""
    ratio = v / b
    return f"<span class='{'good' if ratio <= 1 else 'bad'}'>x{ratio:.3g} ({(ratio - 1) * 100:+.1f}%)</span>"


def _summary_section(data: ReportData) -> str:
    s = data.summary
    budget = s.get("budget") or {}
    budget_text = ", ".join(f"{k} {v}" for k, v in budget.items() if v is not None) or "-"
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s.get("counts", {}).items())) or "none"
    items = [
        ("study", esc(s["study"])), ("description", esc(s.get("description")) or "-"),
        ("model", esc(s.get("model"))), ("data", esc(s.get("data"))),
        ("objectives", esc(", ".join(s.get("objectives", [])))),
        ("constraints", esc(", ".join(s.get("constraints", [])) or "none")),
        ("budget", esc(budget_text)), ("sampler", esc(s.get("sampler"))), ("seed", esc(s.get("seed"))),
        ("trials", esc(counts)), ("Pareto front", esc(f"{len(data.front.trials)} feasible point(s)")),
        ("latency measured on", "<br>".join(esc(d) for d in s.get("devices", [])) or "-"),
        ("started", esc(s.get("started") or "-")), ("last trial finished", esc(s.get("finished") or "-")),
    ]
    base = s.get("baseline_metrics") or {}
    return (f'<section id="summary"><h2>Study</h2><div class="grid"><div>{_kv_table(items)}</div>'
            f'<div><h3>Baseline (uncompressed, measured)</h3>{_metrics_table(base) if base else "<p>-</p>"}</div>'
            f"</div></section>")


def _figure_div(fid: str) -> str:
    return f'<div id="fig-{fid}" class="figure"></div>'


def _front_section(data: ReportData, figs: dict) -> str:
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


def _hv_section(data: ReportData, figs: dict) -> str:
    if "hypervolume" not in figs:
        return ('<section id="hypervolume"><h2>Hypervolume</h2><p class="note">no feasible complete trial yet</p>'
                "</section>")
    ref = ", ".join(f"{label(m)} {v:.4g}" for m, v in zip(data.metric_names, data.hv_reference))
    note = ("Each objective scaled to 0 (best observed) .. 1 (worst observed) over feasible trials; reference point "
            f"1.1 on every axis ({ref}); divided by the reference box, so 1 would be a single point best in "
            "everything.")
    return (f'<section id="hypervolume"><h2>Hypervolume</h2><p class="note">{esc(note)}</p>'
            f'{_figure_div("hypervolume")}</section>')


def _importance_section(data: ReportData, figs: dict) -> str:
    imp = data.importances
    body = _figure_div("importance") if "importance" in figs else ""
    note = f"<p class='note'>{esc(imp.note)}</p>" if imp.note else ""
    if not body and not note:
        note = "<p class='note'>no importances</p>"
    return f'<section id="importance"><h2>Knob importance</h2>{note}{body}</section>'


def _trials_section(data: ReportData) -> str:
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
            if v is None or (isinstance(v, float) and v != v):
                cells.append("<td data-v=''>-</td>")
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


def _points_section(data: ReportData) -> str:
    base = data.summary.get("baseline_metrics") or {}
    parts = []
    for p in data.front_points:
        title = "baseline (no compression)" if p["baseline"] else f"trial {p['number']}: {p['summary']}"
        policy = yaml.safe_dump(p["policy"], sort_keys=False) if p["policy"] else "-"
        proof = _kv_table((k, esc(_plain(k, v))) for k, v in _flatten(p["proof"]).items()) \
            if p["proof"] else "<p>-</p>"
        where = _kv_table((k, esc(v)) for k, v in p["measured_on"].items()) if p["measured_on"] else "<p>-</p>"
        timings = _kv_table((k, esc(f"{v:.3f}" if isinstance(v, float) else v)) for k, v in p["timings"].items()) \
            if p["timings"] else "<p>-</p>"
        history = _history_table(p["history"])
        location = data.summary.get("run_dir") or data.study_name
        export_hint = "" if p["baseline"] else (f"<p class='note'>export it: <code>autocompress export "
                                                 f"{esc(location)} --trial {p['number']}</code></p>")
        parts.append(
            f"<details id='point-{p['number']}'{' open' if len(data.front_points) <= 3 else ''}>"
            f"<summary>{esc(title)}</summary>"
            f"{export_hint}<div class='grid'><div><h3>Measured metrics vs baseline</h3>"
            f"{_metrics_table(p['metrics'], None if p['baseline'] else base)}</div>"
            f"<div><h3>Proof of compression</h3>{proof}<h3>Measured on</h3>{where}<h3>Timings (s)</h3>{timings}</div>"
            f"<div><h3>Policy</h3><pre>{esc(policy)}</pre></div></div>{history}</details>")
    body = "".join(parts) or "<p>no feasible complete trial yet</p>"
    return f'<section id="points"><h2>Front points</h2>{body}</section>'


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"quantization": {"mode": "x"}} -> {"quantization.mode": "x"}"""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _plain(key: str, v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return fmt(key.rsplit(".", 1)[-1], v)
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def _history_table(history: list[dict[str, Any]]) -> str:
    if not history:
        return ""
    cols = list(history[0])
    cell = lambda v: esc(f"{v:.4g}" if isinstance(v, float) else v)  # noqa: E731
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in cols) + "</tr>" for row in history)
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    return f"<h3>Fine-tuning history</h3><table><tr>{head}</tr>{body}</table>"


def _failures_section(data: ReportData) -> str:
    if not data.failures:
        return '<section id="failures"><h2>Failed and pruned trials</h2><p>none</p></section>'
    rows = "".join(f"<tr><td>{f['number']}</td><td class='t'>{esc(f['state'])}</td>"
                   f"<td class='t'>{esc(f['policy'])}</td><td class='t'>{esc(f['reason'])}</td></tr>"
                   for f in data.failures)
    return (f'<section id="failures"><h2>Failed and pruned trials</h2><table><tr><th>trial</th><th class="t">state</th>'
            f'<th class="t">policy</th><th class="t">reason</th></tr>{rows}</table></section>')


def render_html(data: ReportData) -> str:
    """The whole report as one HTML string."""
    from plotly.offline import get_plotlyjs

    figs = all_figures(data)
    fig_json = "{" + ",".join(f"{json.dumps(k)}:{pio.to_json(f, validate=False)}" for k, f in figs.items()) + "}"
    plotly_js = get_plotlyjs().replace("</script", "<\\/script")
    s = data.summary
    subtitle = f"{s.get('model')} on {s.get('data')} - objectives: {', '.join(s.get('objectives', []))}"
    return "".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>autocompress report: {esc(data.study_name)}</title><style>{CSS}</style>",
        f"<script>{ERROR_TRAP}</script><script>{plotly_js}</script></head><body>",
        f"<header><h1>Compression report: {esc(data.study_name)}</h1><p>{esc(subtitle)}</p></header>",
        "<nav><a href='#summary'>Study</a><a href='#front'>Pareto front</a><a href='#hypervolume'>Hypervolume</a>"
        "<a href='#importance'>Importance</a><a href='#trials'>Trials</a><a href='#points'>Front points</a>"
        "<a href='#failures'>Failures</a></nav><main><div id='js-errors' hidden></div>",
        _summary_section(data), _front_section(data, figs), _hv_section(data, figs),
        _importance_section(data, figs), _trials_section(data), _points_section(data), _failures_section(data),
        "</main>",
        f"<script type='application/json' id='figure-data'>{safe_json(fig_json)}</script>",
        f"<script>{RENDER}</script></body></html>",
    ])
