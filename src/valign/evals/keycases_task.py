"""The key-case suite as an inspect_ai task: each case answered by the evaluated model
and by a baseline, graded on the five-level pairwise scale in both orders.

Registered as ``valign/keycases`` (`valign.evals.inspect_tasks`)::

    inspect eval valign/keycases --model valign/run:runs/kantian-demo/06-dpo \\
        -T baseline=valign/embedded -T judge_mode=logprob -T judge=valign/embedded
"""

from __future__ import annotations

import math
from typing import Any

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageUser, GenerateConfig, get_model
from inspect_ai.scorer import SampleScore, Score, Target, mean, metric, scorer
from inspect_ai.solver import TaskState, generate

from valign.constitution import load_constitution
from valign.evals.inspect_support import judge_model, mean_or_nan, valign_call, valign_spec
from valign.evals.keycases import load_keycases, principles_text
from valign.evals.pairwise import LEVEL_SCORES, PairItem, PairwiseConfig, combine, improvement, judge_pairwise, pairwise_conversation, parse_level
from valign.evals.refusal import detect_refusal

__all__ = ["keycases", "keycase_scorer"]


@metric
def improved_share():
    """The share of cases the evaluated model wins (combined score > 0)."""

    def compute(scores: list[SampleScore]) -> float:
        parsed = [s for s in scores if (s.score.metadata or {}).get("parsed")]
        return mean_or_nan([1.0 if float(s.score.value) > 0 else 0.0 for s in parsed])  # type: ignore[arg-type]

    return compute


@metric
def refusal_rate():
    """The share of cases the evaluated model refused (detector or judge label)."""

    def compute(scores: list[SampleScore]) -> float:
        return mean_or_nan([1.0 if (s.score.metadata or {}).get("refused") else 0.0 for s in scores])

    return compute


@scorer(metrics=[mean(), improved_share(), refusal_rate()])
def keycase_scorer(baseline: str | None = None, judge: str | None = None, judge_mode: str = "generative", max_tokens: int = 512):
    """Five-level pairwise grading against ``baseline``'s answer in both orders; the value
    is the combined score in [−2, 2] (0 when unreadable or when there is no baseline)."""

    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion
        refused = detect_refusal(answer, state.input_text).refused
        meta: dict[str, Any] = {"refused": refused, "parsed": False, "case_id": state.metadata["case_id"]}
        if not baseline:
            return Score(value=0.0, answer=answer, metadata=meta)
        base_out = await get_model(baseline).generate(state.input_text, config=GenerateConfig(temperature=0.0, max_tokens=max_tokens))
        item = PairItem(prompt=state.input_text, x=answer, y=base_out.completion, principles=state.metadata["principles_text"])
        if judge_mode == "logprob":
            res = (await valign_call(valign_spec(judge), lambda m: judge_pairwise(m, [item], PairwiseConfig(judge_mode="logprob"))))[0]
            orders, value = res.orders, res.score
        else:
            model = judge_model(judge)
            texts = []
            for a, b in ((item.x, item.y), (item.y, item.x)):
                conv = pairwise_conversation(item, a, b, "generative")
                out = await model.generate([ChatMessageUser(content=conv[0]["content"])], config=GenerateConfig(temperature=0.0, max_tokens=1024))
                texts.append(out.completion)
            levels = [parse_level(t) for t in texts]
            orders = [None if levels[0] is None else float(LEVEL_SCORES[levels[0]]), None if levels[1] is None else float(-LEVEL_SCORES[levels[1]])]
            both = combine(*orders)
            value = None if both is None else both.score
            meta["judge_raw"] = texts
        meta.update(parsed=value is not None, orders=orders, baseline_answer=base_out.completion)
        if value is not None:
            meta["improvement"] = improvement(value)
        return Score(value=0.0 if value is None or math.isnan(value) else value, answer=answer, metadata=meta)

    return score


@task
def keycases(
    baseline: str | None = None,
    judge: str | None = None,
    judge_mode: str = "generative",
    limit: int | None = None,
    max_tokens: int = 512,
    file: str | None = None,
    constitution: str = "kantian",
) -> Task:
    """The key cases, graded against a baseline model's answers on the five-level scale."""
    c = load_constitution(constitution)
    samples = [
        Sample(
            id=case.id,
            input=case.prompt,
            metadata={"case_id": case.id, "theme": case.theme, "principles": case.principles, "principles_text": principles_text(case, c)},
        )
        for case in load_keycases(file, limit)
    ]
    return Task(
        dataset=MemoryDataset(samples, name="valign-keycases"),
        solver=generate(),
        scorer=keycase_scorer(baseline, judge, judge_mode, max_tokens),
        config=GenerateConfig(temperature=0.0, max_tokens=max_tokens),
    )
