"""Respondent-level survey files in the World Values Survey's layout, aggregated with their weights.

One row per respondent, one column per variable (WVS wave 7: ``Q1`` … ``Q290``,
``B_COUNTRY_ALPHA``, ``W_WEIGHT``, ``Q260`` sex, ``Q262`` age), as CSV, SPSS ``.sav`` or
Stata ``.dta`` — the forms the WVS and NZAVS distribute. SPSS and Stata files are read
with pyreadstat, which also gives their variable and value labels, so a codebook
(`valign.opinions.codebook`) need not repeat them; CSV is read with pandas.

For each question, with weights ``w`` and the respondents who answered it (a code that
is blank, negative — the WVS's −1 don't know, −2 no answer, −3 not applicable, −4 not
asked, −5 missing — or listed under ``missing`` is no answer), the share of option
``k`` is ``Σ w·[answer = k] / Σ w``: for everyone, for each country, and for each group
of each demographic variable; ``n`` is the number who answered. A group smaller than
``min_group_n`` gets no distribution. A positive code the options do not list is an
error (a codebook that forgot an option would otherwise bias every share).

Example (weights 1, 3 and 1; the −2 is no answer):
    >>> import pandas as pd
    >>> from valign.opinions.codebook import Codebook
    >>> df = pd.DataFrame({"Q1": [1, 2, 2, -2], "w": [1.0, 3.0, 1.0, 5.0]})
    >>> cb = Codebook(weight="w", min_group_n=1, questions={"Q1": {"text": "Q?", "options": {1: "Yes", 2: "No"}}})
    >>> aggregate(df, cb, {}, {}).items[0].distribution
    [0.2, 0.8]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from valign.errors import ValignError
from valign.opinions.build import MAX_OPTIONS, group_key
from valign.opinions.codebook import Codebook, Question, code_text, read_codebook
from valign.opinions.formats import Conversion, Format
from valign.survey.opinion import GroupDistribution, OpinionItem

__all__ = ["FORMAT", "load_respondents", "read_respondents", "aggregate"]

Labels = dict[str, dict[str, str]]


def load_respondents(path: Path, codebook: Path | None) -> Conversion:
    """Items from a respondent-level file and its codebook."""
    if codebook is None:
        raise ValignError("--format respondents needs --codebook: a YAML file naming the weight, country, group and question columns (docs/opinions.md).")
    cb = read_codebook(codebook)
    df, var_labels, value_labels = read_respondents(path)
    return aggregate(df, cb, var_labels, value_labels, source=path)


def read_respondents(path: Path) -> tuple[Any, dict[str, str], Labels]:
    """The table, its variable labels and its value labels (code text → label; empty for CSV)."""
    import pandas as pd

    if path.is_dir():
        raise ValignError(f"{path} is a folder; give the respondent file itself (.csv, .sav or .dta).")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            return pd.read_csv(path, low_memory=False), {}, {}
        except (ValueError, OSError) as e:
            raise ValignError(f"{path} could not be read as CSV ({str(e).splitlines()[0]}); check the file.") from None
    if suffix not in (".sav", ".zsav", ".dta"):
        raise ValignError(f"{path} is a {suffix or 'suffix-less'} file; give the respondents as .csv, .sav (SPSS) or .dta (Stata).")
    import pyreadstat

    reader = pyreadstat.read_dta if suffix == ".dta" else pyreadstat.read_sav
    try:
        df, meta = reader(str(path))
    except Exception as e:  # noqa: BLE001 — pyreadstat raises its own ReadstatError and OSError alike
        raise ValignError(f"{path} could not be read ({str(e).splitlines()[0] if str(e) else type(e).__name__}); check that it is a complete {suffix[1:]} file.") from None
    var_labels = {k: v for k, v in (meta.column_names_to_labels or {}).items() if v}
    value_labels = {var: {code_text(c): str(label) for c, label in labels.items()} for var, labels in (meta.variable_value_labels or {}).items()}
    return df, var_labels, value_labels


def aggregate(df: Any, cb: Codebook, var_labels: dict[str, str], value_labels: Labels, source: Path | str = "the file") -> Conversion:
    """Weighted distributions per question: everyone, per country, per group."""
    needed = [c for c in [cb.weight, cb.country, *(g.variable for g in cb.groups.values()), *cb.questions] if c]
    absent = [c for c in dict.fromkeys(needed) if c not in df.columns]
    if absent:
        raise ValignError(f"{source} has no column(s) {', '.join(absent[:8])}; fix the codebook's names (the file has e.g. {', '.join(map(str, list(df.columns)[:6]))}).")
    weights = _weights(df, cb.weight, source)
    missing = cb.missing_codes()
    variables = _group_labels(df, cb, value_labels, missing)
    out = Conversion([])
    for var, q in cb.questions.items():
        codes = _codes(df[var], missing)
        text, options = _question(var, q, var_labels, value_labels, missing)
        unknown = sorted(set(codes.dropna()) - set(options))
        if unknown:
            count = int(codes.isin(unknown).sum())
            raise ValignError(f"{source}: {var} has code(s) {', '.join(unknown[:5])} in {count} row(s) that its options do not list; "
                              f"add them to questions.{var}.options or to missing.")
        codes = codes.astype("category")  # grouping by categories is several times faster than by Python strings
        answered = codes.notna()
        if not answered.any() or float(weights[answered].sum()) <= 0:
            out.skip("nobody answered")
            continue
        overall = _shares(weights[answered].groupby(codes[answered], observed=True).sum(), options)
        groups = {}
        for name, (labels, order) in variables.items():
            sel = answered & labels.notna()
            # one pass per variable: the weight of every (group, option) and the respondents per group
            table = weights[sel].groupby([labels[sel], codes[sel]], observed=True).sum().unstack(fill_value=0.0)
            table = table.reindex(columns=list(options), fill_value=0.0)
            totals = dict(zip(table.index, table.sum(axis=1)))
            rows = dict(zip(table.index, table.to_numpy().tolist()))
            sizes = labels[sel].value_counts()
            for group in order:
                n = int(sizes.get(group, 0))
                if n < cb.min_group_n or totals.get(group, 0.0) <= 0:
                    continue
                groups[group_key(name, group)] = GroupDistribution(distribution=[round(x / totals[group], 9) for x in rows[group]], n=n)
        out.items.append(OpinionItem(id=var, kind=cb.kind, instructions=q.instructions, question=text, options=list(options.values()),
                                     codes=list(options), ordinal=q.ordinal, distribution=overall, n=int(answered.sum()), groups=groups))
    return out


def _codes(column: Any, missing: set[str]) -> Any:
    """The column as code text, None where it is no answer; each distinct value is read once (a WVS file has ~100k rows)."""
    lookup = {value: (None if _is_missing(value, missing) else code_text(value)) for value in column.dropna().unique()}
    return column.map(lookup).astype(object).where(column.notna(), None)


def _is_missing(value: Any, missing: set[str]) -> bool:
    if value is None or (isinstance(value, float) and value != value):
        return True
    text = code_text(value)
    if text == "" or text in missing:
        return True
    try:
        return float(text) < 0
    except ValueError:
        return False


def _weights(df: Any, column: str | None, source: Path | str) -> Any:
    import pandas as pd

    if column is None:
        return pd.Series(1.0, index=df.index)
    w = pd.to_numeric(df[column], errors="coerce")
    bad = w.isna() | (w < 0)
    if bad.any():
        raise ValignError(f"{source}: {int(bad.sum())} row(s) have no usable weight in {column} (blank, negative or not a number); fix or drop them.")
    return w.astype(float)


def _group_labels(df: Any, cb: Codebook, value_labels: Labels, missing: set[str]) -> dict[str, Any]:
    """Variable name → (each row's group label, None where in no group; the labels in order): country first, then the groups.

    Codes are labelled by the codebook, else by the file's value labels, else shown as
    they are; two codes with one label form one group. A number takes the first bin it
    falls in (bounds inclusive).
    """
    import pandas as pd

    out: dict[str, tuple[Any, list[str]]] = {}
    if cb.country:
        labels = value_labels.get(cb.country, {})
        country = _codes(df[cb.country], missing).map(lambda c: None if c is None else labels.get(c, c))
        out["country"] = (country, sorted(country.dropna().unique()))
    for name, g in cb.groups.items():
        if g.bins:
            numbers = pd.to_numeric(df[g.variable], errors="coerce")
            binned = pd.Series(None, index=df.index, dtype=object)
            for label, (lo, hi) in reversed(list(g.bins.items())):  # reversed: the first matching bin is written last
                binned[(numbers >= lo) & (numbers <= hi)] = label
            out[name] = (binned, list(g.bins))
            continue
        labels = {**value_labels.get(g.variable, {}), **g.labels}
        codes = _codes(df[g.variable], missing)
        order = [labels.get(c, c) for c in sorted(codes.dropna().unique(), key=_sort_key)]  # in code order: 1 Male, 2 Female
        out[name] = (codes.map(lambda c: None if c is None else labels.get(c, c)), list(dict.fromkeys(order)))
    return {name: (labels.astype("category"), order) for name, (labels, order) in out.items()}


def _shares(weights_by_code: Any, options: dict[str, str]) -> list[float]:
    total = float(weights_by_code.sum())
    return [round(float(weights_by_code.get(code, 0.0)) / total, 9) for code in options]


def _question(var: str, q: Question, var_labels: dict[str, str], value_labels: Labels, missing: set[str]) -> tuple[str, dict[str, str]]:
    text = q.text or var_labels.get(var)
    if not text:
        raise ValignError(f"question {var} has no text: the file carries no label for it; add questions.{var}.text to the codebook.")
    options = q.options or {c: label for c, label in sorted(value_labels.get(var, {}).items(), key=lambda kv: _sort_key(kv[0]))
                            if not _is_missing(c, missing)}
    if len(options) < 2:
        raise ValignError(f"question {var} has {len(options)} option(s): the file labels none; add questions.{var}.options (code: label, in order) to the codebook.")
    if len(options) > MAX_OPTIONS:
        raise ValignError(f"question {var} has {len(options)} options; an item takes at most {MAX_OPTIONS} (one letter each): merge some in the codebook.")
    return text, options


def _sort_key(code: str) -> tuple[int, float, str]:
    try:
        return (0, float(code), code)
    except ValueError:
        return (1, 0.0, code)


FORMAT = Format(
    name="respondents",
    about="respondent-level survey files in the World Values Survey's layout (CSV, SPSS .sav, Stata .dta) with weights and a codebook",
    load=load_respondents,
    download="https://www.worldvaluessurvey.org/WVSDocumentationWV7.jsp (registration required) or your own survey's file",
    codebook=True,
)
