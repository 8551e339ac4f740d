"""Expert review: people grade the key-case answer pairs of a finished evaluation blind,
side by side, on the AI judge's five-level scale; their grades are merged with the
judge's and measured against it.

* `valign.review.pairs` — the pairs to grade (a run's key cases, or a JSONL file).
* `valign.review.store` — the review tables (survey database, migration ``0007``),
  invitations, each reviewer's random order and answer sides, the grades.
* `valign.review.app` — the blinded, server-rendered review pages.
* `valign.review.agreement` — Krippendorff's alpha, weighted kappa, judge vs consensus.
* `valign.review.verdicts` — per-case human verdicts, the seed's counts, agreement.
* `valign.review.export` — grades as JSONL/CSV, human-labelled pairs, the summary.
* `valign.review.section` — the human verdicts in the report's key-case section.
* `valign.review.cli` — ``valign review serve|invite|export``.
"""
