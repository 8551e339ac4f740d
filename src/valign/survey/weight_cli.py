"""``valign survey weight``: rake the survey's respondents to census margins and report.

The CLI wires this function as a Typer command (``survey_app.command("weight")(weight_command)``).
It reads the responses through `valign.survey.db.load_frames`, rakes with
`valign.survey.weighting.rake_frames`, prints the diagnostics report and, with
``--out``, writes the diagnostics and the weight of every respondent as JSON.

Example:
    >>> import inspect
    >>> list(inspect.signature(weight_command).parameters)
    ['db', 'margins', 'instrument', 'trim', 'missing', 'out']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from valign.errors import ValignError

if TYPE_CHECKING:
    from valign.survey.weighting import WeightingResult

__all__ = ["weight_command", "parse_trim", "weighting_json"]


def parse_trim(text: str | None) -> tuple[float, float] | None:
    """``"0.2,5"`` → ``(0.2, 5.0)``; None stays None.

    Example:
        >>> parse_trim("0.2,5")
        (0.2, 5.0)
    """
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise ValignError(f"--trim '{text}' is not two numbers; write the bounds on weight/mean weight as LOW,HIGH, e.g. --trim 0.2,5.") from None
    return (low, high)


def weighting_json(result: WeightingResult) -> str:
    """The report's data plus every respondent's weight (null: no weight), as JSON text.

    Example:
        >>> weighting_json.__name__
        'weighting_json'
    """
    data = result.to_dict()
    data["weights"] = {str(k): (None if v != v else float(v)) for k, v in result.weights.items()}
    return json.dumps(data, indent=2, default=str)


def weight_command(
    db: str = typer.Option(..., "--db", help="Database URL of the survey, e.g. sqlite:///survey.sqlite."),
    margins: Path = typer.Option(..., "--margins", help="A margins YAML file, or a shipped one (nz-census-2023)."),
    instrument: str = typer.Option("demo", "--instrument", "-i", help="The instrument the responses answered: a shipped name or a YAML file."),
    trim: str | None = typer.Option(None, "--trim", help="Bounds on weight / mean weight as LOW,HIGH, e.g. 0.2,5 (default: no trimming)."),
    missing: str = typer.Option("own_category", "--missing", help="Missing raking answers: own_category, impute_mode or drop."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the diagnostics and every respondent's weight to this JSON file."),
) -> None:
    """Rake the respondents to population margins with svy; report design effect, ESS and ASMD."""
    from valign.survey.db import load_frames  # type: ignore[import-not-found]  # the database branch provides it
    from valign.survey.instrument import load_instrument
    from valign.survey.margins import load_margins
    from valign.survey.weighting import rake_frames

    inst = load_instrument(instrument)
    m = load_margins(margins)
    frames = load_frames(db, inst)
    result = rake_frames(frames, m, trim=parse_trim(trim), missing=missing)  # type: ignore[arg-type]
    typer.echo(result.report())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(weighting_json(result), encoding="utf-8")
        typer.echo(f"wrote {out}")
