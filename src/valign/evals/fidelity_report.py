"""The report's "Survey fidelity" section: whom each model sounds like.

Reads the ``fidelity`` rows and summary of the `evaluate` stage (`valign.evals.fidelity`)
and shows, per subgroup and for the whole population, each model's representativeness
(1 − mean normalised Wasserstein distance over Likert items), nominal similarity and
overall fidelity, as a chart per grouping variable and a table, plus every item's distance for
both models.

Example (after ``make public-demo``)::

    fidelity_section(load_run("runs/public-values-demo"), ReportEnv()).title   # 'Survey fidelity'
"""

from __future__ import annotations

from typing import Any

from valign.evals.plots import pyplot, role_color
from valign.evals.rundata import RunData
from valign.evals.section import ReportEnv, Section

__all__ = ["fidelity_section"]

MEASURES = (("representativeness", "Representativeness"), ("nominal_similarity", "Nominal similarity"), ("fidelity", "Fidelity"))


def fidelity_section(run: RunData, env: ReportEnv) -> Section | None:
    """Representativeness, nominal similarity and fidelity per subgroup and model, and every item's distance."""
    ev = run.manifest("evaluate") or {}
    summary = ev.get("fidelity")
    rows = {r["role"]: r for r in run.rows("evaluate") if r.get("type") == "fidelity"}
    if not summary or not rows:
        return None
    names = ev.get("names") or {"base": "base", "tuned": "tuned"}
    roles = [r for r in ("base", "tuned") if r in summary]
    groups = list(summary[roles[0]].keys())  # "all" first, then "<variable>=<group>"
    measure = "representativeness" if any(summary[roles[0]][g].get("representativeness") is not None for g in groups) else "fidelity"
    charts = _charts(summary, roles, groups, names, measure, env)
    items = _items(rows, roles)
    survey = run.manifest("survey") or {}
    return Section(
        "fidelity",
        "Survey fidelity",
        env.render_string(TEMPLATE, summary=summary, roles=roles, groups=groups, names=names, measures=MEASURES, charts=charts,
                          items=items, n_items=ev["fidelity"].get("items"), respondents=survey.get("respondents"), measure=measure),
    )


def _charts(summary: dict[str, Any], roles: list[str], groups: list[str], names: dict[str, str], measure: str, env: ReportEnv) -> list[dict[str, str]]:
    """One chart per grouping variable (sex, age group, …): a bar per subgroup and model,
    with everyone's value as a dashed line, so a model that fits the population on
    average but one group badly shows it."""
    variables: dict[str, list[str]] = {}
    for g in groups:
        if g != "all":
            variables.setdefault(g.split("=", 1)[0], []).append(g)
    return [_chart(summary, roles, members, names, measure, env, variable) for variable, members in variables.items()] or [
        _chart(summary, roles, ["all"], names, measure, env, None)
    ]


def _chart(summary: dict[str, Any], roles: list[str], groups: list[str], names: dict[str, str], measure: str, env: ReportEnv,
           variable: str | None) -> dict[str, str]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.2, 0.42 * len(groups) * len(roles) / 2 + 1.1))
    height = 0.38
    values = [summary[r][g].get(measure) for r in roles for g in groups] + [summary[r]["all"].get(measure) for r in roles]
    known = [v for v in values if v is not None]
    for k, role in enumerate(roles):
        color = role_color(role)
        ys = [i + k * height for i, g in enumerate(groups) if summary[role][g].get(measure) is not None]
        xs = [summary[role][g][measure] for g in groups if summary[role][g].get(measure) is not None]  # no bar where a group has no such items
        ax.barh(ys, xs, height, color=color, label=names[role])
        everyone = summary[role]["all"].get(measure)
        if variable is not None and everyone is not None:
            ax.axvline(everyone, color=color, linestyle="--", linewidth=1)
    ax.set_yticks([i + height * (len(roles) - 1) / 2 for i in range(len(groups))])
    ax.set_yticklabels(["everyone" if g == "all" else g.split("=", 1)[1] for g in groups])
    ax.invert_yaxis()
    ax.set_xlim(max(0.0, min(known, default=0.0) - 0.1), 1.0)
    ax.set_xlabel(f"{measure.replace('_', ' ')} (1 = the group's own answer distribution)")
    if variable is not None:
        ax.set_title(variable.replace("_", " "), loc="left", fontsize=10)
    ax.legend(frameon=False, loc="lower right")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    alt = f"{measure.replace('_', ' ').capitalize()} by {variable or 'everyone'}: " + "; ".join(
        f"{'everyone' if g == 'all' else g.split('=', 1)[1]}: " + ", ".join(f"{names[r]} {fmt(summary[r][g].get(measure))}" for r in roles)
        for g in groups
    )
    return {"src": env.figure(fig), "alt": alt, "variable": variable or "everyone"}


def _items(rows: dict[str, dict[str, Any]], roles: list[str]) -> list[dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for role in roles:
        for item in rows[role]["items"]:
            entry = by_id.setdefault(item["id"], {"id": item["id"], "kind": item["kind"], "ordinal": item["ordinal"], "population": item["population"]})
            entry[role] = item["distance"]
            entry[f"{role}_dist"] = item["model"]
    out = list(by_id.values())
    for e in out:
        e["delta"] = (e["tuned"] - e["base"]) if "tuned" in e and "base" in e else None
    return sorted(out, key=lambda e: (e["delta"] is None, e["delta"] or 0))


TEMPLATE = """
<p class="lead">How closely each model's answers to the survey's {{ n_items }} questions match the weighted answers of the population{% if respondents %} ({{ respondents.weighted }} weighted respondents){% endif %}, asked the OpinionQA way (the probability of each option's letter). Representativeness is 1 − the mean Wasserstein distance over ordered (Likert) options, divided by N−1; nominal similarity is 1 − the mean Jensen–Shannon distance over unordered options; fidelity is 1 − the mean of both. Each subgroup row compares the model with that group's own distribution.</p>
{% for chart in charts %}
<figure>
  <img src="{{ chart.src }}" alt="{{ chart.alt }}">
  <figcaption>{{ measure.replace('_', ' ') | capitalize }} by {{ chart.variable.replace('_', ' ') }}: each bar compares the model with that subgroup's own answers; the dashed lines are each model against everyone.</figcaption>
</figure>
{% endfor %}
<table>
  <caption>Fidelity per group and model</caption>
  <thead><tr><th scope="col">Group</th>{% for key, label in measures %}{% for role in roles %}<th scope="col" class="num">{{ label }}<br><span class="muted">{{ names[role] }}</span></th>{% endfor %}{% endfor %}</tr></thead>
  <tbody>
  {% for g in groups %}
    <tr><th scope="row">{{ "everyone" if g == "all" else g.replace("=", ": ") }}</th>
    {% for key, label in measures %}{% for role in roles %}<td class="num">{{ summary[role][g][key] | num(3) }}</td>{% endfor %}{% endfor %}</tr>
  {% endfor %}
  </tbody>
</table>
<details>
  <summary>Every item's distance ({{ items | length }}), most improved first</summary>
  <table>
    <caption>Distance to the population per item (lower is closer)</caption>
    <thead><tr><th scope="col">Item</th><th scope="col">Kind</th>{% for role in roles %}<th scope="col" class="num">{{ names[role] }}</th>{% endfor %}<th scope="col" class="num">Change</th><th scope="col">Population</th></tr></thead>
    <tbody>
    {% for e in items %}
      <tr><td><code>{{ e.id }}</code></td><td>{{ e.kind }}{% if e.ordinal %} (ordered){% endif %}</td>
      {% for role in roles %}<td class="num">{{ e[role] | num(3) }}</td>{% endfor %}
      <td class="num">{{ e.delta | num(3) }}</td><td class="muted">{% for p in e.population %}{{ "%.2f" | format(p) }}{% if not loop.last %} · {% endif %}{% endfor %}</td></tr>
    {% endfor %}
    </tbody>
  </table>
</details>
"""
