"""GlobalOpinionQA (Durmus et al. 2023): cross-national survey questions with each country's answers.

The published table (hub id ``Anthropic/llm_global_opinions``; CSV or Parquet) has one
row per question with the columns ``question``, ``options`` (the repr of a Python list),
``selections`` (the repr of a ``defaultdict(<class 'list'>, {country: [share per
option], …})``) and ``source`` (``GAS`` for Pew's Global Attitudes Survey, ``WVS`` for
the World Values Survey). Each row becomes one item with a group ``country=<name>`` per
country; the countries' sizes are not published, so their ``n`` is None, and the item's
overall distribution is the mean of the countries asked (`valign.opinions.build.pooled`).
The options are treated as unordered — GlobalOpinionQA's own similarity is
1 − Jensen–Shannon distance — so ``fidelity`` scores them with the JS distance.

Rows whose options exceed 26 (one letter each) and countries whose shares sum to 0 are
left out and counted; a row whose cells do not parse, or whose shares do not match its
options, is an error naming the row.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "goqa.csv").write_text('question,selections,options,source\\n"Is it good?","defaultdict(<class \\'list\\'>, {\\'Japan\\': [0.2, 0.8], \\'Peru\\': [0.6, 0.4]})","[\\'Yes\\', \\'No\\']",GAS\\n')
    >>> item = load_globalopinionqa(folder / "goqa.csv", None).items[0]
    >>> item.id, item.options, item.groups["country=Peru"].distribution, item.distribution
    ('gas-0000', ['Yes', 'No'], [0.6, 0.4], [0.4, 0.6])
"""

from __future__ import annotations

from pathlib import Path

from valign.errors import ValignError
from valign.opinions.build import MAX_OPTIONS, group_key, normalise, pooled
from valign.opinions.formats import Conversion, Format
from valign.opinions.tables import data_files, literal, read_table
from valign.survey.opinion import GroupDistribution, OpinionItem

__all__ = ["FORMAT", "load_globalopinionqa"]

COLUMNS = ("question", "selections", "options")


def load_globalopinionqa(path: Path, codebook: Path | None = None) -> Conversion:
    """Items from a GlobalOpinionQA table (or a folder holding one, e.g. a hub snapshot)."""
    table = _table_path(path)
    df = read_table(table)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValignError(f"{table} lacks the column(s) {', '.join(missing)} of GlobalOpinionQA (question, selections, options, source); is it another format?")
    out = Conversion([])
    for i, row in enumerate(df.to_dict("records")):
        options = [str(o).strip() for o in literal(row["options"], "options", table, i + 2)]
        selections = literal(row["selections"], "selections", table, i + 2)
        if not isinstance(selections, dict):
            raise ValignError(f"{table} row {i + 2}: 'selections' is not a mapping of countries to shares; fix that cell.")
        if len(options) > MAX_OPTIONS:
            out.skip(f"more than {MAX_OPTIONS} options")
            continue
        if len(options) < 2:
            out.skip("fewer than 2 options")
            continue
        groups: dict[str, tuple[list[float], int | None]] = {}
        for country, shares in selections.items():
            if not isinstance(shares, (list, tuple)) or len(shares) != len(options):
                raise ValignError(f"{table} row {i + 2}: {country}'s shares {shares!r} do not match the {len(options)} options; fix that cell.")
            dist = normalise(shares)
            if dist is None:
                out.skip("a country with no answers")
                continue
            groups[group_key("country", country)] = (dist, None)
        if not groups:
            out.skip("no country with answers")
            continue
        source = str(row.get("source") or "goqa").strip().lower() or "goqa"
        out.items.append(OpinionItem(
            id=f"{source}-{i:04d}", kind="opinion", question=str(row["question"]).strip(), options=options, ordinal=False,
            distribution=pooled(groups), n=0,
            groups={key: GroupDistribution(distribution=d, n=None) for key, (d, _) in groups.items()},
        ))
    return out


def _table_path(path: Path) -> Path:
    if path.is_file():
        return path
    files = data_files(path)
    if not files:
        raise ValignError(f"{path} holds no .csv, .jsonl or .parquet file; give the GlobalOpinionQA table itself.")
    return files[0]


FORMAT = Format(
    name="globalopinionqa",
    about="GlobalOpinionQA (Durmus et al. 2023): Pew Global Attitudes and WVS questions, answers per country",
    load=load_globalopinionqa,
    hub_id="Anthropic/llm_global_opinions",
    download="https://huggingface.co/datasets/Anthropic/llm_global_opinions",
)
