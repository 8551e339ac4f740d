"""The feedback store's own tables and migrations, apart from the survey's: fresh
databases, a shared one, and databases from before the feedback store had its own
chain (its tables made by the survey chain's revision 0002), which must upgrade with
their feedback intact. No model is loaded here (the served flow is test_feedback.py)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import inspect, text

from valign.feedback import FeedbackError, FeedbackStore, feedback_revision, kto_rows_from_feedback, migrate_feedback
from valign.feedback.tables import FEEDBACK_VERSION_TABLE, FeedbackBase
from valign.survey.db import head_revision, make_engine, migrate, schema_revision

HI = [{"role": "user", "content": "Hi"}]
FEEDBACK_TABLES = {"served_completions", "feedback"}



def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _feedback_schema_diffs(engine: sa.Engine) -> list:
    """Differences between the database's feedback tables and the models (other tables ignored)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def ours(name, type_, parents) -> bool:  # noqa: ANN001
        if type_ == "schema":
            return True
        return (name if type_ == "table" else parents.get("table_name")) in FEEDBACK_TABLES

    opts = {"version_table": FEEDBACK_VERSION_TABLE, "include_name": ours}
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts=opts), FeedbackBase.metadata)


def test_a_new_feedback_database_holds_only_the_feedback_tables(db_url):
    store = FeedbackStore(db_url)
    FeedbackStore(db_url)  # opening again migrates nothing
    assert _tables(db_url) == FEEDBACK_TABLES | {FEEDBACK_VERSION_TABLE}, "no survey schema in a feedback database"
    assert feedback_revision(store.db.engine) == "feedback_0001" and schema_revision(store.db.engine) is None
    assert _feedback_schema_diffs(store.db.engine) == []
    store.db.engine.dispose()


def test_survey_and_feedback_share_a_database_each_with_its_own_chain(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    with pytest.raises(FeedbackError, match="holds no feedback tables"):
        kto_rows_from_feedback(db_url)
    store = FeedbackStore(db_url)
    store.record("c1:0", "m", HI, "Hello")
    store.rate("c1:0", "up")
    migrate(engine)
    assert schema_revision(engine) == head_revision() and feedback_revision(engine) == "feedback_0001"
    assert [r["label"] for r in kto_rows_from_feedback(db_url)] == [True]
    engine.dispose()
    store.db.engine.dispose()


def _database_before_the_feedback_chain(url: str) -> None:
    """What earlier valign left: the survey chain at 0002, whose revision made the
    feedback tables (copied here as it made them), and feedback in them."""
    engine = make_engine(url)
    migrate(engine, "0001")
    old = sa.MetaData()
    sa.Table(
        "served_completions", old,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("messages", sa.Text(), nullable=False),
        sa.Column("completion", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    sa.Table(
        "feedback", old,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("completion_id", sa.String(64), sa.ForeignKey("served_completions.id", name="fk_feedback_completion", ondelete="CASCADE"), nullable=False),
        sa.Column("rating", sa.String(4), nullable=False),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("completion_id", name="uq_feedback_completion_id"),
    )
    with engine.begin() as conn:
        old.create_all(conn)
        conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
        conn.execute(text("INSERT INTO served_completions VALUES ('old:0', 'm', '[{\"role\": \"user\", \"content\": \"Hi\"}]', 'Hullo', '2026-11-30 12:00:00')"))
        conn.execute(text("INSERT INTO feedback (completion_id, rating, correction, created_at, updated_at) VALUES ('old:0', 'down', 'Hello!', '2026-11-30 12:00:00', '2026-11-30 12:00:00')"))
    assert schema_revision(engine) == "0002" and feedback_revision(engine) is None
    engine.dispose()


def test_a_database_from_before_the_feedback_chain_upgrades_with_its_feedback(db_url):
    _database_before_the_feedback_chain(db_url)
    # Readers (a kto stage) read it as it is, before any store migrated it.
    assert [r["id"] for r in kto_rows_from_feedback(db_url)] == ["fb-old:0", "fb-old:0:correction"]
    store = FeedbackStore(db_url)  # adopts the tables: the feedback chain starts at its head
    engine = store.db.engine
    assert feedback_revision(engine) == "feedback_0001" and _feedback_schema_diffs(engine) == []
    assert store.rows()[0] | {"messages": None} == {
        "completion_id": "old:0", "model": "m", "messages": None, "completion": "Hullo", "rating": "down", "correction": "Hello!"
    }
    store.record("new:0", "m", HI, "Hi there")
    store.rate("new:0", "up")
    assert store.counts() == {"served": 2, "up": 1, "down": 1, "corrections": 1}
    # The survey chain goes on from 0002 (now an empty marker) and leaves the feedback alone.
    migrate(engine)
    migrate_feedback(engine)
    assert schema_revision(engine) == head_revision() and len(store.rows()) == 2
    assert {"respondents", "served_completions", "feedback", "alembic_version", FEEDBACK_VERSION_TABLE} <= _tables(db_url)
    engine.dispose()
