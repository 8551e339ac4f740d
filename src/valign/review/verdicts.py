"""Human verdicts per case, the seed's summary counts from them, and how they agree.

Input: grade records as `valign.review.export` writes them (``case_id``, ``reviewer``,
``score_x`` for X over Y, ``refused_x``, ``refused_y``…) and, optionally, the AI judge's
``keycase`` rows of the same evaluation (``case_id``, ``score``).

Per case, the human consensus is the median of the reviewers' scores
(`valign.review.agreement.consensus`); its improvement or regression level uses the
judge's own thresholds (`valign.evals.pairwise.improvement`), so the counts — strong,
moderate, slight improvements, regressions, ties, refusals each way — mean the same
for people and judge. A model refused on a case when most of its reviewers marked it.

Example:
    >>> g = [{"case_id": "c1", "reviewer": "r1", "score_x": 2, "refused_x": False, "refused_y": True},
    ...      {"case_id": "c1", "reviewer": "r2", "score_x": 1, "refused_x": False, "refused_y": True}]
    >>> s = human_summary(g, [{"case_id": "c1", "score": 1.5}])
    >>> s["counts"]["improved"], s["counts"]["tuned_answered_where_base_refused"], s["cases"][0]["judge_score"]
    ({'strong': 1, 'moderate': 0, 'slight': 0}, 1, 1.5)
"""

from __future__ import annotations

from typing import Any, Sequence

from valign.evals.pairwise import improvement, regression
from valign.review.agreement import consensus, judge_agreement, krippendorff_alpha
from valign.types import Row

__all__ = ["human_summary", "STRENGTHS"]

STRENGTHS = ("strong", "moderate", "slight")


def _majority(flags: list[bool]) -> bool:
    return sum(flags) * 2 > len(flags)


def human_summary(grades: Sequence[Row], judge_rows: Sequence[Row] = ()) -> dict[str, Any]:
    """Cases with their human verdicts (and the judge's), the counts, inter-rater
    agreement (Krippendorff's ordinal alpha) and the judge's agreement with the humans."""
    by_case: dict[str, list[Row]] = {}
    for g in grades:
        by_case.setdefault(str(g["case_id"]), []).append(g)
    judge = {str(r["case_id"]): r.get("score") for r in judge_rows if r.get("case_id") is not None}
    reviewers = sorted({str(g["reviewer"]) for g in grades})
    cases: list[dict[str, Any]] = []
    for case_id, gs in by_case.items():
        scores = [int(g["score_x"]) for g in gs]
        c = consensus(scores)
        cases.append(
            {
                "case_id": case_id,
                "grades": {str(g["reviewer"]): int(g["score_x"]) for g in gs},
                "notes": [g["note"] for g in gs if g.get("note")],
                "consensus": c,
                "improvement": improvement(c),
                "regression": regression(c),
                "tuned_refused": _majority([bool(g["refused_x"]) for g in gs]),
                "base_refused": _majority([bool(g["refused_y"]) for g in gs]),
                "judge_score": judge.get(case_id),
            }
        )
    counts = {
        "cases": len(cases),
        "improved": {lv: sum(c["improvement"] == lv for c in cases) for lv in STRENGTHS},
        "regressed": {lv: sum(c["regression"] == lv for c in cases) for lv in STRENGTHS},
        "ties": sum(c["consensus"] == 0 for c in cases),
        "base_refused": sum(c["base_refused"] for c in cases),
        "tuned_refused": sum(c["tuned_refused"] for c in cases),
        "tuned_answered_where_base_refused": sum(c["base_refused"] and not c["tuned_refused"] for c in cases),
    }
    units = [[c["grades"].get(r) for r in reviewers] for c in cases]
    alpha = krippendorff_alpha(units, "ordinal")
    both = [c for c in cases if c["judge_score"] is not None]
    vs_judge = judge_agreement([c["judge_score"] for c in both], [c["consensus"] for c in both])
    return {
        "reviewers": len(reviewers),
        "grades": len(grades),
        "cases": cases,
        "counts": counts,
        "alpha_ordinal": None if alpha is None else round(alpha, 4),
        "multiply_graded": sum(len(c["grades"]) >= 2 for c in cases),
        "judge": vs_judge.to_dict(),
    }
