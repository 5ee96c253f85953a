"""Study results as data first (trials frame, Pareto front), rendered second (tables, HTML).

``write_report(results)`` writes ``runs/<name>/report.html`` (one self-contained file) and,
on request, the trials table as CSV / Parquet.
"""

from __future__ import annotations

from pathlib import Path

from autocompress.errors import AutocompressError
from autocompress.report.data import report_data
from autocompress.report.html import render_html
from autocompress.utils import atomic_write_text

REPORT_FILE = "report.html"


def write_report(results, *, out: Path | None = None, csv: Path | None = None,
                 parquet: Path | None = None) -> Path:
    """Compute the report data of ``results`` (``autocompress.search.results.load_results``), write
    the HTML (default ``<run dir>/report.html``) and the optional tables; returns the HTML path.

    Example:
        >>> from autocompress.search.results import load_results
        >>> write_report(load_results("digits-cnn"))  # doctest: +SKIP
    """
    if out is None:
        if results.run_dir is None:
            raise AutocompressError("the study has no local run directory: pass --out report.html")
        out = results.run_dir / REPORT_FILE
    data = report_data(results.study, results.spec, run_dir=results.run_dir)
    atomic_write_text(Path(out), render_html(data))
    if csv is not None:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        data.trials.to_csv(csv, index=False)
    if parquet is not None:
        Path(parquet).parent.mkdir(parents=True, exist_ok=True)
        try:
            _parquet_safe(data.trials).to_parquet(parquet, index=False)
        except ImportError as exc:
            raise AutocompressError(f"--parquet needs pyarrow (pip install pyarrow): {str(exc).splitlines()[0]}") from None
    return Path(out)


def _parquet_safe(frame):
    """Knob columns can mix types across trials (conditional knobs): store those as text."""
    frame = frame.copy()
    for col in frame.columns:
        kinds = {type(v) for v in frame[col] if v is not None and v == v}
        if len(kinds) > 1 and not kinds <= {int, float}:
            frame[col] = frame[col].map(lambda v: None if v is None or v != v else str(v))
    return frame
