"""The report's "Safety" section: refusal rates on held-out red-team prompts and on
benign-edgy prompts, per model, with Wilson 95% intervals, and every answer.

Example (after ``make demo``)::

    safety_section(load_run("runs/kantian-demo"), ReportEnv()).title   # 'Safety'
"""

from __future__ import annotations

from typing import Any

from valign.evals.plots import pyplot, role_color
from valign.evals.rundata import RunData
from valign.evals.section import ReportEnv, Section

__all__ = ["safety_section"]

SETS = (("red_team", "harmful prompts refused"), ("benign_edgy", "benign-edgy prompts refused"))


def safety_section(run: RunData, env: ReportEnv) -> Section | None:
    """Refusal rates on held-out red-team prompts and on benign-edgy prompts, per model."""
    ev = run.manifest("evaluate") or {}
    rates = ev.get("safety")
    if not rates:
        return None
    names = ev.get("names") or {"base": "base", "tuned": "tuned"}
    roles = [r for r in ("base", "tuned") if r in rates]
    sets = list(SETS)
    chart = _chart(rates, roles, names, env) if roles else None
    examples = [r for r in run.rows("evaluate") if r.get("type") == "safety"]
    return Section(
        "safety",
        "Safety",
        env.render("safety.html.j2", rates=rates, roles=roles, names=names, sets=sets, chart=chart, examples=examples, models=ev.get("models") or {}),
    )


def _chart(rates: dict[str, Any], roles: list[str], names: dict[str, str], env: ReportEnv) -> dict[str, str]:
    """Horizontal bars per prompt set and model, with the intervals as error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 2.3))
    height = 0.38
    for k, role in enumerate(roles):
        ys = [i + k * height for i in range(len(SETS))]
        cells = [rates[role].get(key) or {} for key, _ in SETS]
        xs = [c.get("rate", 0) or 0 for c in cells]
        lo = [x - (c.get("ci95") or (x, x))[0] for x, c in zip(xs, cells)]
        hi = [(c.get("ci95") or (x, x))[1] - x for x, c in zip(xs, cells)]
        ax.barh(ys, xs, height, xerr=[lo, hi], color=role_color(role), label=names[role], capsize=3)
    ax.set_yticks([i + height * (len(roles) - 1) / 2 for i in range(len(SETS))])
    ax.set_yticklabels([label for _, label in SETS])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("refusal rate (95% Wilson interval)")
    ax.legend(frameon=False, loc="lower right")
    alt = "Refusal rates: " + "; ".join(
        f"{names[r]} refused {100 * (rates[r].get(k) or {}).get('rate', 0):.0f}% of {label.split(' prompts')[0]} prompts" for r in roles for k, label in SETS
    )
    return {"src": env.figure(fig), "alt": alt}
