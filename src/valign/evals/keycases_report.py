"""The report's "Key cases" section: both answers side by side, the verdict of both
orders, the improvement and any refusal, with the principles each case probes.

Example (after ``make demo``)::

    keycases_section(load_run("runs/kantian-demo"), ReportEnv()).title   # 'Key cases'
"""

from __future__ import annotations

from valign.evals.rundata import RunData
from valign.evals.section import ReportEnv, Section

__all__ = ["keycases_section"]


def keycases_section(run: RunData, env: ReportEnv) -> Section | None:
    """Key cases side by side: the two answers, the verdict, the improvement, refusals."""
    ev = run.manifest("evaluate") or {}
    summary = ev.get("keycases")
    cases = [r for r in run.rows("evaluate") if r.get("type") == "keycase"]
    if not summary or not cases:
        return None
    constitution = run.constitution()
    titles = {p.id: p.title or p.id for p in constitution.principles} if constitution is not None else {}
    return Section(
        "keycases",
        "Key cases",
        env.render("keycases.html.j2", summary=summary, cases=cases, titles=titles, models=ev.get("models") or {}),
    )
