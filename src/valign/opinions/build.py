"""Turning published shares or counts into `OpinionItem`s: normalising, group keys, the pooled whole.

Every loader ends here, so the rules are the same for every format:

* a distribution is normalised to sum to 1 (published percentages are rounded); one
  that sums to 0, or holds a negative or missing value, is no distribution and is left out;
* a population is ``"<variable>=<value>"`` (``country=Japan``, ``sex=Female``) — the
  group keys `valign survey export` writes;
* where a source publishes no overall distribution, the item's ``distribution`` is
  pooled from the groups of one variable (they partition the respondents): weighted
  by the groups' sizes when the source gives them, else each group counted once —
  so for GlobalOpinionQA it is the mean of the countries asked. The per-population
  distributions are the data; the pooled one is a convenience, and `fidelity` can be
  pointed at any population instead (`valign.opinions.populations`).

Example:
    >>> normalise([2, 6])
    [0.25, 0.75]
    >>> pooled({"sex=a": ([1.0, 0.0], 30), "sex=b": ([0.0, 1.0], 10)})
    [0.75, 0.25]
    >>> pooled({"country=X": ([1.0, 0.0], None), "country=Y": ([0.0, 1.0], None)})
    [0.5, 0.5]
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["MAX_OPTIONS", "normalise", "group_key", "pooled"]

MAX_OPTIONS = 26  # one letter per option (`OpinionItem.options`)


def normalise(values: Sequence[float]) -> list[float] | None:
    """Shares summing to 1, or None when the values are no distribution (sum 0, negative, NaN)."""
    try:
        xs = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if any(math.isnan(x) or x < 0 for x in xs):
        return None
    total = sum(xs)
    return None if total <= 0 else [x / total for x in xs]


def group_key(variable: str, value: object) -> str:
    """``"<variable>=<value>"`` with surrounding spaces dropped (the key `OpinionItem.groups` uses)."""
    return f"{variable.strip()}={str(value).strip()}"


def pooled(groups: dict[str, tuple[list[float], int | None]]) -> list[float]:
    """The whole population's distribution from its groups, using the variable whose groups are largest in total.

    ``groups`` maps a group key to (distribution, size or None). Groups of one variable
    partition the respondents, so they are pooled weighted by size (each counted once
    where sizes are unknown); the variable with the most respondents (else the most
    groups) is used.
    """
    by_var: dict[str, list[tuple[list[float], int | None]]] = {}
    for key, value in groups.items():
        by_var.setdefault(key.split("=", 1)[0], []).append(value)

    def coverage(members: list[tuple[list[float], int | None]]) -> tuple[int, int]:
        return (sum(n or 0 for _, n in members), len(members))

    members = max(by_var.values(), key=coverage)
    known = all(n for _, n in members)
    weights = [float(n) if known else 1.0 for _, n in members]  # type: ignore[arg-type]
    k = len(members[0][0])
    total = sum(weights)
    return [round(sum(w * d[i] for w, (d, _) in zip(weights, members)) / total, 9) for i in range(k)]
