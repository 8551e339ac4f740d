"""Quotas: how many completed responses a survey wants from each demographic cell.

An instrument's optional ``quotas`` section declares them, the way LimeSurvey's quotas
work: each entry of ``sets`` crosses one to four demographic questions (``by``); each
combination of their answers is a *cell* with a *target*. A respondent whose
demographic answers put them into a cell that already holds its target of completed
responses sees a polite closing page and is screened out (`valign.survey.quota_fill`).

.. code-block:: yaml

    quotas:
      total: 400                 # the completed responses wanted; shares are taken of it
      message: …                 # optional: the closing page's text
      sets:
        - by: [age_group]
          margins: nz-census-2023      # targets = census share × total
        - by: [sex, education]
          shares:                      # nested in the order of `by`; sum to 1
            female: {school: 0.23, post_school: 0.14, degree: 0.14}
            male: {school: 0.22, post_school: 0.13, degree: 0.14}
        - by: [age_group]
          targets: {"65+": 120}        # counts; a cell not listed has no limit

A set gives exactly one of ``targets`` (whole numbers; 0 screens out everyone in the
cell), ``shares`` (× ``total``, rounded by largest remainder so they add up) or
``margins`` (a margins file, `valign.survey.margins`: each ``by`` question's margin
variable's shares, multiplied across questions as if independent, × ``total``; the
file's ``map`` decides which answer codes fall into a census category, and categories
no answer reaches are dropped and the rest rescaled). A respondent who skipped one of a
set's questions is in none of its cells, as in LimeSurvey.

Example:
    >>> from valign.survey.instrument import load_instrument
    >>> inst = load_instrument("demo")
    >>> section = QuotaSection(total=100, sets=[QuotaSet(by=["sex"], shares={"female": 0.51, "male": 0.49})])
    >>> [(c.label, c.target) for c in resolve_quotas(section, inst.demographics)]
    [('sex=female', 51), ('sex=male', 49)]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from valign.errors import ValignError
from valign.survey.margins import SHARE_TOLERANCE, load_margins

if TYPE_CHECKING:
    from valign.survey.instrument import DemographicQuestion

__all__ = ["QuotaSet", "QuotaSection", "QuotaCell", "QuotaProblem", "resolve_quotas", "largest_remainder", "DEFAULT_QUOTA_MESSAGE"]

DEFAULT_QUOTA_MESSAGE = (
    "We already have all the answers we need from people like you, "
    "so the survey ends here for you and there are no more questions."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuotaSet(_Strict):
    """One crossing of demographic questions (``by``) and the targets of its cells."""

    by: list[str] = Field(..., min_length=1, max_length=4)
    # Keys are answer codes, which YAML may read as numbers or booleans (`1:`, `yes:`): taken as text.
    targets: dict[Any, Any] | None = None
    shares: dict[Any, Any] | None = None
    margins: str | None = None


class QuotaSection(_Strict):
    """An instrument's ``quotas``: the sample size, the closing page's text, the sets."""

    total: int | None = Field(None, ge=1)
    message: str = Field(DEFAULT_QUOTA_MESSAGE, min_length=1)
    sets: list[QuotaSet] = Field(..., min_length=1)


class QuotaProblem(ValueError):
    """A mistake in the ``quotas`` section: ``loc`` is where (below ``quotas``), the message the fix."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


@dataclass(frozen=True)
class QuotaCell:
    """One cell: its set (1-based), the category per question, the answer codes that fall into it.

    Example:
        >>> cell = QuotaCell(1, (("sex", "female"),), (("sex", frozenset({"female"})),), 51)
        >>> cell.label, cell.contains({"sex": "female", "age_group": "65+"}), cell.contains({})
        ('sex=female', True, False)
    """

    set_number: int
    categories: tuple[tuple[str, str], ...]  # (question id, category), in the order of `by`
    codes: tuple[tuple[str, frozenset[str]], ...]  # (question id, the option codes in the category)
    target: int

    @property
    def label(self) -> str:
        """What the dashboard shows and the database stores for a screened-out respondent."""
        return " & ".join(f"{q}={c}" for q, c in self.categories)

    def contains(self, answers: Mapping[str, str]) -> bool:
        """Whether demographic answers (question id → option code) put a respondent here."""
        return all(answers.get(q) in codes for q, codes in self.codes)


def largest_remainder(shares: Mapping[Any, float], total: int) -> dict[Any, int]:
    """Whole numbers in proportion to ``shares`` that add up to ``round(sum(shares) * total)``.

    Example:
        >>> largest_remainder({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10)
        {'a': 4, 'b': 3, 'c': 3}
    """
    raw = {k: s * total for k, s in shares.items()}
    out = {k: math.floor(x) for k, x in raw.items()}
    missing = round(sum(raw.values())) - sum(out.values())
    # Ties (up to float noise) go to the cell listed first.
    for k in sorted(raw, key=lambda k: round(raw[k] - out[k], 9), reverse=True)[: max(0, missing)]:
        out[k] += 1
    return out


def resolve_quotas(section: QuotaSection, demographics: Sequence[DemographicQuestion], base_dir: Path | None = None) -> list[QuotaCell]:
    """Every cell with its target; a mistake raises `QuotaProblem` naming the place and the fix.

    ``base_dir``: where a relative ``margins`` path is looked for first (the
    instrument's folder), before the working directory and the shipped margins.
    """
    questions = {q.id: q for q in demographics}
    cells: list[QuotaCell] = []
    seen: dict[frozenset[str], int] = {}
    for i, qs in enumerate(section.sets):
        where: tuple[str | int, ...] = ("sets", i)
        for q in qs.by:
            if q not in questions:
                have = ", ".join(questions) or "none"
                raise QuotaProblem((*where, "by"), f"'{q}' is not a demographic question of this instrument (its demographic questions: {have}); name one of those")
        if len(set(qs.by)) != len(qs.by):
            raise QuotaProblem((*where, "by"), "a question is named twice; cross each question once")
        key = frozenset(qs.by)
        if key in seen:
            raise QuotaProblem(where, f"this set crosses the same questions as set {seen[key] + 1}; merge the two sets into one")
        seen[key] = i
        given = [name for name in ("targets", "shares", "margins") if getattr(qs, name) is not None]
        if len(given) != 1:
            raise QuotaProblem(where, f"this set gives {' and '.join(given) or 'none of targets, shares and margins'}; give exactly one of targets, shares or margins")
        if given[0] != "targets" and section.total is None:
            raise QuotaProblem(("total",), f"set {i + 1} gives {given[0]}, which are taken of the total; add total: the number of completed responses you want in all")
        qlist = [questions[q] for q in qs.by]
        if qs.margins is not None:
            shares, codes = _margin_shares(qs.margins, qlist, (*where, "margins"), base_dir)
        else:
            table = qs.targets if qs.targets is not None else qs.shares
            assert table is not None
            leaves = _leaves(table, qlist, (*where, given[0]))
            codes = {q.id: {o.code: {o.code} for o in q.options} for q in qlist}
            if qs.targets is not None:
                targets = {cats: _count(v, (*where, "targets", *cats)) for cats, v in leaves.items()}
                cells += [_cell(i, qlist, cats, codes, n) for cats, n in targets.items()]
                continue
            shares = {cats: _share(v, (*where, "shares", *cats)) for cats, v in leaves.items()}
            total = sum(shares.values())
            if abs(total - 1) > SHARE_TOLERANCE:
                raise QuotaProblem((*where, "shares"), f"the shares sum to {total:.4f}, not 1 (±{SHARE_TOLERANCE}); fix them, or give counts under targets")
        assert section.total is not None
        for cats, n in largest_remainder(shares, section.total).items():
            cells.append(_cell(i, qlist, cats, codes, n))
    return cells


def _cell(i: int, qlist: list[DemographicQuestion], cats: tuple[str, ...], codes: dict[str, dict[str, set[str]]], target: int) -> QuotaCell:
    return QuotaCell(
        set_number=i + 1,
        categories=tuple((q.id, c) for q, c in zip(qlist, cats)),
        codes=tuple((q.id, frozenset(codes[q.id][c])) for q, c in zip(qlist, cats)),
        target=target,
    )


def _leaves(table: dict[Any, Any], qlist: list[DemographicQuestion], where: tuple[str | int, ...]) -> dict[tuple[str, ...], Any]:
    """The numbers of a mapping nested once per question of ``by``, keyed by their codes."""
    out: dict[tuple[str, ...], Any] = {}

    def walk(node: Any, depth: int, path: tuple[str, ...]) -> None:
        q = qlist[depth]
        if not isinstance(node, dict) or not node:
            raise QuotaProblem((*where, *path), f"expected a mapping from answers of '{q.id}' ({', '.join(o.code for o in q.options)}) to {'numbers' if depth == len(qlist) - 1 else 'mappings'}; nest it once per question of 'by'")
        codes = [o.code for o in q.options]
        for key, value in node.items():
            code = _code(key)
            if code not in codes:
                quote = "; YAML reads an unquoted yes, no, on, off, true or false as a boolean, so quote the code" if isinstance(key, bool) else ""
                raise QuotaProblem((*where, *path), f"'{code}' is not an answer of '{q.id}' (its answers: {', '.join(codes)}); use one of those codes{quote}")
            if depth + 1 < len(qlist):
                walk(value, depth + 1, (*path, code))
            else:
                out[(*path, code)] = value

    walk(table, 0, ())
    return out


def _code(key: Any) -> str:
    # YAML reads `yes`, `true` and `1` as a boolean or a number; answer codes are text.
    return str(key).lower() if isinstance(key, bool) else str(key)


def _count(value: Any, where: tuple[str | int, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise QuotaProblem(where, f"the target {value!r} is not a whole number of 0 or more; give how many completed responses this cell may have")
    return value


def _share(value: Any, where: tuple[str | int, ...]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise QuotaProblem(where, f"the share {value!r} is not a number from 0 to 1; fix it")
    return float(value)


def _margin_shares(name: str, qlist: list[DemographicQuestion], where: tuple[str | int, ...], base_dir: Path | None) -> tuple[dict[tuple[str, ...], float], dict[str, dict[str, set[str]]]]:
    """Cell shares from a margins file (independent across questions) and each category's codes."""
    path: str | Path = name
    if base_dir is not None and not Path(name).is_absolute() and (base_dir / name).exists():
        path = base_dir / name
    try:
        margins = load_margins(path)
    except ValignError as e:
        raise QuotaProblem(where, f"the margins could not be read ({str(e).rstrip('.')})") from None
    per_question: list[dict[str, float]] = []
    codes: dict[str, dict[str, set[str]]] = {}
    for q in qlist:
        var = margins.variables.get(q.margin)
        if var is None:
            raise QuotaProblem(where, f"'{name}' has no variable '{q.margin}' (the margin of '{q.id}'; it has {', '.join(margins.variables)}); use margins that cover it, or give targets")
        by_cat: dict[str, set[str]] = {}
        for o in q.options:
            cat = var.category(o.code)
            if cat not in var.shares:
                raise QuotaProblem(where, f"'{name}' has no category for answer '{o.code}' of '{q.id}' (its categories: {', '.join(var.shares)}); map it under variables.{q.margin}.map there")
            by_cat.setdefault(cat, set()).add(o.code)
        reached = sum(var.shares[c] for c in by_cat)  # census categories no answer reaches are dropped
        per_question.append({c: var.shares[c] / reached for c in var.shares if c in by_cat})
        codes[q.id] = by_cat
    shares = {cats: math.prod(p[c] for p, c in zip(per_question, cats)) for cats in itertools.product(*per_question)}
    return shares, codes
