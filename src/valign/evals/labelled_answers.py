"""Labelled answers for measuring a refusal classifier: read from a CSV or JSONL file.

Any table of answers with a label column will do: valign's own examples (the default,
``valign/data/refusal/labelled.jsonl``), XSTest's human-labelled completions (columns
``prompt``, ``completion``, ``final_label`` with ``1_full_compliance``,
``2_full_refusal``, ``3_partial_refusal``), or a file of your own. Columns are found by
name (`TEXT_COLUMNS`, `PROMPT_COLUMNS`, `LABEL_COLUMNS`, first present wins) unless
named; the label values that mean *refusal* are `DEFAULT_REFUSAL_LABELS` unless given.
When every label is one of XSTest's three classes (`THREE_CLASS`), the set is
three-class as well.

Example:
    >>> data = load_labelled()
    >>> data.three_class, data.columns["label"], len(data.rows) > 100
    (True, 'label', True)
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from valign.errors import ValignError
from valign.evals.classifiers.base import Label

__all__ = [
    "LabelledAnswer", "LabelledSet", "load_labelled", "SHIPPED", "TEXT_COLUMNS", "PROMPT_COLUMNS", "LABEL_COLUMNS",
    "DEFAULT_REFUSAL_LABELS", "THREE_CLASS",
]

SHIPPED = "valign/data/refusal/labelled.jsonl"
TEXT_COLUMNS = ("text", "answer", "completion", "response", "output")
PROMPT_COLUMNS = ("prompt", "question")
# XSTest's completion files also have a ``label`` column (the prompt's safe/unsafe
# type), so its human label, ``final_label``, is looked for first.
LABEL_COLUMNS = ("final_label", "label", "refusal_label", "refusal")
DEFAULT_REFUSAL_LABELS = ("full_refusal", "partial_refusal", "2_full_refusal", "3_partial_refusal", "refusal", "refused", "true", "1", "yes")
# Label values that name one of XSTest's classes (lower-cased).
THREE_CLASS: dict[str, Label] = {
    "compliance": "compliance", "full_compliance": "compliance", "1_full_compliance": "compliance",
    "full_refusal": "full_refusal", "2_full_refusal": "full_refusal",
    "partial_refusal": "partial_refusal", "3_partial_refusal": "partial_refusal",
}


@dataclass(frozen=True)
class LabelledAnswer:
    """One answer with its label: ``refusal`` (binary) and, for three-class sets, ``label``."""

    prompt: str
    text: str
    raw_label: str
    refusal: bool
    label: Label | None = None


@dataclass(frozen=True)
class LabelledSet:
    """The answers, where they came from, and which columns and labels were read."""

    source: str
    rows: list[LabelledAnswer]
    columns: dict[str, str | None]
    refusal_labels: tuple[str, ...]
    three_class: bool
    meta: dict[str, Any] = field(default_factory=dict)


def _label_text(value: Any) -> str:
    # JSON booleans and numbers become the strings a CSV would hold ("true", "1").
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value).strip().lower()


def _read_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix in (".csv", ".tsv"):
        return list(csv.DictReader(text.splitlines(keepends=True), delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValignError(f"{path}: a .json file must hold a list of objects, one per answer; or write it as JSONL.")
        return data
    if suffix in (".jsonl", ".ndjson"):
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValignError(f"{path}, line {n}: not valid JSON ({e.msg}); write one JSON object per line.") from None
            if not isinstance(record, dict):
                raise ValignError(f"{path}, line {n}: expected a JSON object with text and label fields.")
            records.append(record)
        return records
    raise ValignError(f"{path}: unknown file type {suffix or '(none)'}; give a .csv, .tsv, .jsonl or .json file.")


def _column(kind: str, given: str | None, candidates: Sequence[str], present: Sequence[str], source: str, option: str) -> str | None:
    if given is not None:
        if given not in present:
            raise ValignError(f"{source} has no {kind} column {given!r}; its columns are {', '.join(present)}.")
        return given
    found = next((c for c in candidates if c in present), None)
    if found is None and kind != "prompt":
        raise ValignError(f"{source} has none of the {kind} columns valign looks for ({', '.join(candidates)}); "
                          f"its columns are {', '.join(present)}: name one with {option}.")
    return found


def load_labelled(
    path: Path | str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    prompt_column: str | None = None,
    refusal_labels: Sequence[str] | None = None,
) -> LabelledSet:
    """Read labelled answers (the shipped examples when ``path`` is None).

    Example:
        >>> load_labelled("nowhere.csv")
        Traceback (most recent call last):
        ...
        valign.errors.ValignError: nowhere.csv: no such file; give the path of a CSV or JSONL file of labelled answers.
    """
    if path is None:
        source = SHIPPED
        records = [json.loads(line) for line in (resources.files("valign") / "data" / "refusal" / "labelled.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ValignError(f"{path}: no such file; give the path of a CSV or JSONL file of labelled answers.")
        records = _read_records(path)
    if not records:
        raise ValignError(f"{source} holds no answers; it needs a header (or JSON fields) and one row per answer.")
    present = list(dict.fromkeys(k for r in records for k in r))
    text_col = _column("text", text_column, TEXT_COLUMNS, present, source, "--text-column")
    label_col = _column("label", label_column, LABEL_COLUMNS, present, source, "--label-column")
    prompt_col = _column("prompt", prompt_column, PROMPT_COLUMNS, present, source, "--prompt-column")
    positive = tuple(_label_text(v) for v in (refusal_labels or DEFAULT_REFUSAL_LABELS))
    raw = [_label_text(r.get(label_col)) for r in records]
    three_class = all(v in THREE_CLASS for v in raw)
    rows = [
        LabelledAnswer(
            prompt=str(r.get(prompt_col) or "") if prompt_col else "",
            text=str(r.get(text_col) or ""),
            raw_label=v,
            refusal=v in positive,
            label=THREE_CLASS[v] if three_class else None,
        )
        for r, v in zip(records, raw)
    ]
    if not any(a.refusal for a in rows):
        values = ", ".join(sorted(set(raw))[:12]) or "(all empty)"
        raise ValignError(f"{source}: no row's {label_col!r} is a refusal label ({', '.join(positive)}); "
                          f"the values there are {values}: say which mean refusal with --refusal-labels.")
    return LabelledSet(source, rows, {"text": text_col, "label": label_col, "prompt": prompt_col}, positive, three_class)
