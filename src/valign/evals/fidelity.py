"""Survey fidelity: how closely a model's answer distribution matches the population's.

The model answers every item of a survey evaluation set (`valign.survey.opinion`) the
OpinionQA way: the option probabilities are those of each letter as the first token
of its answer (`ChatModel.choice_probs`). Per item, the distance to the population's
weighted distribution is

* for ordered options (Likert), the Wasserstein-1 distance between the two
  distributions over the option positions 0 … N−1, divided by N−1 so it lies in
  [0, 1] (Santurkar et al. 2023);
* for unordered options, the Jensen–Shannon distance (base 2, also in [0, 1]).

Representativeness is 1 − the mean normalised Wasserstein distance over ordinal items
(OpinionQA's measure); ``nominal_similarity`` is 1 − the mean Jensen–Shannon distance
over nominal items; ``fidelity`` is 1 − the mean distance over all items. Each is
given against the whole population and against each subgroup's distribution, so a
report shows whom the model sounds like.

As a suite (`SUITE`, not run unless named in ``evaluate.suites``): one row
``fidelity:<role>`` per model with its answer distribution on every item and its
distances, overall and per subgroup. The items are ``evaluate.fidelity.items`` (an
``eval_items.jsonl`` of ``valign survey export``), by default the run's `survey`
stage's.

Example:
    >>> wasserstein_ordinal([1, 0, 0], [0, 0, 1])
    1.0
    >>> round(js_distance([0.5, 0.5], [0.5, 0.5]), 6)
    0.0
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, model_serializer

from valign.errors import ValignError
from valign.evals.plots import pyplot, role_color
from valign.evals.rundata import RunData
from valign.evals.section import ReportEnv, Section
from valign.evals.suite import ROLES, Suite, SuiteRun, SuiteSetup
from valign.opinions.compare import compare_items
from valign.opinions.populations import expand, restrict
from valign.survey.opinion import OpinionItem, opinion_prompt, option_letters, read_items

__all__ = [
    "fidelity_section",
    "wasserstein_ordinal",
    "js_distance",
    "item_distance",
    "model_distributions",
    "FidelityResult",
    "score_fidelity",
    "ALL",
    "FidelityConfig",
    "describe_fidelity",
    "run_fidelity",
    "SUITE",
]

ALL = "all"  # the key of the whole population in FidelityResult.summary


class FidelityConfig(BaseModel):
    """Settings of the survey-fidelity suite (``evaluate.fidelity``): ``items`` is an
    evaluation set (``eval_items.jsonl`` of ``valign survey export``), by default the
    run's `survey` stage's, or one `valign opinions convert` wrote; ``kinds`` limits the
    item kinds (value, principle, scenario, rating, opinion; default all);
    ``populations`` chooses whom to compare with — group keys (``country=Japan``) or
    whole variables (``country``: every country), default every group of the items
    (`valign.opinions.populations.restrict`): items with none of them are left out.

    ``reference`` is a second evaluation set (a national survey converted with `valign
    opinions convert`) to set one's own survey beside: on the questions both asked, the
    report shows the survey's weighted distribution next to ``reference_population``'s
    (`valign.opinions.compare`); ``reference_match`` maps our item ids to the
    reference's where they differ (else equal ids or equal question texts match).

    Example (YAML):
        fidelity: {items: goqa.jsonl, populations: [country=Japan, country=Nigeria, country=United States]}
        fidelity: {reference: wvs7.jsonl, reference_population: country=NZL, reference_match: {family: Q1}}
    """

    model_config = ConfigDict(extra="forbid")

    items: str | None = None
    kinds: list[str] | None = None
    populations: list[str] | None = None
    reference: str | None = None
    reference_population: str = "all"
    reference_match: dict[str, str] = {}

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """The settings added with published opinion data are left out of the dump while at
        their defaults, so every run's fingerprint from before they existed still holds."""
        data = handler(self)
        for key, default in _LATER_DEFAULTS.items():
            if key in data and data[key] == default:
                del data[key]
        return data


_LATER_DEFAULTS: dict[str, Any] = {"populations": None, "reference": None, "reference_population": "all", "reference_match": {}}


def wasserstein_ordinal(p: Sequence[float], q: Sequence[float]) -> float:
    """W1 distance between two distributions over ordered positions 0…N−1, divided by N−1.

    Example:
        >>> wasserstein_ordinal([0.5, 0.5, 0], [0, 0.5, 0.5])
        0.5
    """
    if len(p) != len(q) or len(p) < 2:
        raise ValueError("wasserstein_ordinal needs two distributions over the same N ≥ 2 options")
    cdf_gap, total = 0.0, 0.0
    for a, b in zip(p[:-1], q[:-1]):
        cdf_gap += a - b
        total += abs(cdf_gap)
    return total / (len(p) - 1)


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen–Shannon distance (square root of the divergence, base 2), in [0, 1].

    Example:
        >>> js_distance([1, 0], [0, 1])
        1.0
    """
    if len(p) != len(q):
        raise ValueError("js_distance needs two distributions over the same options")
    sp, sq = sum(p), sum(q)
    p = [x / sp for x in p]
    q = [x / sq for x in q]
    m = [(a + b) / 2 for a, b in zip(p, q)]

    def kl(a: Sequence[float], b: Sequence[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, b) if x > 0)

    return math.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2))


def item_distance(item: OpinionItem, model: Sequence[float], target: Sequence[float]) -> float:
    """The item's distance: normalised W1 for ordinal options, JS distance otherwise."""
    return wasserstein_ordinal(model, target) if item.ordinal else js_distance(model, target)


def model_distributions(model: Any, items: list[OpinionItem]) -> list[list[float]]:
    """Each item's answer distribution under ``model`` (letters' first-token probabilities).

    Items are grouped by their number of options, since one `choice_probs` call scores
    one list of options.
    """
    out: list[list[float] | None] = [None] * len(items)
    by_size: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_size.setdefault(len(item.options), []).append(i)
    for idx in by_size.values():
        letters = option_letters(items[idx[0]])
        probs = model.choice_probs([opinion_prompt(items[i]) for i in idx], letters)
        for i, p in zip(idx, probs):
            out[i] = [p[letter] for letter in letters]
    return [d for d in out if d is not None]


@dataclass
class FidelityResult:
    """Per-item distances and the summaries, for one model.

    ``items`` rows: ``id``, ``kind``, ``ordinal``, ``model`` (its distribution),
    ``population``, ``distance`` and ``groups`` (group key → distance). ``summary``
    maps ``"all"`` and each group key to its representativeness, nominal similarity,
    fidelity and item counts.
    """

    model: str
    items: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "summary": self.summary, "items": self.items}


def score_fidelity(model: Any, items: list[OpinionItem], name: str | None = None) -> FidelityResult:
    """Ask ``model`` every item and compare with the population, overall and per subgroup.

    Example, on a survey stage's evaluation set::

        score_fidelity(load_model("embedded"), read_items("runs/pv/01-survey/eval_items.jsonl")).summary["all"]
    """
    dists = model_distributions(model, items)
    result = FidelityResult(name or getattr(model, "name", "model"))
    per_key: dict[str, list[tuple[bool, float]]] = {ALL: []}
    for item, dist in zip(items, dists):
        overall = item_distance(item, dist, item.distribution)
        per_key[ALL].append((item.ordinal, overall))
        groups = {}
        for key, g in item.groups.items():
            if g.n == 0:
                continue
            groups[key] = item_distance(item, dist, g.distribution)
            per_key.setdefault(key, []).append((item.ordinal, groups[key]))
        result.items.append(
            {"id": item.id, "kind": item.kind, "ordinal": item.ordinal, "model": [round(x, 6) for x in dist],
             "population": item.distribution, "distance": overall, "groups": groups}
        )
    result.summary = {key: _summarise(values) for key, values in per_key.items()}
    return result


def _summarise(values: list[tuple[bool, float]]) -> dict[str, float | int | None]:
    ordinal = [d for o, d in values if o]
    nominal = [d for o, d in values if not o]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "representativeness": None if not ordinal else 1 - mean(ordinal),
        "nominal_similarity": None if not nominal else 1 - mean(nominal),
        "fidelity": None if not values else 1 - mean([d for _, d in values]),
        "ordinal_items": len(ordinal),
        "nominal_items": len(nominal),
    }


# --------------------------------------------------------------------------- the suite


def describe_fidelity(setup: SuiteSetup) -> dict[str, Any]:
    """The digest of a named items file, for the fingerprint (the survey stage's own
    items are covered by that stage's fingerprint)."""
    fc: FidelityConfig = setup.settings
    out = {}
    for key, name in (("fidelity_items", fc.items), ("fidelity_reference", fc.reference)):
        if name:
            path = Path(name)
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else str(path)
    return out


def run_fidelity(ctx: SuiteRun) -> dict[str, Any]:
    """Each model's answer distribution on every item, compared with the population's."""
    fc: FidelityConfig = ctx.settings
    path = _items_path(fc, ctx.survey_items)
    items = [i for i in read_items(path) if fc.kinds is None or i.kind in fc.kinds]
    if not items:
        raise ValignError(f"{path} has no items of kinds {fc.kinds}; check evaluate.fidelity.kinds.")
    if fc.populations:
        items = restrict(items, fc.populations)
    for role in ROLES:
        if f"fidelity:{role}" not in ctx.rows.ids:
            ctx.console.print(f"evaluate: survey fidelity, {len(items)} items for {role} ({ctx.specs[role]})")
            result = score_fidelity(ctx.models.get(ctx.specs[role]), items, ctx.specs[role])
            ctx.rows.append([{"id": f"fidelity:{role}", "type": "fidelity", "role": role, "model": ctx.specs[role], **result.to_dict()}])
    found = {r["role"]: r for r in ctx.rows_of("fidelity")}
    chosen = {"populations": fc.populations} if fc.populations else {}
    if fc.reference:
        chosen["comparison"] = _comparison(fc, ctx.survey_items or path)
    return {"items": len(items), "kinds": sorted({i.kind for i in items}), **chosen, **{role: found[role]["summary"] for role in ROLES}}


def _comparison(fc: FidelityConfig, ours: Path) -> dict[str, Any]:
    """The survey's items beside the reference population's, on the questions both asked."""
    reference = read_items(fc.reference)  # type: ignore[arg-type]
    if fc.reference_population != "all":
        expand(reference, [fc.reference_population])  # an unknown population names the known ones
    survey = {item.id: item for item in read_items(ours)}
    result = compare_items(list(survey.values()), reference, fc.reference_population, fc.reference_match)
    for row in result.rows:
        row["distance"] = item_distance(survey[row["id"]], row["ours"], row["reference"])
    return {**result.to_dict(), "ours": str(ours), "reference": fc.reference}


def _items_path(fc: FidelityConfig, survey_items: Path | None) -> Path:
    if fc.items:
        return Path(fc.items)
    if survey_items is None:
        raise ValignError("the fidelity suite needs survey items: add a `survey` stage before evaluate, or set evaluate.fidelity.items to an eval_items.jsonl.")
    return survey_items


# -- the report section ---------------------------------------------------------------


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
                          items=items, n_items=ev["fidelity"].get("items"), respondents=survey.get("respondents"), measure=measure,
                          populations=ev["fidelity"].get("populations"), comparison=ev["fidelity"].get("comparison")),
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
{% if populations %}<p>Populations compared: {{ populations | join(", ") }} — whose opinions does each model's answer distribution come closest to?</p>{% endif %}
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
{% if comparison %}
<h3>This survey beside {{ "the reference" if comparison.population == "all" else comparison.population.replace("=", ": ") }}</h3>
<p>{{ comparison.rows | length }} question(s) asked in both this survey and <code>{{ comparison.reference }}</code>{% if comparison.skipped %} ({% for reason, n in comparison.skipped.items() %}{{ n }} left out: {{ reason }}{% if not loop.last %}; {% endif %}{% endfor %}){% endif %}: this survey's weighted distribution beside the reference population's, and the distance between them (normalised Wasserstein for ordered options, Jensen–Shannon otherwise) — how far this survey's public is from the national one before any model is asked.</p>
{% if comparison.rows %}
<table>
  <caption>Answer distributions: this survey and {{ comparison.population }}</caption>
  <thead><tr><th scope="col">Question</th><th scope="col">Options</th><th scope="col">This survey</th><th scope="col">Reference</th><th scope="col" class="num">Distance</th></tr></thead>
  <tbody>
  {% for r in comparison.rows %}
    <tr><td>{{ r.question }} <span class="muted">(<code>{{ r.id }}</code>{% if r.reference_id != r.id %} = <code>{{ r.reference_id }}</code>{% endif %})</span></td>
    <td>{{ r.options | join(" · ") }}</td>
    <td>{% for p in r.ours %}{{ "%.2f" | format(p) }}{% if not loop.last %} · {% endif %}{% endfor %}{% if r.ours_n %} <span class="muted">(n {{ r.ours_n }})</span>{% endif %}</td>
    <td>{% for p in r.reference %}{{ "%.2f" | format(p) }}{% if not loop.last %} · {% endif %}{% endfor %}{% if r.reference_n %} <span class="muted">(n {{ r.reference_n }})</span>{% endif %}</td>
    <td class="num">{{ r.distance | num(3) }}</td></tr>
  {% endfor %}
  </tbody>
</table>
{% endif %}
{% endif %}
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


def _preflight(fc: FidelityConfig) -> None:
    """Read the files the settings name, and check the chosen populations, before any model loads."""
    if fc.items:
        restrict(read_items(Path(fc.items)), fc.populations or ["all"])
    if fc.reference:
        reference = read_items(Path(fc.reference))
        if fc.reference_population != "all":
            expand(reference, [fc.reference_population])


SUITE = Suite(
    name="fidelity",
    config=FidelityConfig,
    describe=describe_fidelity,
    run=run_fidelity,
    section=fidelity_section,
    inspect_task="valign.evals.fidelity_task:fidelity",
    default=False,  # it needs survey items, which only a run with a survey stage has
    paths=("items", "reference"),
    preflight=lambda fc: _preflight(fc),
)
