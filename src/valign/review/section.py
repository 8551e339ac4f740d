"""The human verdicts a run's report shows in its key-case section.

``valign review export --out <run>/review`` writes ``grades.jsonl`` there; when the
file is present, the key-case section (`valign.evals.keycases.keycases_section`) shows
each case's human grades and consensus beside the AI judge's verdict, the seed's
counts from the humans, Krippendorff's ordinal alpha among the reviewers and the
judge's agreement with the human consensus. Without it the section is as before.

Example:
    >>> from pathlib import Path
    >>> from valign.evals.rundata import RunData
    >>> human_verdicts(RunData(Path("runs/nowhere"), "x", None, []), []) is None
    True
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from valign.errors import ValignError
from valign.evals.rundata import RunData
from valign.review.export import GRADES_FILE
from valign.review.verdicts import human_summary
from valign.types import Row

__all__ = ["human_verdicts", "REVIEW_FOLDER"]

REVIEW_FOLDER = "review"  # <run>/review/grades.jsonl


def human_verdicts(run: RunData, judged: Sequence[Row]) -> dict[str, Any] | None:
    """`human_summary` of the run's exported grades against its judged key cases, with
    ``by_case`` (case id → that case's human verdict); None when no grades were exported."""
    path = run.root / REVIEW_FOLDER / GRADES_FILE
    if not path.is_file():
        return None
    grades = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                grades.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValignError(f"{path} line {n} is not valid JSON; export the grades again with `valign review export`.") from None
    if not grades:
        return None
    summary = human_summary(grades, judged)
    summary["by_case"] = {c["case_id"]: c for c in summary["cases"]}
    return summary
