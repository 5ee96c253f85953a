"""Render a ``ReportData`` as one self-contained HTML file (plotly.js inlined once, no CDN,
no network: a Content-Security-Policy forbids fetching anything).

Every user string goes through ``html.escape``; figure JSON sits in a non-executed
``application/json`` block with ``<``, ``>`` and ``&`` written as ``\\u00XX`` escapes, so no
string from the study can close a tag or open a script.

The page is put together here; the sections are built in ``sections``, the tables and the
formatting of values (``esc``, ``fmt``) in ``tables``.
"""

from __future__ import annotations

import json
from typing import Any

import plotly.io as pio
from plotly.offline import get_plotlyjs

from autocompress.report.data import ReportData
from autocompress.report.figures import all_figures
from autocompress.report.sensitivity import sensitivity_section
from autocompress.report.sections import (failures_section, front_section, hv_section, importance_section,
                                          points_section, summary_section, trials_section)
from autocompress.report.tables import esc, fmt

# fmt is not used here: it is re-exported for ``autocompress.bundle.export``.
__all__ = ["CSP", "CSS", "ERROR_TRAP", "RENDER", "esc", "fmt", "render_html", "safe_json"]

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


def safe_json(obj: Any) -> str:
    """JSON that cannot end the element it is embedded in."""
    text = obj if isinstance(obj, str) else json.dumps(obj, default=str)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_html(data: ReportData) -> str:
    """The whole report as one HTML string."""
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
        "<a href='#importance'>Importance</a><a href='#sensitivity'>Sensitivity</a><a href='#trials'>Trials</a><a href='#points'>Front points</a>"
        "<a href='#failures'>Failures</a></nav><main><div id='js-errors' hidden></div>",
        summary_section(data), front_section(data, figs), hv_section(data, figs),
        importance_section(data, figs), sensitivity_section(data.sensitivity, figs), trials_section(data), points_section(data), failures_section(data),
        "</main>",
        f"<script type='application/json' id='figure-data'>{safe_json(fig_json)}</script>",
        f"<script>{RENDER}</script></body></html>",
    ])
