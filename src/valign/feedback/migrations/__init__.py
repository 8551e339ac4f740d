"""Alembic migrations of the feedback store's tables; run them with
`valign.feedback.store.migrate_feedback` (every `FeedbackStore` does on open). The
chain's version table is ``feedback_alembic_version``, so it lives beside the survey's
chain (``alembic_version``) in a shared database without either touching the other."""
