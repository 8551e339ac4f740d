"""One's own survey beside a national one: the items both asked, the two distributions side by side.

An item of one's survey (`valign survey export`'s ``eval_items.jsonl``) and one of a
reference set (`valign opinions convert`) are the same question when a mapping says so
(``{our id: reference id}``), else when their ids are equal, else when their question
texts are equal (ignoring case and spacing). Their options must be the same labels
(ignoring case; the reference's are put in our order); a pair whose labels differ is
left out and counted, never guessed. The reference side is one population of the
reference set (``all``, ``country=NZL``, ``sex=Female``). The fidelity suite adds each
pair's distance (normalised Wasserstein-1 for ordered options, Jensen–Shannon otherwise)
when it puts the comparison in the report.

Example:
    >>> from valign.survey.opinion import OpinionItem
    >>> ours = [OpinionItem(id="fam", question="Is family important?", options=["Yes", "No"], distribution=[0.7, 0.3], n=300)]
    >>> ref = [OpinionItem(id="Q1", question="Is family  important?", options=["no", "yes"], distribution=[0.5, 0.5],
    ...                    groups={"country=NZL": {"distribution": [0.1, 0.9], "n": 900}})]
    >>> row = compare_items(ours, ref, "country=NZL").rows[0]
    >>> row["ours"], row["reference"], row["reference_id"]
    ([0.7, 0.3], [0.9, 0.1], 'Q1')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from valign.opinions.populations import ALL
from valign.survey.opinion import OpinionItem

__all__ = ["Comparison", "compare_items"]


@dataclass
class Comparison:
    """Rows (our id, the reference's id, question, options, both distributions, sizes) and what did not match."""

    population: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"population": self.population, "rows": self.rows, "skipped": self.skipped}


def _text(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().casefold()


def compare_items(ours: list[OpinionItem], reference: list[OpinionItem], population: str = ALL,
                  match: dict[str, str] | None = None) -> Comparison:
    """Our items beside the reference population's, on the questions both asked."""
    by_id = {r.id: r for r in reference}
    by_text = {_text(r.question): r for r in reference}
    out = Comparison(population)
    for item in ours:
        ref = by_id.get((match or {}).get(item.id, item.id)) or by_text.get(_text(item.question))
        if ref is None:
            continue
        target = ref.distribution if population == ALL else (ref.groups[population].distribution if population in ref.groups else None)
        n = ref.n if population == ALL else (ref.groups[population].n if population in ref.groups else None)
        if target is None:
            out.skipped["the population was not asked"] = out.skipped.get("the population was not asked", 0) + 1
            continue
        order = {_text(o): k for k, o in enumerate(ref.options)}
        if sorted(order) != sorted(_text(o) for o in item.options):
            out.skipped["different options"] = out.skipped.get("different options", 0) + 1
            continue
        theirs = [target[order[_text(o)]] for o in item.options]
        out.rows.append({
            "id": item.id, "reference_id": ref.id, "question": item.question, "options": item.options, "ordinal": item.ordinal,
            "ours": item.distribution, "ours_n": item.n, "reference": theirs, "reference_n": n,
        })
    return out
