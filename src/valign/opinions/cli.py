"""``valign opinions …``: convert published opinion data into evaluation items, and show a set.

Example:
    $ valign opinions convert llm_global_opinions.csv --format globalopinionqa --out goqa.jsonl
    $ valign opinions convert WVS_Cross-National_Wave_7.sav --format respondents --codebook wvs7.yaml --out wvs7.jsonl
    $ valign opinions show goqa.jsonl
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["opinions_app"]

opinions_app = typer.Typer(help="Published opinion data (GlobalOpinionQA, OpinionQA, SubPOP, WVS-style files) as evaluation items.", no_args_is_help=True)


@opinions_app.command("convert")
def convert_cmd(
    source: str = typer.Argument(..., help="A file or folder in the format, or a hub id already in the local Hugging Face cache (e.g. Anthropic/llm_global_opinions)."),
    fmt: str = typer.Option(..., "--format", "-f", help="globalopinionqa, opinionqa, subpop or respondents."),
    codebook: Optional[Path] = typer.Option(None, "--codebook", "-c", help="For --format respondents: the YAML naming weight, country, group and question columns."),
    out: Path = typer.Option(..., "--out", "-o", help="The evaluation set to write (JSONL, the format of `valign survey export`'s eval_items.jsonl)."),
) -> None:
    """Convert published opinion data into evaluation items (a question, options, distributions overall and per group)."""
    from valign.opinions import convert
    from valign.survey.opinion import write_items

    result = convert(source, fmt, codebook)
    write_items(result.items, out)
    groups = {key for item in result.items for key in item.groups}
    typer.echo(f"wrote {len(result.items)} item{'s' * (len(result.items) != 1)} with {len(groups)} population{'s' * (len(groups) != 1)} besides everyone to {out}")
    for reason, n in result.skipped.items():
        typer.echo(f"  left out: {n} × {reason}")


@opinions_app.command("show")
def show_cmd(
    items: Path = typer.Argument(..., help="An evaluation set (JSONL)."),
    questions: int = typer.Option(5, min=0, help="How many questions to print."),
    populations: int = typer.Option(20, min=1, help="How many populations to list."),
) -> None:
    """Summarise an evaluation set: questions, populations and their sizes."""
    from valign.opinions import describe_items
    from valign.survey.opinion import read_items

    typer.echo(describe_items(read_items(items), questions=questions, populations=populations))


@opinions_app.command("compare")
def compare_cmd(
    ours: Path = typer.Argument(..., help="Your survey's evaluation set (eval_items.jsonl of `valign survey export`)."),
    reference: Path = typer.Argument(..., help="The reference set (e.g. a national survey converted with `valign opinions convert`)."),
    population: str = typer.Option("all", "--population", "-p", help="The reference population: all, or a group key such as country=NZL."),
) -> None:
    """Set your survey's distributions beside a reference population's, on the questions both asked."""
    from valign.evals.fidelity import item_distance
    from valign.opinions import expand
    from valign.opinions.compare import compare_items
    from valign.survey.opinion import read_items

    mine, theirs = read_items(ours), read_items(reference)
    if population != "all":
        expand(theirs, [population])
    result = compare_items(mine, theirs, population)
    by_id = {item.id: item for item in mine}
    typer.echo(f"{len(result.rows)} question(s) in both; reference population {population}")
    fmt = lambda d: " ".join(f"{p:.2f}" for p in d)  # noqa: E731
    for row in result.rows:
        typer.echo(f"  {row['id']} ({row['reference_id']}): {row['question'][:70]}")
        typer.echo(f"    options   {' / '.join(row['options'])}")
        typer.echo(f"    ours      {fmt(row['ours'])}\n    reference {fmt(row['reference'])}   distance {item_distance(by_id[row['id']], row['ours'], row['reference']):.3f}")
    for reason, n in result.skipped.items():
        typer.echo(f"  left out: {n} × {reason}")
