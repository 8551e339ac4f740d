"""Evaluation: key cases, MT-Bench, safety, the report, and inspect_ai tasks.

One concept per module:

* `valign.evaluate.refusal` — the rule-based refusal detector;
* `valign.evaluate.pairwise` — five-level pairwise grading in both orders;
* `valign.evaluate.keycases` — moral and autonomy prompts answered side by side;
* `valign.evaluate.mtbench` — MT-Bench with FastChat's files, prompts and formats;
* `valign.evaluate.safety` — refusal rates on held-out red-team and benign-edgy prompts;
* `valign.evaluate.report` — the self-contained HTML report, built from section renderers;
* `valign.evaluate.inspect_tasks` — the same evaluations as inspect_ai tasks, and
  `valign.evaluate.inspect_provider`, the ``valign/<spec>`` inspect model provider.

The `evaluate` and `report` pipeline stages live in `valign.stages`.

Example:
    >>> from valign.evaluate import is_refusal, parse_rating
    >>> is_refusal("I'm sorry, but I can't help with that."), parse_rating("Rating: [[8]]")
    (True, 8)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported on first use: the report pulls in matplotlib and jinja2, inspect_tasks inspect_ai.
_EXPORTS = {
    "detect_refusal": "valign.evaluate.refusal",
    "is_refusal": "valign.evaluate.refusal",
    "judge_pairwise": "valign.evaluate.pairwise",
    "PairItem": "valign.evaluate.pairwise",
    "PairwiseConfig": "valign.evaluate.pairwise",
    "load_keycases": "valign.evaluate.keycases",
    "KeyCasesConfig": "valign.evaluate.keycases",
    "load_mtbench": "valign.evaluate.mtbench",
    "parse_rating": "valign.evaluate.mtbench",
    "aggregate": "valign.evaluate.mtbench",
    "MTBenchConfig": "valign.evaluate.mtbench",
    "SafetyConfig": "valign.evaluate.safety",
    "refusal_rates": "valign.evaluate.safety",
    "wilson_interval": "valign.evaluate.safety",
    "render_report": "valign.evaluate.report",
    "register_section": "valign.evaluate.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'valign.evaluate' has no attribute {name!r}")
