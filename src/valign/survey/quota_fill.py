"""How full each quota cell is, and screening out the respondents of full cells.

The rules, LimeSurvey's "completed" quotas:

* **When a cell is full**: when the *completed* responses in it (respondents who
  submitted the last page; never those screened out) reach its target. Respondents
  still answering do not count, so a cell is never closed by people who may drop out.
* **When a respondent is checked**: when the answers on a page they submit (the
  demographics) put them into a cell they were not in before, in the same transaction
  that saves the page. If that cell is full they are marked ``screened_out`` (with the
  cell's label in ``quota_cell``) and see the closing page; their survey ends there.
  Someone who skipped one of a set's questions is in none of its cells.
* **Once past, never screened later**: a respondent who was let through finishes even
  if their cell fills while they answer, so nobody is turned away after giving ten
  minutes. The price is a bounded overshoot: a cell can end with up to as many extra
  completed responses as it had respondents in progress when it filled (two people
  finishing the last slot at the same moment both count). The dashboard shows those
  in-progress counts next to each target.
* **Synthetic respondents fill their own pool**: ``valign survey simulate``'s
  respondents are counted only against other synthetic ones, and real respondents only
  against real ones, so a simulation run on a live survey takes no real respondent's
  place.

Example:
    >>> from valign.survey.db import Database, make_engine, migrate
    >>> from valign.survey.instrument import load_instrument
    >>> engine = make_engine("sqlite:///:memory:"); migrate(engine)
    >>> quota_fill(Database(engine), load_instrument("demo"))
    []
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, update

from valign.survey.db import Answer, Database, Respondent
from valign.web.database import utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from valign.survey.instrument import Instrument
    from valign.survey.quotas import QuotaCell

__all__ = ["quota_questions", "screen_if_full", "completed_in_cell", "quota_fill"]


def quota_questions(instrument: Instrument) -> set[str]:
    """The ids of the questions some quota set crosses.

    Example:
        >>> from valign.survey.instrument import load_instrument
        >>> quota_questions(load_instrument("demo"))
        set()
    """
    return {q for cell in instrument.quota_cells() for q, _ in cell.codes}


def completed_in_cell(s: Session, instrument_id: str, synthetic: bool, cell: QuotaCell) -> int:
    """Completed respondents of one pool (real or synthetic) whose answers put them in ``cell``."""
    matches = or_(*(and_(Answer.item_id == q, Answer.choice.in_(sorted(codes))) for q, codes in cell.codes))
    # One answer per (respondent, question): a respondent is in the cell when all of its questions match.
    members = (
        select(Answer.respondent_id)
        .join(Respondent, Respondent.id == Answer.respondent_id)
        .where(Respondent.completed.is_(True), Respondent.synthetic.is_(synthetic), Respondent.instrument_id == instrument_id, matches)
        .group_by(Answer.respondent_id)
        .having(func.count() == len(cell.codes))
    )
    return int(s.scalar(select(func.count()).select_from(members.subquery())) or 0)


def screen_if_full(s: Session, instrument: Instrument, respondent_id: int, saving: Iterable[Mapping[str, Any]], clearing: Iterable[str]) -> QuotaCell | None:
    """Before a page's answers are saved (in session ``s``): screen the respondent out if
    the answers ``saving`` (rows with ``item_id`` and ``choice``) and the questions
    ``clearing`` put them into a full cell they were not in before, and return that cell.

    Only a cell a respondent *enters* is checked: going back and saving the same answers
    again never screens out someone who was let through.
    """
    questions = quota_questions(instrument)
    saving = [row for row in saving if row["item_id"] in questions]
    clearing = [q for q in clearing if q in questions]
    if not saving and not clearing:
        return None
    stored = s.execute(select(Answer.item_id, Answer.choice).where(Answer.respondent_id == respondent_id, Answer.item_id.in_(questions)))
    before = {item: choice for item, choice in stored}
    after = {**before, **{row["item_id"]: row["choice"] for row in saving}}
    for q in clearing:
        after.pop(q, None)
    synthetic = bool(s.scalar(select(Respondent.synthetic).where(Respondent.id == respondent_id)))
    for cell in instrument.quota_cells():
        if cell.contains(after) and not cell.contains(before) and completed_in_cell(s, instrument.id, synthetic, cell) >= cell.target:
            s.execute(update(Respondent).where(Respondent.id == respondent_id).values(screened_out=True, quota_cell=cell.label, finished_at=utcnow()))
            return cell
    return None


def quota_fill(db: Database, instrument: Instrument) -> list[dict[str, Any]]:
    """Per cell: its set, categories, target, and the completed, in-progress and
    screened-out respondents (real ones; the same three for synthetic ones under
    ``synthetic``), and whether it is full. What the admin dashboard and summary show."""
    cells = instrument.quota_cells()
    if not cells:
        return []
    questions = quota_questions(instrument)
    with db.read() as s:
        people = s.execute(
            select(Respondent.id, Respondent.completed, Respondent.screened_out, Respondent.synthetic, Respondent.quota_cell).where(Respondent.instrument_id == instrument.id)
        ).all()
        answers: dict[int, dict[str, str]] = {}
        rows = s.execute(
            select(Answer.respondent_id, Answer.item_id, Answer.choice)
            .join(Respondent, Respondent.id == Answer.respondent_id)
            .where(Respondent.instrument_id == instrument.id, Answer.item_id.in_(questions))
        )
        for rid, item, choice in rows:
            answers.setdefault(rid, {})[item] = choice
    out = []
    for cell in cells:
        counts = {pool: {"completed": 0, "in_progress": 0, "screened_out": 0} for pool in (False, True)}
        for p in people:
            pool = counts[bool(p.synthetic)]
            if p.screened_out:
                pool["screened_out"] += p.quota_cell == cell.label
            elif cell.contains(answers.get(p.id, {})):
                pool["completed" if p.completed else "in_progress"] += 1
        real = counts[False]
        out.append(
            {
                "set": cell.set_number,
                "cell": dict(cell.categories),
                "label": cell.label,
                "target": cell.target,
                **real,
                "full": real["completed"] >= cell.target,
                "synthetic": counts[True],
            }
        )
    return out
