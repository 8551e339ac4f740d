"""``valign review export``: the grades as JSONL and CSV, the human labels as pairs, a summary.

Files written to the output folder:

* ``grades.jsonl`` / ``grades.csv`` — one grade a line: ``case_id``, ``reviewer`` (the
  reviewer's pseudonymous id, never an invitation token), the level as chosen on the page
  (``level_shown``) and which answer was A (``x_first``), ``score_x`` (X over Y, −2 … +2),
  ``refused_x`` / ``refused_y``, ``note``, ``graded_at``, and the pair (``prompt``,
  ``answer_x``, ``answer_y``, ``model_x``, ``model_y``).
* ``human_pairs.jsonl`` — for ``valign judge calibrate --pairs``: ``id``, ``prompt``,
  ``chosen``, ``rejected`` for every case whose human consensus is not a tie (the
  answer the reviewers preferred is ``chosen``).
* ``summary.json`` — `valign.review.verdicts.human_summary`, against the AI judge's key
  cases when ``judge_rows`` are given.

Written to ``<run>/review/``, the report's key-case section shows them beside the
judge's verdicts (`valign.review.section`).

Example:
    >>> grade_record_fields()[:3]
    ['case_id', 'reviewer', 'level_shown']
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from valign.review.agreement import consensus
from valign.review.store import ReviewStore
from valign.review.verdicts import human_summary
from valign.types import Row

__all__ = ["grade_records", "grade_record_fields", "human_pairs", "write_export", "GRADES_FILE", "PAIRS_FILE", "SUMMARY_FILE"]

GRADES_FILE = "grades.jsonl"
PAIRS_FILE = "human_pairs.jsonl"
SUMMARY_FILE = "summary.json"


def grade_record_fields() -> list[str]:
    return ["case_id", "reviewer", "level_shown", "x_first", "score_x", "refused_x", "refused_y", "note", "graded_at", "prompt", "answer_x", "answer_y", "model_x", "model_y"]


def grade_records(store: ReviewStore) -> list[Row]:
    """Every grade in the database, as export records (by case, then reviewer)."""
    out = []
    for g, p, reviewer in store.all_grades():
        out.append(
            {
                "case_id": p.case_id,
                "reviewer": reviewer,
                "level_shown": g.level,
                "x_first": g.x_first,
                "score_x": g.score_x,
                "refused_x": g.refused_x,
                "refused_y": g.refused_y,
                "note": g.note or "",
                "graded_at": g.graded_at.isoformat(),
                "prompt": p.prompt,
                "answer_x": p.answer_x,
                "answer_y": p.answer_y,
                "model_x": p.model_x,
                "model_y": p.model_y,
            }
        )
    return out


def human_pairs(records: Sequence[Row]) -> list[Row]:
    """Labelled pairs (``prompt``/``chosen``/``rejected``) from the human consensus; ties left out.

    Example:
        >>> human_pairs([{"case_id": "c", "score_x": -1, "prompt": "p", "answer_x": "x", "answer_y": "y"}])
        [{'id': 'c', 'prompt': 'p', 'chosen': 'y', 'rejected': 'x', 'consensus': -1}]
    """
    by_case: dict[str, list[Row]] = {}
    for r in records:
        by_case.setdefault(str(r["case_id"]), []).append(r)
    pairs = []
    for case_id, rs in by_case.items():
        c = consensus([int(r["score_x"]) for r in rs])
        if not c:
            continue
        x, y = rs[0]["answer_x"], rs[0]["answer_y"]
        chosen, rejected = (x, y) if c > 0 else (y, x)
        pairs.append({"id": case_id, "prompt": rs[0]["prompt"], "chosen": chosen, "rejected": rejected, "consensus": c})
    return pairs


def write_export(store: ReviewStore, out: str | Path, judge_rows: Sequence[Row] = ()) -> dict[str, Any]:
    """Write the four files to ``out``; the summary written."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    records = grade_records(store)
    with open(folder / GRADES_FILE, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(folder / "grades.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=grade_record_fields())
        writer.writeheader()
        writer.writerows(records)
    with open(folder / PAIRS_FILE, "w", encoding="utf-8") as f:
        for p in human_pairs(records):
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    summary = human_summary(records, judge_rows)
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
