"""Reading the files published opinion data sets come in, and the Python reprs inside them.

Published sets are CSV, JSON Lines or Parquet tables, often with Python reprs in
their cells (GlobalOpinionQA's ``options`` is ``"['Yes', 'No']"``, its
``selections`` a ``defaultdict`` repr). pandas reads the tables (pyarrow for
Parquet); ``ast.literal_eval`` reads the reprs — it evaluates literals only, never
code. A cell that does not parse is one `ValignError` naming the file, row and column.

Example:
    >>> literal("defaultdict(<class 'list'>, {'Japan': [0.25, 0.75]})", "selections", "f.csv", 3)
    {'Japan': [0.25, 0.75]}
    >>> literal("['Yes', 'No']", "options", "f.csv", 3)
    ['Yes', 'No']
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from valign.errors import ValignError

__all__ = ["TABLE_SUFFIXES", "read_table", "literal", "data_files"]

TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")

# GlobalOpinionQA stores each row's answers as the repr of a collections.defaultdict.
_DEFAULTDICT = re.compile(r"^\s*defaultdict\(\s*<class '[A-Za-z_]+'>\s*,\s*(.*)\)\s*$", re.DOTALL)


def read_table(path: Path) -> Any:
    """A pandas DataFrame of a CSV, JSON Lines (or JSON records) or Parquet file."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            return pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, OSError) as e:
        raise ValignError(f"{path} could not be read as {suffix[1:]} ({str(e).splitlines()[0]}); check that the file is complete.") from None
    raise ValignError(f"{path} is a {suffix or 'suffix-less'} file; give a {', '.join(TABLE_SUFFIXES)} file.")


def literal(value: Any, column: str, path: Path | str, row: int) -> Any:
    """A cell holding a Python or JSON literal (or a ``defaultdict`` repr), parsed; lists and dicts pass through."""
    if isinstance(value, (list, dict)):
        return value
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        return value.tolist()
    if not isinstance(value, str):
        raise ValignError(f"{path} row {row}: column '{column}' is empty or not text ({value!r}); each row needs one.")
    text = value
    match = _DEFAULTDICT.match(text)
    if match:
        text = match.group(1)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValignError(f"{path} row {row}: column '{column}' is not a Python or JSON literal ({value[:60]!r}); fix that cell.") from None


def data_files(folder: Path) -> list[Path]:
    """The table files under a folder (a dataset snapshot), in name order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES and not p.name.startswith("."))
