"""Alembic migrations of the survey database; run them with `valign.survey.db.migrate`
or ``valign survey migrate``. New revisions: ``alembic -c <ini with script_location
pointing here> revision -m "..."``, then edit the generated file."""
