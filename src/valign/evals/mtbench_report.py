"""The report's "MT-Bench" section: a radar chart (bars for fewer than three
categories) and a table per category, per turn and overall, base vs tuned, plus every
question's scores.

Example (after ``make demo``)::

    mtbench_section(load_run("runs/kantian-demo"), ReportEnv()).title   # 'MT-Bench'
"""

from __future__ import annotations

import math
from typing import Any

from valign.evals.plots import BASE_COLOR, TUNED_COLOR, pyplot
from valign.evals.rundata import RunData
from valign.evals.section import ReportEnv, Section

__all__ = ["mtbench_section"]


def mtbench_section(run: RunData, env: ReportEnv) -> Section | None:
    """MT-Bench: a radar chart and a table per category, per turn and overall, base vs tuned."""
    ev = run.manifest("evaluate") or {}
    mt = ev.get("mtbench")
    if not mt or not mt.get("results"):
        return None
    names = ev.get("names") or {"base": "base", "tuned": "tuned"}
    order = [names["base"], names["tuned"]]
    results = {m: mt["results"].get(m) or {} for m in order}
    categories: list[str] = []
    for m in order:
        for c in results[m].get("categories") or {}:
            if c not in categories:
                categories.append(c)
    return Section(
        "mtbench",
        "MT-Bench",
        env.render(
            "mtbench.html.j2",
            mt=mt,
            order=order,
            results=results,
            chart=_chart(categories, order, results, names, env),
            table=_table(categories, order, results),
            questions=_questions(run, mt),
        ),
    )


def _chart(categories: list[str], order: list[str], results: dict[str, Any], names: dict[str, str], env: ReportEnv) -> dict[str, str] | None:
    plotted = [c for c in categories if all((results[m].get("categories") or {}).get(c) is not None for m in order)]
    if not plotted:
        return None
    colors = {names["base"]: BASE_COLOR, names["tuned"]: TUNED_COLOR}
    series = {m: [results[m]["categories"][c] for c in plotted] for m in order}
    # A radar needs three spokes to enclose an area; fewer categories get bars.
    fig = _radar(plotted, series, colors) if len(plotted) >= 3 else _bars(plotted, series, colors)
    desc = "; ".join(f"{c}: {names['base']} {series[order[0]][i]:.2f}, {names['tuned']} {series[order[1]][i]:.2f}" for i, c in enumerate(plotted))
    return {"src": env.figure(fig), "alt": f"MT-Bench mean score per category. {desc}"}


def _table(categories: list[str], order: list[str], results: dict[str, Any]) -> list[dict[str, Any]]:
    table = []
    for c in categories:
        vals = [(results[m].get("categories") or {}).get(c) for m in order]
        table.append({"label": c, "cells": vals, "delta": _delta(vals)})
    for t in ("1", "2"):
        vals = [(results[m].get("turns") or {}).get(t) for m in order]
        table.append({"label": f"turn {t}", "cells": vals, "delta": _delta(vals), "total": True})
    vals = [results[m].get("overall") for m in order]
    table.append({"label": "overall", "cells": vals, "delta": _delta(vals), "total": True})
    return table


def _questions(run: RunData, mt: dict[str, Any]) -> list[dict[str, Any]]:
    judgments = [r["record"] for r in run.rows("evaluate") if r.get("type") == "mtbench_judgment"]
    per_q: dict[Any, dict[str, Any]] = {}
    for j in judgments:
        if j["question_id"] in set(mt.get("question_ids") or [j["question_id"]]):
            q = per_q.setdefault(j["question_id"], {"id": j["question_id"], "category": j.get("category"), "scores": {}})
            q["scores"][(j["model"], j["turn"])] = j["score"]
    return sorted(per_q.values(), key=lambda q: q["id"])


def _delta(vals: list[Any]) -> float | None:
    return None if any(v is None for v in vals) else round(vals[1] - vals[0], 4)


def _radar(categories: list[str], series: dict[str, list[float]], colors: dict[str, str]) -> Any:
    plt = pyplot()
    angles = [2 * math.pi * i / len(categories) for i in range(len(categories))]
    fig = plt.figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot(111, polar=True)
    ax.set_theta_offset(math.pi / 2)  # the first category at the top, then clockwise
    ax.set_theta_direction(-1)
    for name, values in series.items():
        ax.plot(angles + angles[:1], values + values[:1], color=colors[name], linewidth=2, label=name)
        ax.fill(angles + angles[:1], values + values[:1], color=colors[name], alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels(categories)
    ax.set_ylim(0, 10)
    ax.set_yticks([2, 4, 6, 8, 10])
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), frameon=False)
    return fig


def _bars(categories: list[str], series: dict[str, list[float]], colors: dict[str, str]) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(categories))], values, width, color=colors[name], label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(categories))])
    ax.set_xticklabels(categories)
    ax.set_ylim(0, 10)
    ax.set_ylabel("mean score")
    ax.legend(frameon=False)
    return fig
