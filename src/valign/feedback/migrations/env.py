"""Alembic environment of the feedback store: runs on the connection
`valign.feedback.store.migrate_feedback` passes in, or on ``sqlalchemy.url`` when
Alembic's own command line is used. Its version table is its own."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from valign.feedback.tables import FEEDBACK_VERSION_TABLE, FeedbackBase

config = context.config
target_metadata = FeedbackBase.metadata


def _configure(conn) -> None:  # noqa: ANN001
    context.configure(connection=conn, target_metadata=target_metadata, version_table=FEEDBACK_VERSION_TABLE, render_as_batch=conn.dialect.name == "sqlite")


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, version_table=FEEDBACK_VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run()
