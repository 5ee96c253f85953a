"""Readers of labelled text: ``.csv``, ``.tsv`` and ``.jsonl`` tables, and directories written by
``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. Each gives the texts (one
string, or a pair of strings, per row) and the labels as strings; ``zoo.text`` maps labels to
class indices and texts to token ids.

``datasets`` (and pyarrow under it) is imported only for a saved data set directory.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

Texts = list[str] | list[tuple[str, str]]
FORMATS = ("auto", "csv", "tsv", "jsonl", "datasets")


def table_format(path: Path, format: str = "auto") -> str:
    """csv, tsv, jsonl or datasets: ``format`` where given, else from the suffix (a directory is a
    saved data set)."""
    if format not in FORMATS:
        raise ValueError(f"unknown text format '{format}' (choose from: {', '.join(FORMATS)})")
    if format != "auto":
        return format
    if path.is_dir():
        return "datasets"
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("csv", "tsv", "jsonl"):
        return suffix
    if suffix == "json":
        return "jsonl"
    raise ValueError(f"cannot tell the format of '{path}' from its suffix (give format: csv, tsv or jsonl)")


def read_table(path: str | Path, text_fields: list[str], label_field: str, format: str = "auto",
               ) -> tuple[Texts, list[str]]:
    """The texts (a pair per row where ``text_fields`` names two columns) and the labels (as
    strings) of a ``.csv``, ``.tsv`` or ``.jsonl`` file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"text file '{path}' does not exist")
    kind = table_format(path, format)
    if kind == "datasets":
        raise ValueError(f"'{path}' is a file, not a save_to_disk directory")
    with path.open(encoding="utf-8", newline="") as f:
        if kind == "jsonl":
            rows = [_json_row(line, path, i) for i, line in enumerate(f, 1) if line.strip()]
            columns = list(dict.fromkeys(k for row in rows for k in row))
        else:
            reader = csv.DictReader(f, delimiter="\t" if kind == "tsv" else ",")
            rows, columns = list(reader), list(reader.fieldnames or [])
    if not rows:
        raise ValueError(f"text file '{path}' is empty (no rows)")
    return _columns(rows, columns, text_fields, label_field, str(path))


def read_saved_dataset(path: str | Path, split: str, text_fields: list[str], label_field: str,
                       ) -> tuple[Texts, list[str]] | None:
    """The ``split`` of a ``save_to_disk`` directory; None where a DatasetDict has no such split
    (a single saved Dataset is the train split)."""
    try:
        from datasets import Dataset, load_from_disk
    except ImportError:
        raise ValueError("reading a saved data set needs the 'datasets' package (pip install datasets)") from None
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"saved data set directory '{path}' does not exist")
    try:
        data: Any = load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise ValueError(f"'{path}' is not a directory written by save_to_disk: {exc}") from None
    if isinstance(data, Dataset):
        if split != "train":
            return None
    elif split not in data:
        return None
    else:
        data = data[split]
    where = f"{path} [{split}]"
    if not len(data):
        raise ValueError(f"saved data set '{where}' is empty (no rows)")
    _check_columns(list(data.column_names), text_fields, label_field, where)
    names = getattr(data.features.get(label_field), "names", None)  # a ClassLabel column: its names
    labels = [names[v] if names else v for v in data[label_field]]
    rows = [dict(zip(text_fields, values)) for values in zip(*(data[f] for f in text_fields))]
    for row, label in zip(rows, labels):
        row[label_field] = label
    return _columns(rows, list(data.column_names), text_fields, label_field, where)


def _json_row(line: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {number} is not JSON: {exc}") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}: line {number} is not a JSON object")
    return row


def _check_columns(columns: list[str], text_fields: list[str], label_field: str, where: str) -> None:
    for field in [*text_fields, label_field]:
        if field not in columns:
            raise ValueError(f"'{where}' has no column '{field}' (its columns: {', '.join(columns) or 'none'})")


def _columns(rows: list[dict], columns: list[str], text_fields: list[str], label_field: str,
             where: str) -> tuple[Texts, list[str]]:
    _check_columns(columns, text_fields, label_field, where)
    labels = []
    for i, row in enumerate(rows, 1):
        label = row.get(label_field)
        if label is None or str(label).strip() == "":
            raise ValueError(f"'{where}': row {i} has no value in column '{label_field}'")
        labels.append(_label_text(label))
    cells = [[_text(row.get(f)) for f in text_fields] for row in rows]
    texts: Texts = [c[0] for c in cells] if len(text_fields) == 1 else [(c[0], c[1]) for c in cells]
    return texts, labels


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():  # 1.0 from a JSON writer is the class 1
        return str(int(value))
    return str(value).strip()
