"""The survey-fidelity suite as an inspect_ai task: how closely the model's answer
distribution on each survey item matches the population's.

Each sample is one item of an evaluation set (``eval_items.jsonl`` of ``valign survey
export``), asked the OpinionQA way. The model's distribution over the options is read
as in ``valign eval``: for a valign model (``valign/<spec>``), the probability of each
option's letter as the answer's first token; for any other model, the letters among
the first token's top log-probabilities when the provider gives them, else the letter
it answers (all mass on one option). The score is 1 − the item's distance to the
population (`valign.evals.fidelity`); the metrics are fidelity, representativeness
(ordered items) and nominal similarity (unordered items).

Registered as ``valign/fidelity`` (`valign.evals.inspect_tasks`)::

    inspect eval valign/fidelity --model valign/embedded -T items=runs/public-values-demo/01-survey/eval_items.jsonl
"""

from __future__ import annotations

import math
from typing import Any

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ModelOutput, get_model
from inspect_ai.scorer import SampleScore, Score, Target, mean, metric, scorer
from inspect_ai.solver import Generate, TaskState, solver

from valign.evals.fidelity import item_distance, model_distributions
from valign.evals.inspect_support import mean_or_nan, valign_call, valign_spec
from valign.opinions.populations import restrict
from valign.survey.opinion import OpinionItem, opinion_prompt, option_letters, read_items

__all__ = ["fidelity", "distribution_solver", "fidelity_scorer"]


def _item(state: TaskState) -> OpinionItem:
    return OpinionItem.model_validate(state.metadata["item"])


def _from_output(output: ModelOutput, letters: list[str]) -> list[float]:
    """The letters' share of the first token's top log-probabilities, else the answer's letter."""
    logprobs = output.choices[0].logprobs if output.choices else None
    if logprobs and logprobs.content and logprobs.content[0].top_logprobs:
        mass = dict.fromkeys(letters, 0.0)
        for top in logprobs.content[0].top_logprobs:
            token = top.token.strip().rstrip(".)")
            if token in mass:
                mass[token] += math.exp(top.logprob)
        total = sum(mass.values())
        if total > 0:
            return [mass[letter] / total for letter in letters]
    answer = output.completion.strip().lstrip("(")[:1].upper()
    return [1.0 if letter == answer else 0.0 for letter in letters]


@solver
def distribution_solver():
    """The model's answer distribution over the item's options, in ``metadata["distribution"]``."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        item = _item(state)
        name = str(get_model())
        if name.startswith("valign/"):
            dist = (await valign_call(valign_spec(name, "survey fidelity"), model_distributions, [item]))[0]
        else:
            state = await generate(state, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
            dist = _from_output(state.output, option_letters(item))
        state.metadata["distribution"] = dist
        return state

    return solve


@metric
def representativeness():
    """1 − the mean normalised Wasserstein distance over ordered (Likert) items."""

    def compute(scores: list[SampleScore]) -> float:
        return mean_or_nan([float(s.score.value) for s in scores if (s.score.metadata or {}).get("ordinal")])  # type: ignore[arg-type]

    return compute


@metric
def nominal_similarity():
    """1 − the mean Jensen–Shannon distance over unordered items."""

    def compute(scores: list[SampleScore]) -> float:
        return mean_or_nan([float(s.score.value) for s in scores if not (s.score.metadata or {}).get("ordinal")])  # type: ignore[arg-type]

    return compute


@scorer(metrics=[mean(), representativeness(), nominal_similarity()])
def fidelity_scorer():
    """1 − the item's distance between the model's and the population's distributions."""

    async def score(state: TaskState, target: Target) -> Score:
        item = _item(state)
        dist = state.metadata["distribution"]
        distance = item_distance(item, dist, item.distribution)
        groups = {key: item_distance(item, dist, g.distribution) for key, g in item.groups.items() if g.n != 0}
        return Score(
            value=1 - distance,
            answer=", ".join(f"{letter} {p:.2f}" for letter, p in zip(option_letters(item), dist)),
            metadata={"ordinal": item.ordinal, "kind": item.kind, "distance": distance, "groups": groups, "distribution": dist},
        )

    return score


@task
def fidelity(items: str, kinds: str | list[str] | None = None, populations: str | list[str] | None = None) -> Task:
    """Survey fidelity on an evaluation set (``items``), optionally only some item ``kinds``
    and only some ``populations`` (group keys such as ``country=Japan``, or variables)."""
    wanted = kinds.split(",") if isinstance(kinds, str) else kinds
    chosen = [i for i in read_items(items) if wanted is None or i.kind in wanted]
    if populations:
        chosen = restrict(chosen, populations.split(",") if isinstance(populations, str) else populations)
    samples: list[Sample] = []
    for item in chosen:
        meta: dict[str, Any] = {"item": item.model_dump(mode="json")}
        samples.append(Sample(id=item.id, input=opinion_prompt(item)[0]["content"], metadata=meta))
    return Task(dataset=MemoryDataset(samples, name="valign-fidelity"), solver=distribution_solver(), scorer=fidelity_scorer())
