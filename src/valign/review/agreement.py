"""Agreement on the five-level scale: between reviewers, and between the AI judge and them.

Grades are scores for the tuned answer X over the base answer Y, −2 (Y much better) …
+2 (X much better), the scale of `valign.evals.pairwise`.

* `krippendorff_alpha` — Krippendorff's alpha for any number of raters, missing grades
  allowed, with the nominal, ordinal or interval difference function. The formulas are
  those of K. Krippendorff, *Computing Krippendorff's Alpha-Reliability* (2011):
  a coincidence matrix o_ck = Σ_u (number of c–k pairs in unit u) / (m_u − 1) over units
  graded at least twice, n_c = Σ_k o_ck, n = Σ_c n_c, and
  α = 1 − (n − 1) · Σ_{c,k} o_ck δ²_ck / Σ_{c,k} n_c n_k δ²_ck, where
  δ²_ck is 1 for c ≠ k (nominal), (c − k)² (interval) or
  (Σ_{g=c..k} n_g − (n_c + n_k)/2)² (ordinal: the ranks between the two values, so only
  their order counts). Tested against that paper's worked example.
* `weighted_kappa` — Cohen's (1968) weighted kappa for two raters:
  κ_w = 1 − Σ w_ij O_ij / Σ w_ij E_ij, with quadratic weights w_ij = (i − j)² (or linear
  |i − j|), O the observed and E the expected (outer product of the margins) proportions.
* `consensus` — the human consensus of a case: the median of its reviewers' scores.
* `judge_agreement` — the AI judge against that consensus: quadratic weighted kappa on
  the scale (both rounded to whole levels), and how often the two point the same way.

Example:
    >>> round(krippendorff_alpha([[2, 2], [1, 1], [-1, -2]], "ordinal"), 3)
    0.949
    >>> weighted_kappa([2, 1, 0, -1], [2, 1, 0, -1])
    1.0
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

from valign.errors import ValignError

__all__ = ["krippendorff_alpha", "weighted_kappa", "consensus", "nearest_level", "direction", "JudgeAgreement", "judge_agreement", "SCALE"]

SCALE: tuple[int, ...] = (-2, -1, 0, 1, 2)
Metric = Literal["nominal", "ordinal", "interval"]


def krippendorff_alpha(units: Sequence[Sequence[float | None]], metric: Metric = "ordinal") -> float | None:
    """Krippendorff's alpha of ``units`` (one list of grades per unit, None for a missing
    one); None when fewer than two units are graded twice or all grades are equal
    (no disagreement is possible, so alpha is undefined).

    Example:
        >>> krippendorff_alpha([[1, 1, None], [2, 2, 2], [0, 0]], "nominal")
        1.0
    """
    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    if len(pairable) < 2 and not (pairable and len(set(pairable[0])) > 1):
        return None
    values = sorted({v for u in pairable for v in u})
    index = {v: i for i, v in enumerate(values)}
    k = len(values)
    o = [[0.0] * k for _ in range(k)]
    for u in pairable:
        m = len(u)
        counts = Counter(u)
        for c, nc in counts.items():
            for d, nd in counts.items():
                pairs = nc * (nc - 1) if c == d else nc * nd
                o[index[c]][index[d]] += pairs / (m - 1)
    n_c = [sum(row) for row in o]
    n = sum(n_c)
    if k < 2:
        return None

    def delta2(i: int, j: int) -> float:
        if i == j:
            return 0.0
        if metric == "nominal":
            return 1.0
        if metric == "interval":
            return float(values[i] - values[j]) ** 2
        if metric == "ordinal":
            lo, hi = min(i, j), max(i, j)
            return (sum(n_c[lo : hi + 1]) - (n_c[lo] + n_c[hi]) / 2.0) ** 2
        raise ValignError(f"unknown difference function '{metric}'; use nominal, ordinal or interval.")

    observed = sum(o[i][j] * delta2(i, j) for i in range(k) for j in range(k))
    expected = sum(n_c[i] * n_c[j] * delta2(i, j) for i in range(k) for j in range(k))
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def weighted_kappa(a: Sequence[int], b: Sequence[int], categories: Sequence[int] = SCALE, weights: Literal["quadratic", "linear"] = "quadratic") -> float | None:
    """Cohen's weighted kappa of two raters' grades of the same cases (None when
    undefined: no cases, or both raters always gave one and the same grade).

    Example:
        >>> round(weighted_kappa([2, 1, 0, 0], [2, 0, 0, 1]), 4)
        0.6364
    """
    if len(a) != len(b):
        raise ValignError(f"the two raters graded {len(a)} and {len(b)} cases; give both the same cases.")
    if not a:
        return None
    idx = {c: i for i, c in enumerate(categories)}
    unknown = sorted({v for v in (*a, *b) if v not in idx})
    if unknown:
        raise ValignError(f"grades {unknown} are not on the scale {list(categories)}; round them to a level first.")
    k, n = len(categories), len(a)
    obs = [[0.0] * k for _ in range(k)]
    for x, y in zip(a, b):
        obs[idx[x]][idx[y]] += 1.0 / n
    row = [sum(r) for r in obs]
    col = [sum(obs[i][j] for i in range(k)) for j in range(k)]
    power = 2 if weights == "quadratic" else 1
    w = [[abs(i - j) ** power for j in range(k)] for i in range(k)]
    o_sum = sum(w[i][j] * obs[i][j] for i in range(k) for j in range(k))
    e_sum = sum(w[i][j] * row[i] * col[j] for i in range(k) for j in range(k))
    if e_sum == 0:
        return None
    return 1.0 - o_sum / e_sum


def consensus(scores: Sequence[int]) -> float | None:
    """The reviewers' consensus on a case: the median score (a half step between two
    levels when an even number of reviewers split); None without grades.

    Example:
        >>> consensus([2, 1, 2]), consensus([1, 2]), consensus([])
        (2, 1.5, None)
    """
    return statistics.median(scores) if scores else None


def nearest_level(score: float) -> int:
    """A score on the whole-level scale, halves rounded away from zero (1.5 → 2, −0.5 → −1).

    Example:
        >>> [nearest_level(s) for s in (1.5, 0.5, 0.25, -0.5, -1.5)]
        [2, 1, 0, -1, -2]
    """
    return int(math.copysign(math.floor(abs(score) + 0.5), score))


def direction(score: float) -> int:
    """+1 (X better), 0 (tie) or −1 (Y better).

    Example:
        >>> direction(0.5), direction(0), direction(-2)
        (1, 0, -1)
    """
    return (score > 0) - (score < 0)


@dataclass(frozen=True)
class JudgeAgreement:
    """The AI judge against the human consensus on the cases both graded."""

    cases: int
    kappa_quadratic: float | None  # on the five levels, both rounded with `nearest_level`
    same_direction: float | None  # share of cases where both say better / tie / worse alike
    exact_level: float | None  # share of cases on the same level

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def judge_agreement(judge: Sequence[float], humans: Sequence[float]) -> JudgeAgreement:
    """How far the judge's scores agree with the human consensus scores of the same cases.

    Example:
        >>> judge_agreement([1.5, 0.0, -1.0], [2, 0, 1]).same_direction
        0.6667
    """
    if len(judge) != len(humans):
        raise ValignError(f"{len(judge)} judge scores but {len(humans)} human ones; pair them by case.")
    if not judge:
        return JudgeAgreement(0, None, None, None)
    j = [nearest_level(s) for s in judge]
    h = [nearest_level(s) for s in humans]
    kappa = weighted_kappa(j, h)
    same = sum(direction(x) == direction(y) for x, y in zip(judge, humans)) / len(j)
    exact = sum(x == y for x, y in zip(j, h)) / len(j)
    return JudgeAgreement(len(j), None if kappa is None else round(kappa, 4), round(same, 4), round(exact, 4))
