"""The public values survey: instruments, the web app, its database, quality checks,
weighting to census margins, analysis and export (seed 001).

Where things are:

* the questionnaire: `instrument` (YAML → `Instrument`), `flow` (its pages),
  `scoring_keys` and `scoring` (value scores);
* the web app: `app` (public pages), `withdraw` (a respondent's ``/withdraw``),
  `admin` (``/admin``), `state` (what they share), `render` (its templates); the defences come from the shared web layer, `valign.web`;
* the data: `db` (tables, migrations in ``migrations/``), `erasure` (withdrawal,
  admin erasure, retention, the erasure log), `frames` (the two-table
  contract everything downstream reads), `quality`, `margins`, `weighting`,
  `analysis`, `consensus`, `opinion`;
* one module per command where a command is its own step: `data` (``valign survey
  data``: the respondent-level file), `export` (``valign survey export`` and the
  `survey` stage: constitution, training rows, evaluation set), `simulate`
  (``valign survey simulate``); `cli` holds the commands themselves.
"""
