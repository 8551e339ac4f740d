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

from pydantic import BaseModel, ConfigDict

from valign.errors import ValignError
from valign.evals.fidelity_report import fidelity_section
from valign.evals.suite import ROLES, Suite, SuiteRun, SuiteSetup
from valign.survey.opinion import OpinionItem, opinion_prompt, option_letters, read_items

__all__ = [
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
    run's `survey` stage's; ``kinds`` limits the item kinds (value, principle,
    scenario, rating; default all).

    Example (YAML):
        fidelity: {items: null, kinds: [value, principle]}
    """

    model_config = ConfigDict(extra="forbid")

    items: str | None = None
    kinds: list[str] | None = None


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
    if not fc.items:
        return {}
    path = Path(fc.items)
    return {"fidelity_items": hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else str(path)}


def run_fidelity(ctx: SuiteRun) -> dict[str, Any]:
    """Each model's answer distribution on every item, compared with the population's."""
    fc: FidelityConfig = ctx.settings
    path = _items_path(fc, ctx.survey_items)
    items = [i for i in read_items(path) if fc.kinds is None or i.kind in fc.kinds]
    if not items:
        raise ValignError(f"{path} has no items of kinds {fc.kinds}; check evaluate.fidelity.kinds.")
    for role in ROLES:
        if f"fidelity:{role}" not in ctx.rows.ids:
            ctx.console.print(f"evaluate: survey fidelity, {len(items)} items for {role} ({ctx.specs[role]})")
            result = score_fidelity(ctx.models.get(ctx.specs[role]), items, ctx.specs[role])
            ctx.rows.append([{"id": f"fidelity:{role}", "type": "fidelity", "role": role, "model": ctx.specs[role], **result.to_dict()}])
    found = {r["role"]: r for r in ctx.rows_of("fidelity")}
    return {"items": len(items), "kinds": sorted({i.kind for i in items}), **{role: found[role]["summary"] for role in ROLES}}


def _items_path(fc: FidelityConfig, survey_items: Path | None) -> Path:
    if fc.items:
        return Path(fc.items)
    if survey_items is None:
        raise ValignError("the fidelity suite needs survey items: add a `survey` stage before evaluate, or set evaluate.fidelity.items to an eval_items.jsonl.")
    return survey_items


SUITE = Suite(
    name="fidelity",
    config=FidelityConfig,
    describe=describe_fidelity,
    run=run_fidelity,
    section=fidelity_section,
    inspect_task="valign.evals.fidelity_task:fidelity",
    default=False,  # it needs survey items, which only a run with a survey stage has
    paths=("items",),
    preflight=lambda fc: read_items(Path(fc.items)) if fc.items else None,
)
