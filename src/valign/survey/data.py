"""``valign survey data``: the respondent-level data as CSV, JSON or SPSS ``.sav``, one
row per respondent (also what the admin's ``/admin/export.*`` downloads serve).

The wide table holds the respondent id (an opaque number, not a token), the
demographics (named by their margin variable), ``completed``, ``screened_out``, ``synthetic``, ``language``, the
timestamps and active seconds, the quality columns, ``weight`` when weighting has
run, then one column per question in instrument order (the chosen option code;
``<id>_strength`` for scenario choices), answers to approved proposals (``prop-<n>``)
and the respondent's own ``proposal`` text (in CSV and SPSS, text a spreadsheet would
run as a formula starts with a quote: `valign.survey.cells`). Nothing else: no IP addresses, user
agents, cookies, resume or invitation tokens — the database does not hold them either,
except as one-way hashes that no export reads.

By default respondents whose quality checks say ``exclude`` are left out (their flags
stay visible with ``include_excluded=True``).

In the ``.sav`` file every question is numeric — its option's position (a Likert
item's point) — with the option labels as value labels and the question text as the
variable label; yes/no columns are 0/1 with labels; names are made SPSS-safe
(``v-care-1`` → ``v_care_1``).

Example (a survey database, e.g. ``sqlite:///survey.db``)::

    frames = add_quality(load_frames("sqlite:///survey.db", load_instrument("demo")))
    write_export(frames, "responses.sav")
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from valign.errors import ValignError
from valign.survey.cells import neutralise_cell, neutralise_table
from valign.survey.db import PROPOSAL_ITEM
from valign.survey.frames import QUALITY_COLUMNS, RESPONDENT_COLUMNS, SurveyFrames

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["wide_table", "to_csv", "to_json", "to_sav", "write_export", "export_bytes", "spss_names", "ExportFormat"]

ExportFormat = Literal["csv", "json", "sav"]
_BOOL_COLUMNS = ["completed", "screened_out", "synthetic", "flag_attention", "flag_straightlining", "flag_speeding", "flag_social_desirability", "exclude"]
_SPSS_RESERVED = {"ALL", "AND", "BY", "EQ", "GE", "GT", "LE", "LT", "NE", "NOT", "OR", "TO", "WITH"}


def _item_columns(frames: SurveyFrames) -> list[str]:
    cols: list[str] = []
    for item in frames.instrument.items():
        if item.kind == "demographic":
            continue
        cols.append(item.id)
        if item.kind == "scenario":
            cols.append(f"{item.id}_strength")
    answered = set(frames.answers["item_id"]) if len(frames.answers) else set()
    # Approved proposals are in the instrument when it was loaded with them; otherwise
    # they are found in the answers.
    props = sorted((i for i in answered if re.fullmatch(r"prop-\d+", str(i)) and i not in cols), key=lambda i: int(i.split("-")[1]))
    cols += props
    if frames.instrument.principles is not None and frames.instrument.principles.allow_proposals:
        cols.append(PROPOSAL_ITEM)
    return cols


def wide_table(frames: SurveyFrames, *, include_excluded: bool = False, completed_only: bool = False, synthetic: bool = True) -> "pd.DataFrame":
    """One row per respondent: demographics, meta, quality, (weight), answers.

    Example:
        >>> from valign.survey.frames import SurveyFrames
        >>> from valign.survey.instrument import load_instrument
        >>> from valign.survey.quality import add_quality
        >>> frames = add_quality(SurveyFrames.empty(load_instrument("demo")))
        >>> wide_table(frames).columns[:4].tolist()
        ['respondent_id', 'age_group', 'sex', 'education']
    """
    import pandas as pd

    from valign.survey.quality import add_quality

    if "exclude" not in frames.respondents.columns:
        frames = add_quality(frames)
    resp = frames.respondents
    if "screened_out" not in resp.columns:  # frames built by hand before quotas existed: nobody was screened out
        resp = resp.assign(screened_out=False)
    if "language" not in resp.columns:  # frames built by hand before languages existed: all in the base language
        resp = resp.assign(language=frames.instrument.language)
    meta = frames.margins + RESPONDENT_COLUMNS + QUALITY_COLUMNS + (["weight"] if "weight" in resp.columns else [])
    table = resp[meta].copy()
    a = frames.answers
    items = _item_columns(frames)
    if len(a):
        choices = a[a["item_id"] != PROPOSAL_ITEM].pivot_table(index="respondent_id", columns="item_id", values="choice", aggfunc="last")
        strengths = a[a["strength"].notna()].pivot_table(index="respondent_id", columns="item_id", values="strength", aggfunc="last")
        strengths.columns = [f"{c}_strength" for c in strengths.columns]
        texts = a[a["item_id"] == PROPOSAL_ITEM].set_index("respondent_id")["text"].rename(PROPOSAL_ITEM)
        answers = pd.concat([choices, strengths, texts], axis=1)
    else:
        answers = pd.DataFrame(index=resp.index)
    demographic_ids = {q.id for q in frames.instrument.demographics}
    answers = answers.drop(columns=[c for c in answers.columns if c in demographic_ids])
    answers = answers.reindex(index=resp.index, columns=items)
    for col in items:
        if col.endswith("_strength"):
            answers[col] = answers[col].astype("Int64")
        else:
            answers[col] = answers[col].astype(object).where(answers[col].notna(), None)
    table = pd.concat([table, answers], axis=1)
    if not include_excluded:
        table = table[~table["exclude"].astype(bool)]
    if completed_only:
        table = table[table["completed"].astype(bool)]
    if not synthetic:
        table = table[~table["synthetic"].astype(bool)]
    table.index.name = "respondent_id"
    return table.reset_index()


def to_csv(table: "pd.DataFrame") -> bytes:
    """The wide table as UTF-8 CSV (timestamps in ISO 8601, UTC), text that a spreadsheet
    would run as a formula quoted (`valign.survey.cells`).

    Example::

        Path("responses.csv").write_bytes(to_csv(wide_table(frames)))
    """
    return neutralise_table(table).to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%SZ").encode("utf-8")


def to_json(table: "pd.DataFrame") -> bytes:
    """The wide table as a JSON list of objects (missing values are null).

    Example::

        json.loads(to_json(wide_table(frames)))[0]["completed"]   # True or False
    """
    records = json.loads(table.to_json(orient="records", date_format="iso", date_unit="s"))
    return json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8")


def spss_names(columns: list[str]) -> dict[str, str]:
    """SPSS-safe, unique variable names: letters, digits and ``_``, ≤ 64 bytes, no reserved word.

    Example:
        >>> spss_names(["v-care-1", "18+", "by"])
        {'v-care-1': 'v_care_1', '18+': 'v18_', 'by': 'by_'}
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for col in columns:
        name = re.sub(r"[^A-Za-z0-9_]", "_", str(col))
        if not name or not name[0].isalpha():
            name = "v" + name
        if name.upper() in _SPSS_RESERVED:
            name += "_"
        name = name[:64]
        base, k = name, 1
        while name.lower() in used:
            k += 1
            name = f"{base[: 60]}_{k}"
        used.add(name.lower())
        out[col] = name
    return out


def to_sav(frames: SurveyFrames, table: "pd.DataFrame", path: str | Path) -> None:
    """Write the wide table as an SPSS file with variable and value labels (pyreadstat);
    text cells and labels that a spreadsheet would run as a formula are quoted
    (`valign.survey.cells`), as in the CSV.

    Example::

        to_sav(frames, wide_table(frames), "responses.sav")
    """
    import pandas as pd
    import pyreadstat

    inst = frames.instrument
    df = table.copy()
    labels: dict[str, str] = {"respondent_id": "Respondent (opaque id)", "completed": "Finished the survey", "screened_out": "Screened out by a full quota cell", "synthetic": "Synthetic respondent (valign survey simulate)", "language": "Language the survey was shown in",
                              "started_at": "Consent given (UTC)", "finished_at": "Finished (UTC)", "seconds": "Active seconds on question pages",
                              "flag_attention": "Failed an attention check", "flag_straightlining": "Straight-lining", "flag_speeding": "Speeding",
                              "flag_social_desirability": "High social desirability", "sd_score": "Social desirability score (share keyed)",
                              "exclude": "Excluded by quality checks", "quality_factor": "Quality weight factor", "weight": "Survey weight",
                              PROPOSAL_ITEM: "Proposed principle (text)"}
    value_labels: dict[str, dict[float, str]] = {}
    measure: dict[str, str] = {}
    yes_no = {0.0: "No", 1.0: "Yes"}
    for col in _BOOL_COLUMNS:
        if col in df:
            df[col] = df[col].astype(float)
            value_labels[col] = yes_no
            measure[col] = "nominal"
    for col in ("started_at", "finished_at"):
        if col in df:
            df[col] = pd.to_datetime(df[col], utc=True).dt.tz_localize(None)
    questions = {q.margin: (q.text, list(q.options), False) for q in inst.demographics}
    questions.update({i.id: (i.text, list(i.options), i.ordinal) for i in inst.items() if i.kind != "demographic"})
    for col in df.columns:
        if col in questions:
            text, options, ordinal = questions[col]
            codes = {o.code: float(k) for k, o in enumerate(options, 1)}
            df[col] = df[col].map(codes).astype(float)
            labels[col] = text
            value_labels[col] = {codes[o.code]: o.label for o in options}
            measure[col] = "ordinal" if ordinal else "nominal"
        elif col.startswith("prop-") or col.endswith("_strength"):
            if col.startswith("prop-"):
                codes = {"agree": 1.0, "disagree": 2.0, "pass": 3.0}
                df[col] = df[col].map(codes).astype(float)
                value_labels[col] = {1.0: "Agree", 2.0: "Disagree", 3.0: "Pass / unsure"}
                labels[col] = f"Approved proposal {col}"
                measure[col] = "nominal"
            else:
                df[col] = df[col].astype(float)
                strengths = inst.scenarios.strength_labels if inst.scenarios else []
                value_labels[col] = {float(k): s for k, s in enumerate(strengths, 1)}
                labels[col] = f"How much better the chosen answer is ({col[: -len('_strength')]})"
                measure[col] = "ordinal"
    for col in df.columns:
        if df[col].dtype == object or str(df[col].dtype).startswith(("str", "string")):
            df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    names = spss_names(list(df.columns))
    df = neutralise_table(df).rename(columns=names)
    pyreadstat.write_sav(
        df,
        str(path),
        column_labels={names[c]: neutralise_cell(labels.get(c, c)[:250]) for c in names},
        variable_value_labels={names[c]: {k: neutralise_cell(t) for k, t in v.items()} for c, v in value_labels.items() if c in names},
        variable_measure={names[c]: m for c, m in measure.items() if c in names},
    )


def write_export(frames: SurveyFrames, path: str | Path, fmt: ExportFormat | None = None, **filters: bool) -> int:
    """Write the wide table to ``path`` (format from the suffix unless ``fmt``); returns the rows.

    Example (returns how many respondents it wrote)::

        write_export(frames, "responses.csv", completed_only=True)
    """
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()  # type: ignore[assignment]
    if fmt not in ("csv", "json", "sav"):
        raise ValignError(f"cannot export to '{path.name}': use a .csv, .json or .sav file name (or --format).")
    table = wide_table(frames, **filters)
    if fmt == "sav":
        to_sav(frames, table, path)
    else:
        path.write_bytes(to_csv(table) if fmt == "csv" else to_json(table))
    return len(table)


def export_bytes(frames: SurveyFrames, fmt: ExportFormat, **filters: bool) -> bytes:
    """The export as bytes (for HTTP downloads).

    Example (an SPSS file starts ``$FL2``)::

        export_bytes(frames, "sav", include_excluded=True)[:4]
    """
    import os
    import tempfile

    table = wide_table(frames, **filters)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "json":
        return to_json(table)
    fd, name = tempfile.mkstemp(suffix=".sav")
    os.close(fd)
    try:
        to_sav(frames, table, name)
        return Path(name).read_bytes()
    finally:
        os.unlink(name)

