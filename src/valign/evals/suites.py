"""The evaluation suites, by name: the one list the rest of valign reads them from.

`SUITES` maps each name to its `Suite` entry, in the order of the manifest's counts,
the ``evaluate`` config's fields and the report's suite sections. `EvaluateConfig`
gets one settings field per suite and accepts exactly these names in
``evaluate.suites``; the `evaluate` stage and ``valign eval`` run them, the report
shows their sections, and `valign.evals.inspect_tasks` registers their inspect tasks.

To add a suite, write one module — its settings, how it runs, its report section —
that ends in a `Suite` entry (like `valign.evals.safety`), and add it here; its
inspect_ai task goes in a ``<suite>_task.py`` beside it, since inspect_ai is an
optional dependency that only `valign.evals.inspect_tasks` imports.

Example:
    >>> list(SUITES)
    ['keycases', 'mtbench', 'safety', 'fidelity', 'xstest', 'orbench', 'strongreject', 'harmbench']
    >>> [name for name, s in SUITES.items() if s.default]
    ['keycases', 'mtbench', 'safety']
"""

from __future__ import annotations

from typing import Iterable

from valign.errors import ValignError
from valign.evals import bench_harmbench, bench_orbench, bench_strongreject, bench_xstest, fidelity, keycases, mtbench, safety
from valign.evals.suite import Suite

__all__ = ["SUITES", "suite", "unknown_suite"]

SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        keycases.SUITE,
        mtbench.SUITE,
        safety.SUITE,
        fidelity.SUITE,
        # The safety benchmarks (`valign.evals.safety_bench`): opt-in, each names its data.
        bench_xstest.SUITE,
        bench_orbench.SUITE,
        bench_strongreject.SUITE,
        bench_harmbench.SUITE,
    )
}


def unknown_suite(name: str, known: Iterable[str] = SUITES) -> str:
    """The message for a suite name no entry has (``known``: the names there are).

    Example:
        >>> unknown_suite("mmlu")
        "unknown suite 'mmlu'; the suites are keycases, mtbench, safety, fidelity, xstest, orbench, strongreject, harmbench"
    """
    return f"unknown suite {name!r}; the suites are {', '.join(known)}"


def suite(name: str) -> Suite:
    """The suite of that name.

    Example:
        >>> suite("mtbench").paths
        ('data',)
    """
    if name not in SUITES:
        raise ValignError(unknown_suite(name) + ".")
    return SUITES[name]
