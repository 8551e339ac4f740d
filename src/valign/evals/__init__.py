"""Evaluation: the suites, the report, and the same suites as inspect_ai tasks.

A suite is one module that ends in its registry entry (`valign.evals.suite.Suite`:
settings, fingerprint, run, counts, report section, inspect task), listed in
`valign.evals.suites`:

* `valign.evals.keycases` — moral and autonomy prompts answered side by side;
* `valign.evals.mtbench` — MT-Bench with FastChat's files, prompts and formats;
* `valign.evals.safety` — refusal rates on held-out red-team and benign-edgy prompts;
* `valign.evals.fidelity` — how closely a model's answers match the survey population's;
* `valign.evals.bench_xstest`, ``bench_orbench``, ``bench_strongreject``,
  ``bench_harmbench`` — published safety benchmarks, opt-in (what they share:
  `valign.evals.safety_bench`; their inspect tasks: ``safety_bench_task.py``).

Each module holds its report section too; its inspect task is in ``<suite>_task.py``
(inspect_ai is optional). What the suites share:

* `valign.evals.refusal` — the rule-based refusal detector;
* `valign.evals.suite_classifier` — a suite's ``classifier`` setting (`valign.evals.classifiers`);
* `valign.evals.pairwise` — five-level pairwise grading in both orders;
* `valign.evals.report` — the self-contained HTML report: the run's own sections and
  each suite's (`valign.evals.rundata`, `valign.evals.section`, `valign.evals.plots`);
* `valign.evals.inspect_tasks` — every suite's inspect task (`valign.evals.inspect_support`),
  and `valign.evals.inspect_provider`, the ``valign/<spec>`` inspect model provider.

The `evaluate` and `report` pipeline stages live in `valign.stages`.

Example:
    >>> from valign.evals import is_refusal, parse_rating
    >>> is_refusal("I'm sorry, but I can't help with that."), parse_rating("Rating: [[8]]")
    (True, 8)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported on first use: the report pulls in matplotlib and jinja2, the suites the datasets.
_EXPORTS = {
    "detect_refusal": "valign.evals.refusal",
    "is_refusal": "valign.evals.refusal",
    "judge_pairwise": "valign.evals.pairwise",
    "PairItem": "valign.evals.pairwise",
    "PairwiseConfig": "valign.evals.pairwise",
    "load_keycases": "valign.evals.keycases",
    "KeyCasesConfig": "valign.evals.keycases",
    "load_mtbench": "valign.evals.mtbench",
    "parse_rating": "valign.evals.mtbench",
    "aggregate": "valign.evals.mtbench",
    "MTBenchConfig": "valign.evals.mtbench",
    "SafetyConfig": "valign.evals.safety",
    "refusal_rates": "valign.evals.safety",
    "wilson_interval": "valign.evals.intervals",
    "FidelityConfig": "valign.evals.fidelity",
    "score_fidelity": "valign.evals.fidelity",
    "Suite": "valign.evals.suite",
    "SUITES": "valign.evals.suites",
    "render_report": "valign.evals.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'valign.evals' has no attribute {name!r}")
