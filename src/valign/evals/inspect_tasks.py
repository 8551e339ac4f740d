"""valign's evaluation suites as inspect_ai tasks, one per suite of the registry.

For users who run their evals in inspect: the datasets, the refusal detector, FastChat's
MT-Bench judging, the five-level pairwise judge and the fidelity measures are the same
code ``valign eval`` uses, in inspect's idiom (a dataset of `Sample`s, a solver, a
scorer with metrics). Each suite's entry (`valign.evals.suites`) names its ``@task``;
importing this module (which inspect does through the ``inspect_ai`` entry point in
valign's ``pyproject.toml``) imports every one of them, so inspect knows them as
``valign/<suite>``, and registers the ``valign/<spec>`` model provider
(`valign.evals.inspect_provider`)::

    inspect eval valign/safety --model valign/embedded -T red_team=20
    inspect eval valign/mtbench --model valign/embedded -T questions=8 -T judge=openai/gpt-4o
    inspect eval valign/keycases --model valign/run:runs/kantian-demo/06-dpo \\
        -T baseline=valign/embedded -T judge=openai/gpt-4o
    inspect eval valign/fidelity --model valign/embedded -T items=runs/public-values-demo/01-survey/eval_items.jsonl

In Python, each task is an attribute of this module (``from valign.evals.inspect_tasks
import safety``). Judges default to inspect's ``grader`` model role, else the evaluated
model; with ``judge_mode=logprob`` the judge must be a valign model (``valign/<spec>``).

Example (runs the embedded model)::

    from inspect_ai import eval as inspect_eval
    logs = inspect_eval(safety(red_team=2, benign_edgy=2), model="valign/embedded")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable

import valign.evals.inspect_provider  # noqa: F401  (registers the valign/ model provider)
from valign.evals.suite import Suite
from valign.evals.suites import SUITES

__all__ = ["suite_task", "tasks"]


def suite_task(suite: Suite) -> Callable[..., Any]:
    """The suite's ``@task`` function (importing its module registers it with inspect)."""
    module, _, name = suite.inspect_task.partition(":")
    return getattr(import_module(module), name)


def tasks() -> dict[str, Callable[..., Any]]:
    """Every suite's inspect task, by suite name, in the registry's order."""
    return {name: suite_task(suite) for name, suite in SUITES.items()}


def __getattr__(name: str) -> Any:
    if name in SUITES:
        return suite_task(SUITES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


tasks()  # import them all now: inspect looks tasks up by name once this module is loaded
