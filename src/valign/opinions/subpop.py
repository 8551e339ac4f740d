"""SubPOP-style files (Suh et al. 2025): one row per question and subpopulation, with its answer distribution.

SubPOP trains and evaluates language models on the answer distributions of many
subpopulations (``POLIDEOLOGY=Liberal``, ``AGE=65+``, …) over thousands of survey
questions. Its files, and files built the same way from any survey, are long tables
(CSV, JSON Lines or Parquet) with one row per (question, subpopulation):

========== ===========================================================================
qkey       the question's id (rows with the same qkey form one item)
question   the question text
options    the options in order (a list, or its Python/JSON repr)
attribute  the grouping variable (``POLIDEOLOGY``); ``all``/``overall``/empty = everyone
group      the subpopulation (``Liberal``)
responses  the shares per option, in the options' order (a list or its repr)
ordinal    optional: true/false, or each option's position (distinct positions = ordered)
n          optional: the group's respondents (else the size is unknown)
========== ===========================================================================

The groups become ``<attribute>=<group>`` keys (attribute lower-cased). The item's
overall distribution is the ``all`` row's where there is one, else pooled from the
groups (`valign.opinions.build.pooled`). Rows of one qkey must agree on the options.

Example:
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "sub.jsonl"
    >>> _ = f.write_text('{"qkey": "q1", "question": "Q?", "options": ["Yes", "No"], "attribute": "SEX", "group": "Female", "responses": [0.7, 0.3], "n": 60}\\n'
    ...                  '{"qkey": "q1", "question": "Q?", "options": ["Yes", "No"], "attribute": "SEX", "group": "Male", "responses": [0.4, 0.6], "n": 40}\\n')
    >>> item = load_subpop(f, None).items[0]
    >>> item.distribution, sorted(item.groups)
    ([0.58, 0.42], ['sex=Female', 'sex=Male'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from valign.errors import ValignError
from valign.opinions.build import MAX_OPTIONS, group_key, normalise, pooled
from valign.opinions.formats import Conversion, Format
from valign.opinions.tables import data_files, literal, read_table
from valign.survey.opinion import GroupDistribution, OpinionItem

__all__ = ["FORMAT", "load_subpop"]

COLUMNS = ("qkey", "question", "options", "attribute", "group", "responses")
EVERYONE = {"", "all", "overall", "everyone", "none", "nan"}


def load_subpop(path: Path, codebook: Path | None = None) -> Conversion:
    """Items from a SubPOP-style long table (or every table in a folder)."""
    files = [path] if path.is_file() else data_files(path)
    if not files:
        raise ValignError(f"{path} holds no .csv, .jsonl or .parquet file; give the SubPOP table itself.")
    questions: dict[str, dict[str, Any]] = {}
    for file in files:
        df = read_table(file)
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise ValignError(f"{file} lacks the column(s) {', '.join(missing)} of a SubPOP-style file ({', '.join(COLUMNS)}); rename them.")
        for i, row in enumerate(df.to_dict("records")):
            _add_row(questions, row, file, i + 2)
    out = Conversion([])
    for qkey, q in questions.items():
        if not 2 <= len(q["options"]) <= MAX_OPTIONS:
            out.skip(f"fewer than 2 or more than {MAX_OPTIONS} options")
            continue
        groups = {k: v for k, v in q["groups"].items() if v[0] is not None}
        for _ in range(len(q["groups"]) - len(groups)):
            out.skip("a group whose shares sum to 0")
        overall = q["everyone"]
        if overall is None and not groups:
            out.skip("no answers")
            continue
        options, ordinal = q["options"], q["ordinal"]
        order = list(range(len(options)))
        if isinstance(ordinal, list):
            order = sorted(order, key=lambda k: ordinal[k])
            ordinal = True

        def arrange(dist: list[float]) -> list[float]:
            return [dist[k] for k in order]

        out.items.append(OpinionItem(
            id=qkey, kind="opinion", question=q["question"], options=[options[k] for k in order], ordinal=bool(ordinal),
            distribution=arrange(overall[0] if overall is not None else pooled(groups)), n=(overall[1] or 0) if overall is not None else 0,
            groups={k: GroupDistribution(distribution=arrange(d), n=n) for k, (d, n) in groups.items()},  # type: ignore[arg-type]
        ))
    return out


def _add_row(questions: dict[str, dict[str, Any]], row: dict[str, Any], file: Path, line: int) -> None:
    qkey = str(row["qkey"]).strip()
    options = [str(o).strip() for o in literal(row["options"], "options", file, line)]
    shares = literal(row["responses"], "responses", file, line)
    if not isinstance(shares, (list, tuple)) or len(shares) != len(options):
        raise ValignError(f"{file} row {line}: 'responses' has {len(shares) if isinstance(shares, (list, tuple)) else 'no list of'} values for {len(options)} options; fix that row.")
    q = questions.setdefault(qkey, {"question": str(row["question"]).strip(), "options": options, "ordinal": _ordinal(row.get("ordinal"), options, file, line),
                                    "groups": {}, "everyone": None})
    if q["options"] != options:
        raise ValignError(f"{file} row {line}: question '{qkey}' lists options {options} but an earlier row {q['options']}; make them agree.")
    n = row.get("n")
    size = int(n) if n is not None and n == n else None  # NaN != NaN: a blank cell
    attribute = str(row["attribute"] if row["attribute"] is not None else "").strip()
    dist = normalise(shares)
    if attribute.lower() in EVERYONE:
        if dist is not None:
            q["everyone"] = (dist, size)
        return
    q["groups"][group_key(attribute.lower(), row["group"])] = (dist, size)


def _ordinal(value: Any, options: list[str], file: Path, line: int) -> bool | list[float]:
    if value is None or (isinstance(value, float) and value != value):
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    positions = literal(value, "ordinal", file, line)
    if isinstance(positions, list) and len(positions) == len(options) and len(set(positions)) == len(positions):
        return [float(p) for p in positions]
    return False


FORMAT = Format(
    name="subpop",
    about="SubPOP-style long tables (Suh et al. 2025): one row per question and subpopulation",
    load=load_subpop,
    download="the SubPOP release linked from Suh et al. 2025, or any table with the columns qkey, question, options, attribute, group, responses",
)
