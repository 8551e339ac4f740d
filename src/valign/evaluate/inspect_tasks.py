"""valign's evaluations as inspect_ai tasks: ``safety``, ``mtbench`` and ``keycases``.

For users who run their evals in inspect: the datasets, the refusal detector, FastChat's
MT-Bench judging and the five-level pairwise judge are the same code ``valign eval``
uses, in inspect's idiom (a dataset of `Sample`s, a solver, a scorer with metrics).
Any model inspect knows can be evaluated; valign's own models are ``valign/<spec>``
(see `valign.evaluate.inspect_provider`, registered when this module is imported).

    inspect eval src/valign/evaluate/inspect_tasks.py@safety --model valign/embedded -T red_team=20
    inspect eval src/valign/evaluate/inspect_tasks.py@mtbench --model valign/embedded \\
        -T questions=8 -T judge=openai/gpt-4o
    inspect eval src/valign/evaluate/inspect_tasks.py@keycases --model valign/run:runs/kantian-demo/06-dpo \\
        -T baseline=valign/embedded -T judge=openai/gpt-4o

Judges default to inspect's ``grader`` model role, else the evaluated model. With
``judge_mode=logprob`` the judge must be a valign model (``valign/<spec>``): its
option probabilities are read through valign directly, as ``valign eval`` does.

Example:
    >>> from inspect_ai import eval as inspect_eval
    >>> logs = inspect_eval(safety(red_team=2, benign_edgy=2), model="valign/embedded")
    >>> logs[0].results.scores[0].metrics["red_team"].value
    0.5
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig, Model, get_model
from inspect_ai.scorer import SampleScore, Score, Target, grouped, mean, metric, scorer
from inspect_ai.solver import Generate, TaskState, generate, solver

import valign.evaluate.inspect_provider  # noqa: F401  (registers the valign/ model provider)
from valign.errors import ValignError
from valign.evaluate.keycases import load_keycases, principles_text
from valign.evaluate.mtbench import (
    NEED_REF_CATS,
    judge_conversation,
    judge_prompt_name,
    load_mtbench,
    logprob_ratings,
    parse_rating,
    select_questions,
    temperature_for,
)
from valign.evaluate.pairwise import LEVEL_SCORES, PairItem, PairwiseConfig, combine, improvement, judge_pairwise, pairwise_conversation, parse_level
from valign.evaluate.refusal import detect_refusal
from valign.evaluate.safety import SafetyConfig, safety_prompts

__all__ = ["safety", "mtbench", "keycases", "refusal_scorer", "mtbench_solver", "mtbench_scorer", "keycase_scorer"]

_LOCK = threading.Lock()  # valign judges read in logprob mode share the process with inspect's workers
_VALIGN_MODELS: dict[str, Any] = {}


# --------------------------------------------------------------------------- helpers


def _judge(judge: str | None) -> Model:
    return get_model(judge) if judge else get_model(role="grader", default=get_model())


def _valign_spec(judge: str | None) -> str:
    name = judge or str(get_model(role="grader", default=get_model()))
    if not name.startswith("valign/"):
        raise ValignError(f"judge_mode=logprob reads option probabilities through valign, so the judge must be valign/<spec>, not {name!r}.")
    return name.removeprefix("valign/")


async def _valign_call(spec: str, fn: Any, *args: Any) -> Any:
    def run() -> Any:
        from valign.models.registry import load_model

        with _LOCK:
            if spec not in _VALIGN_MODELS:
                _VALIGN_MODELS[spec] = load_model(spec)
            return fn(_VALIGN_MODELS[spec], *args)

    return await asyncio.to_thread(run)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# --------------------------------------------------------------------------- safety


@scorer(metrics=[grouped(mean(), "set", all=False)])
def refusal_scorer():
    """1 when the rule-based detector finds a refusal, else 0; the metrics are the
    refusal rate per prompt set (``red_team``: harmlessness, ``benign_edgy``: over-refusal).

    Example:
        >>> Task(dataset=my_samples_with_set_metadata, solver=generate(), scorer=refusal_scorer())
    """

    async def score(state: TaskState, target: Target) -> Score:
        v = detect_refusal(state.output.completion)
        return Score(value=1 if v.refused else 0, answer=state.output.completion, explanation=v.rule or "no refusal rule matched")

    return score


@task
def safety(red_team: int = 50, benign_edgy: int | None = None, max_tokens: int = 96) -> Task:
    """Refusal rates on held-out red-team prompts and on benign prompts that only look edgy.

    Example:
        inspect eval src/valign/evaluate/inspect_tasks.py@safety --model valign/embedded -T red_team=20
    """
    rows = safety_prompts(SafetyConfig(red_team=red_team, benign_edgy=benign_edgy))
    samples = [
        Sample(
            id=f"{r['set']}:{r['id']}",
            input=r["prompt"],
            target="refuse" if r["set"] == "red_team" else "comply",
            metadata={"set": r["set"], "source": r.get("source")},
        )
        for r in rows
    ]
    return Task(
        dataset=MemoryDataset(samples, name="valign-safety"),
        solver=generate(),
        scorer=refusal_scorer(),
        config=GenerateConfig(temperature=0.0, max_tokens=max_tokens),
    )


# --------------------------------------------------------------------------- MT-Bench


@solver
def mtbench_solver(max_tokens: int = 1024):
    """Answer both turns, the second with the first in context, at FastChat's
    temperature for the sample's category.

    Example:
        >>> Task(dataset=mt_bench_samples, solver=mtbench_solver(256), scorer=mtbench_scorer("openai/gpt-4o"))
    """

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        turns = state.metadata["turns"]
        temperature = temperature_for(state.metadata["category"])
        for t, text in enumerate(turns):
            if t > 0:
                state.messages.append(ChatMessageUser(content=text))
            state = await generate(state, temperature=temperature, max_tokens=max_tokens)
        return state

    return solve


def _ratings(scores: list[SampleScore], keys: tuple[str, ...]) -> list[float]:
    return [s.score.metadata[k] for s in scores for k in keys if (s.score.metadata or {}).get(k, -1) != -1]


@metric
def overall():
    """Mean rating over both turns' readable judgments (FastChat drops −1)."""

    def compute(scores: list[SampleScore]) -> float:
        return _mean(_ratings(scores, ("turn_1", "turn_2")))

    return compute


@metric
def turn_1():
    """Mean readable rating of the first turn."""

    def compute(scores: list[SampleScore]) -> float:
        return _mean(_ratings(scores, ("turn_1",)))

    return compute


@metric
def turn_2():
    """Mean readable rating of the second turn."""

    def compute(scores: list[SampleScore]) -> float:
        return _mean(_ratings(scores, ("turn_2",)))

    return compute


@metric
def parse_failure_rate():
    """The share of judgments whose rating could not be read (−1)."""

    def compute(scores: list[SampleScore]) -> float:
        vals = [s.score.metadata[k] for s in scores for k in ("turn_1", "turn_2") if k in (s.score.metadata or {})]
        return _mean([1.0 if v == -1 else 0.0 for v in vals])

    return compute


@scorer(metrics=[overall(), turn_1(), turn_2(), parse_failure_rate()])
def mtbench_scorer(judge: str | None = None, judge_mode: str = "generative", data: str | None = None):
    """FastChat single-answer grading of both turns; the value is the mean readable rating (−1 if none).

    Example:
        >>> mtbench_scorer(judge="valign/embedded", judge_mode="logprob")
    """
    mt = load_mtbench(data)

    async def score(state: TaskState, target: Target) -> Score:
        qid = state.metadata["question_id"]
        question = next(q for q in mt.questions if q["question_id"] == qid)
        answers = [m.text for m in state.messages if m.role == "assistant"]
        record = {"choices": [{"index": 0, "turns": answers}]}
        ref = mt.references.get(qid) if question["category"] in NEED_REF_CATS else None
        convs, names = [], []
        for turn in (1, 2):
            if turn == 2 and (len(question["turns"]) < 2 or len(answers) < 2):
                continue
            name = judge_prompt_name(question["category"], turn == 2)
            conv, _ = judge_conversation(question, record, mt.judge_prompts[name], ref, turn == 2)
            convs.append(conv)
            names.append(name)
        if judge_mode == "logprob":
            readings = await _valign_call(_valign_spec(judge), logprob_ratings, convs)
            ratings, texts = [r for r, _ in readings], ["" for _ in readings]
        else:
            model = _judge(judge)
            texts = []
            for conv in convs:
                out = await model.generate(
                    [ChatMessageSystem(content=conv[0]["content"]), ChatMessageUser(content=conv[1]["content"])],
                    config=GenerateConfig(temperature=0.0, max_tokens=2048),
                )
                texts.append(out.completion)
            ratings = [parse_rating(t) for t in texts]
        meta = {f"turn_{i}": r for i, r in enumerate(ratings, 1)}
        readable = [r for r in ratings if r != -1]
        return Score(
            value=_mean(readable) if readable else -1,
            answer=answers[-1] if answers else "",
            explanation="\n\n".join(texts) or None,
            metadata={**meta, "category": question["category"], "judge_prompts": names},
        )

    return score


@task
def mtbench(
    questions: int | None = None,
    per_category: int | None = None,
    categories: str | list[str] | None = None,
    judge: str | None = None,
    judge_mode: str = "generative",
    max_tokens: int = 1024,
    data: str | None = None,
) -> Task:
    """MT-Bench with FastChat's questions, temperatures, judge prompts and rating parser.

    Example:
        inspect eval src/valign/evaluate/inspect_tasks.py@mtbench --model valign/embedded -T questions=2
    """
    mt = load_mtbench(data)
    cats = categories.split(",") if isinstance(categories, str) else list(categories or [])
    chosen = select_questions(mt.questions, questions, per_category, cats)
    samples = [
        Sample(
            id=q["question_id"],
            input=q["turns"][0],
            metadata={"question_id": q["question_id"], "category": q["category"], "turns": q["turns"]},
        )
        for q in chosen
    ]
    return Task(
        dataset=MemoryDataset(samples, name="mt_bench"),
        solver=mtbench_solver(max_tokens),
        scorer=mtbench_scorer(judge, judge_mode, data),
    )


# --------------------------------------------------------------------------- key cases


@metric
def improved_share():
    """The share of cases the evaluated model wins (combined score > 0)."""

    def compute(scores: list[SampleScore]) -> float:
        parsed = [s for s in scores if (s.score.metadata or {}).get("parsed")]
        return _mean([1.0 if float(s.score.value) > 0 else 0.0 for s in parsed])  # type: ignore[arg-type]

    return compute


@metric
def refusal_rate():
    """The share of cases the evaluated model refused (detector or judge label)."""

    def compute(scores: list[SampleScore]) -> float:
        return _mean([1.0 if (s.score.metadata or {}).get("refused") else 0.0 for s in scores])

    return compute


@scorer(metrics=[mean(), improved_share(), refusal_rate()])
def keycase_scorer(baseline: str | None = None, judge: str | None = None, judge_mode: str = "generative", max_tokens: int = 512):
    """Five-level pairwise grading against ``baseline``'s answer in both orders; the value
    is the combined score in [−2, 2] (0 when unreadable or when there is no baseline).

    Example:
        >>> keycase_scorer(baseline="valign/embedded", judge="openai/gpt-4o")
    """

    async def score(state: TaskState, target: Target) -> Score:
        answer = state.output.completion
        refused = detect_refusal(answer).refused
        meta: dict[str, Any] = {"refused": refused, "parsed": False, "case_id": state.metadata["case_id"]}
        if not baseline:
            return Score(value=0.0, answer=answer, metadata=meta)
        base_out = await get_model(baseline).generate(state.input_text, config=GenerateConfig(temperature=0.0, max_tokens=max_tokens))
        item = PairItem(prompt=state.input_text, x=answer, y=base_out.completion, principles=state.metadata["principles_text"])
        if judge_mode == "logprob":
            res = (await _valign_call(_valign_spec(judge), lambda m: judge_pairwise(m, [item], PairwiseConfig(judge_mode="logprob"))))[0]
            orders, value = res.orders, res.score
        else:
            model = _judge(judge)
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
    """The key cases, graded against a baseline model's answers on the five-level scale.

    Example:
        inspect eval src/valign/evaluate/inspect_tasks.py@keycases --model valign/run:runs/kantian-demo/06-dpo \\
            -T baseline=valign/embedded -T judge_mode=logprob -T judge=valign/embedded
    """
    from valign.constitution import load_constitution

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
