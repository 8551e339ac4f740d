"""The review's tables and what the pages and exports do with them.

The tables live in the survey's database and are created by its Alembic chain
(revision ``0007``, `valign.survey.db.migrate`): ``review_pairs``, ``reviewers``,
``review_grades``. One database holds one review (one set of pairs; loading a
different set is refused, so grades never silently change meaning).

A reviewer is an invitation: `ReviewStore.invite` makes a token, keeps only its
sha-256, and gives the reviewer a pseudonymous ``public_id`` (what exports name) and a
random ``seed``. The seed fixes the reviewer's case order and, per case, which answer
is shown as A (`sides`); each grade records that side (``x_first``) as well.

Example:
    >>> store = ReviewStore.open("sqlite:///:memory:")
    >>> store.load([ReviewPair("c1", "Lie for me?", "No.", "Sure.", "tuned", "base")])
    1
    >>> token = store.invite(1)[0]
    >>> r = store.reviewer_by_token(token)
    >>> g = store.save_grade(r.id, store.order(r)[0], "A>>B", refused_a=False, refused_b=True, note="")
    >>> g.score_x in (2, -2), store.progress(r)
    (True, (1, 1))
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.orm import Mapped, mapped_column

from valign.errors import ValignError
from valign.evals.pairwise import LEVEL_SCORES, LEVELS
from valign.review.pairs import ReviewPair, pairs_digest
from valign.survey.db import Base, Database, Setting, make_engine, migrate, new_token, token_hash
from valign.web.database import UTCDateTime, utcnow

__all__ = ["PairRow", "Reviewer", "Grade", "ReviewStore", "sides", "score_for_x", "PAIRS_SETTING"]

PAIRS_SETTING = "review_pairs_digest"  # in the survey's ``settings`` table: which pairs this database reviews


class PairRow(Base):
    """A case to grade (X: the answer scored; its model names are never shown)."""

    __tablename__ = "review_pairs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[str] = mapped_column(String(200), unique=True)
    prompt: Mapped[str] = mapped_column(Text)
    answer_x: Mapped[str] = mapped_column(Text)
    answer_y: Mapped[str] = mapped_column(Text)
    model_x: Mapped[str] = mapped_column(String(300))
    model_y: Mapped[str] = mapped_column(String(300))
    position: Mapped[int] = mapped_column(Integer)  # order in the source


class Reviewer(Base):
    """One invitation = one reviewer, known to exports only by ``public_id``."""

    __tablename__ = "reviewers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    seed: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Grade(Base):
    """A reviewer's grade of one pair, as shown (``level``, ``x_first``) and for X (``score_x``)."""

    __tablename__ = "review_grades"
    __table_args__ = (UniqueConstraint("reviewer_id", "pair_id", name="uq_review_grades_reviewer_pair"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id", ondelete="CASCADE"))
    pair_id: Mapped[int] = mapped_column(ForeignKey("review_pairs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(8))
    x_first: Mapped[bool] = mapped_column(Boolean)
    score_x: Mapped[int] = mapped_column(Integer)
    refused_x: Mapped[bool] = mapped_column(Boolean)
    refused_y: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    graded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def sides(seed: int, pair_ids: list[int]) -> tuple[list[int], dict[int, bool]]:
    """A reviewer's case order and, per pair, whether X is shown as answer A.

    Example:
        >>> order, x_first = sides(7, [1, 2, 3])
        >>> sorted(order), sides(7, [1, 2, 3]) == (order, x_first)
        ([1, 2, 3], True)
    """
    rng = random.Random(seed)
    order = sorted(pair_ids)
    rng.shuffle(order)
    return order, {pid: rng.random() < 0.5 for pid in sorted(pair_ids)}


def score_for_x(level: str, x_first: bool) -> int:
    """The score of X that a level chosen on the page means (−2 … +2).

    Example:
        >>> score_for_x("A>B", True), score_for_x("A>B", False), score_for_x("B>>A", False)
        (1, -1, 2)
    """
    if level not in LEVEL_SCORES:
        raise ValignError(f"'{level[:20]}' is not a grade; choose one of {', '.join(LEVELS)}.")
    return LEVEL_SCORES[level] if x_first else -LEVEL_SCORES[level]


@dataclass(frozen=True)
class ReviewerState:
    """What a page needs of its reviewer."""

    id: int
    public_id: str
    seed: int


class ReviewStore:
    """The review tables of one database, with sessions from `valign.survey.db.Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, url: str, *, migrate_first: bool = True, pool_size: int = 10) -> "ReviewStore":
        """The store of a database URL (or SQLite path), migrated to the newest revision."""
        engine = make_engine(url, pool_size=pool_size)
        if migrate_first:
            migrate(engine)
        return cls(Database(engine))

    # pairs -------------------------------------------------------------------------------

    def load(self, pairs: list[ReviewPair]) -> int:
        """Store the pairs to review (once per database); the number stored.

        Loading the same pairs again changes nothing; different pairs are refused."""
        digest = pairs_digest(pairs)
        existing = self.db.setting(PAIRS_SETTING)
        if existing == digest:
            return len(pairs)
        if existing is not None:
            raise ValignError("this database already holds the review of other pairs; give another --db for a new review (its grades stay where they are).")
        with self.db.write() as s:
            for i, p in enumerate(pairs):
                s.add(PairRow(case_id=p.case_id, prompt=p.prompt, answer_x=p.answer_x, answer_y=p.answer_y, model_x=p.model_x, model_y=p.model_y, position=i))
            s.add(Setting(key=PAIRS_SETTING, value=digest))
        return len(pairs)

    def pairs(self) -> list[PairRow]:
        with self.db.read() as s:
            return list(s.scalars(select(PairRow).order_by(PairRow.position)))

    def pair(self, pair_id: int) -> PairRow | None:
        with self.db.read() as s:
            return s.get(PairRow, pair_id)

    # reviewers -----------------------------------------------------------------------------

    def invite(self, n: int) -> list[str]:
        """Make ``n`` reviewers; their invitation tokens (shown once, never stored)."""
        if n < 1:
            raise ValignError(f"cannot invite {n} reviewers; give --n 1 or more.")
        tokens = [new_token() for _ in range(n)]
        with self.db.write() as s:
            for t in tokens:
                s.add(Reviewer(public_id=secrets.token_hex(8), token_hash=token_hash(t), seed=secrets.randbelow(2**31)))
        return tokens

    def reviewer_by_token(self, token: str) -> ReviewerState | None:
        with self.db.read() as s:
            r = s.scalars(select(Reviewer).where(Reviewer.token_hash == token_hash(token))).one_or_none()
            return ReviewerState(r.id, r.public_id, r.seed) if r else None

    def reviewer(self, public_id: str) -> ReviewerState | None:
        with self.db.read() as s:
            r = s.scalars(select(Reviewer).where(Reviewer.public_id == public_id)).one_or_none()
            return ReviewerState(r.id, r.public_id, r.seed) if r else None

    def order(self, r: ReviewerState) -> list[int]:
        """The reviewer's pair ids in the order they are shown."""
        with self.db.read() as s:
            ids = list(s.scalars(select(PairRow.id)))
        return sides(r.seed, ids)[0]

    def x_first(self, r: ReviewerState, pair_id: int) -> bool:
        """Whether X is answer A for this reviewer on this pair (the grade, once saved, records it)."""
        with self.db.read() as s:
            ids = list(s.scalars(select(PairRow.id)))
            saved = s.scalars(select(Grade.x_first).where(Grade.reviewer_id == r.id, Grade.pair_id == pair_id)).one_or_none()
        return saved if saved is not None else sides(r.seed, ids)[1][pair_id]

    # grades ----------------------------------------------------------------------------------

    def grade(self, reviewer_id: int, pair_id: int) -> Grade | None:
        with self.db.read() as s:
            return s.scalars(select(Grade).where(Grade.reviewer_id == reviewer_id, Grade.pair_id == pair_id)).one_or_none()

    def graded(self, reviewer_id: int) -> set[int]:
        with self.db.read() as s:
            return set(s.scalars(select(Grade.pair_id).where(Grade.reviewer_id == reviewer_id)))

    def save_grade(self, reviewer_id: int, pair_id: int, level: str, *, refused_a: bool, refused_b: bool, note: str) -> Grade:
        """Save (or revise) a grade given on the page, in the page's A/B terms.

        The same form sent twice at once (a double click): the second insert meets the
        unique (reviewer, pair) row the first made, and is retried as a revision."""
        from sqlalchemy.exc import IntegrityError

        try:
            return self._save_grade(reviewer_id, pair_id, level, refused_a=refused_a, refused_b=refused_b, note=note)
        except IntegrityError:
            return self._save_grade(reviewer_id, pair_id, level, refused_a=refused_a, refused_b=refused_b, note=note)

    def _save_grade(self, reviewer_id: int, pair_id: int, level: str, *, refused_a: bool, refused_b: bool, note: str) -> Grade:
        with self.db.write() as s:
            r = s.get(Reviewer, reviewer_id)
            if r is None or s.get(PairRow, pair_id) is None:
                raise ValignError("that reviewer or pair does not exist in this review.")
            g = s.scalars(select(Grade).where(Grade.reviewer_id == reviewer_id, Grade.pair_id == pair_id)).one_or_none()
            x_first = g.x_first if g is not None else sides(r.seed, list(s.scalars(select(PairRow.id))))[1][pair_id]
            values = {
                "level": level,
                "x_first": x_first,
                "score_x": score_for_x(level, x_first),
                "refused_x": refused_a if x_first else refused_b,
                "refused_y": refused_b if x_first else refused_a,
                "note": note or None,
                "graded_at": utcnow(),
            }
            if g is None:
                g = Grade(reviewer_id=reviewer_id, pair_id=pair_id, **values)
                s.add(g)
            else:
                for k, v in values.items():
                    setattr(g, k, v)
            s.flush()
            done = s.query(Grade).filter(Grade.reviewer_id == reviewer_id).count()
            if done >= s.query(PairRow).count() and r.finished_at is None:
                r.finished_at = utcnow()
        return g

    def progress(self, r: ReviewerState) -> tuple[int, int]:
        """(pairs graded, pairs in all)."""
        with self.db.read() as s:
            total = s.query(PairRow).count()
            done = s.query(Grade).filter(Grade.reviewer_id == r.id).count()
        return done, total

    def all_grades(self) -> list[tuple[Grade, PairRow, str]]:
        """Every grade with its pair and its reviewer's public id, by case then reviewer."""
        with self.db.read() as s:
            rows = s.execute(
                select(Grade, PairRow, Reviewer.public_id).join(PairRow, Grade.pair_id == PairRow.id).join(Reviewer, Grade.reviewer_id == Reviewer.id).order_by(PairRow.position, Reviewer.public_id)
            ).all()
        return [(g, p, rid) for g, p, rid in rows]
