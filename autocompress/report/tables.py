"""Value formatting and the small HTML tables the report sections are built from.

Every user string goes through ``esc`` (``html.escape`` with quotes) before it reaches the page.
"""

from __future__ import annotations

import html
import json
from typing import Any, Iterable

from autocompress.metrics.registry import change, format_value
from autocompress.report.data import UNITS
from autocompress.report.figures import label


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(metric: str, v: Any) -> str:
    """A measured number as text, with the precision its unit deserves (the metric registry)."""
    return format_value(metric, v)


def kv_table(items: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table; the keys are escaped, the values must be HTML already."""
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


def metrics_table(metrics: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """Metrics in ``UNITS`` order, with the baseline value and the change when one is given."""
    names = [m for m in UNITS if m in metrics] + [m for m in metrics if m not in UNITS]
    extra = "<th>baseline</th><th>change</th>" if baseline else ""
    head = f"<tr><th class='t'>metric</th><th>value</th>{extra}</tr>"
    rows = []
    for m in names:
        v = metrics.get(m)
        cells = f"<td class='t'>{esc(label(m))}</td><td>{esc(fmt(m, v))}</td>"
        if baseline:
            b = baseline.get(m)
            cells += f"<td>{esc(fmt(m, b))}</td><td>{_change(m, v, b, metrics)}</td>"
        rows.append(f"<tr>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _change(metric: str, v: Any, b: Any, metrics: dict[str, Any]) -> str:
    compared = change(metric, v, b, metrics)
    if compared is None:
        return ""
    text, good = compared
    return f"<span class='{'good' if good else 'bad'}'>{esc(text)}</span>"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"quantization": {"mode": "x"}} -> {"quantization.mode": "x"}"""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plain(key: str, v: Any) -> str:
    """A (flattened) proof value as text: numbers by the unit of the key's last part."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return fmt(key.rsplit(".", 1)[-1], v)
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def history_table(history: list[dict[str, Any]]) -> str:
    """The fine-tuning history (one row per epoch), or nothing when there is none."""
    if not history:
        return ""
    cols = list(history[0])
    cell = lambda v: esc(f"{v:.4g}" if isinstance(v, float) else v)  # noqa: E731
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in cols) + "</tr>" for row in history)
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    return f"<h3>Fine-tuning history</h3><table><tr>{head}</tr>{body}</table>"
