"""The survey database on SQLite and PostgreSQL: migrations from empty, upserts, frames."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from tests.survey_helpers import DB_BACKENDS, postgres_database
from valign.survey.db import Answer, Base, Database, PageEvent, Respondent, head_revision, load_frames, make_engine, migrate, schema_revision
from valign.survey.frames import ANSWER_COLUMNS, RESPONDENT_COLUMNS
from valign.survey.instrument import load_instrument
from valign.review.store import Grade, PairRow, Reviewer  # the review's tables share the survey's metadata and chain


@pytest.fixture(params=DB_BACKENDS)
def engine(request, tmp_path):
    if request.param == "sqlite":
        e = make_engine(f"sqlite:///{tmp_path / 'survey.db'}")
        yield e
        e.dispose()
    else:
        with postgres_database() as url:
            e = make_engine(url)
            yield e
            e.dispose()


def test_migrations_from_empty_build_exactly_the_models_schema(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert schema_revision(engine) is None
    migrate(engine)
    migrate(engine)  # idempotent
    assert schema_revision(engine) == head_revision()
    names = set(inspect(engine).get_table_names())
    review = {t.__tablename__ for t in (PairRow, Reviewer, Grade)}  # expert review (valign.review.store), revision 0007
    assert names == {"respondents", "answers", "invitations", "proposals", "page_events", "settings", "erasure_log", "alembic_version", *review}, "no feedback tables: valign.feedback owns those"
    uniques = {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("answers")}
    assert ("respondent_id", "item_id") in uniques
    assert ("invitation_id",) in {tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints("respondents")}
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_answers_upsert_per_respondent_and_item_and_frames_follow_the_contract(engine):
    migrate(engine)
    db = Database(engine)
    inst = load_instrument("demo")
    with db.write() as s:
        r = Respondent(public_id="r1", resume_hash="h1", instrument_id=inst.id, instrument_fingerprint=inst.fingerprint(), seed=1)
        s.add(r)
        s.flush()
        db.upsert_answers(s, r.id, [
            {"item_id": "age_group", "kind": "demographic", "choice": "18-29", "strength": None, "text": None},
            {"item_id": "sc-diet", "kind": "scenario", "choice": "b", "strength": 2, "text": None},
        ])
        s.add(PageEvent(respondent_id=r.id, page="values-1", items=2, seconds=12.5))
    with db.write() as s:  # the same page submitted again: updated, not duplicated
        db.upsert_answers(s, r.id, [{"item_id": "age_group", "kind": "demographic", "choice": "30-44", "strength": None, "text": None}])
    with db.read() as s:
        assert s.query(Answer).count() == 2
    frames = load_frames(engine, inst)
    resp, ans = frames.respondents, frames.answers
    assert list(resp.columns) == frames.margins + RESPONDENT_COLUMNS and resp.index.name == "respondent_id"
    assert resp.loc["r1", "age_group"] == "30-44" and resp.loc["r1", "sex"] is None
    assert resp.loc["r1", "seconds"] == 12.5 and not resp.loc["r1", "completed"] and not resp.loc["r1", "synthetic"]
    assert str(resp["started_at"].dt.tz) == "UTC"
    assert list(ans.columns) == ANSWER_COLUMNS
    scen = ans[ans["item_id"] == "sc-diet"].iloc[0]
    assert scen["choice"] == "b" and scen["strength"] == 2 and scen["kind"] == "scenario"
    assert frames.choices("scenario").loc["r1", "sc-diet"] == "b"
