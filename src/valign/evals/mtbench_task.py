"""The MT-Bench suite as an inspect_ai task: FastChat's questions, temperatures, judge
prompts and rating parser, in inspect's idiom (a solver for both turns, a scorer with
FastChat's means as metrics).

Registered as ``valign/mtbench`` (`valign.evals.inspect_tasks`)::

    inspect eval valign/mtbench --model valign/embedded -T questions=8 -T judge=openai/gpt-4o
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig
from inspect_ai.scorer import SampleScore, Score, Target, metric, scorer
from inspect_ai.solver import Generate, TaskState, solver

from valign.evals.inspect_support import judge_model, mean_or_nan, valign_call, valign_spec
from valign.evals.mtbench import (
    NEED_REF_CATS,
    judge_conversation,
    judge_prompt_name,
    load_mtbench,
    logprob_ratings,
    parse_rating,
    select_questions,
    temperature_for,
)

__all__ = ["mtbench", "mtbench_solver", "mtbench_scorer"]


@solver
def mtbench_solver(max_tokens: int = 1024):
    """Answer both turns, the second with the first in context, at FastChat's
    temperature for the sample's category."""

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
        return mean_or_nan(_ratings(scores, ("turn_1", "turn_2")))

    return compute


@metric
def turn_1():
    """Mean readable rating of the first turn."""

    def compute(scores: list[SampleScore]) -> float:
        return mean_or_nan(_ratings(scores, ("turn_1",)))

    return compute


@metric
def turn_2():
    """Mean readable rating of the second turn."""

    def compute(scores: list[SampleScore]) -> float:
        return mean_or_nan(_ratings(scores, ("turn_2",)))

    return compute


@metric
def parse_failure_rate():
    """The share of judgments whose rating could not be read (−1)."""

    def compute(scores: list[SampleScore]) -> float:
        vals = [s.score.metadata[k] for s in scores for k in ("turn_1", "turn_2") if k in (s.score.metadata or {})]
        return mean_or_nan([1.0 if v == -1 else 0.0 for v in vals])

    return compute


@scorer(metrics=[overall(), turn_1(), turn_2(), parse_failure_rate()])
def mtbench_scorer(judge: str | None = None, judge_mode: str = "generative", data: str | None = None):
    """FastChat single-answer grading of both turns; the value is the mean readable rating (−1 if none)."""
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
            readings = await valign_call(valign_spec(judge), logprob_ratings, convs)
            ratings, texts = [r for r, _ in readings], ["" for _ in readings]
        else:
            model = judge_model(judge)
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
            value=mean_or_nan(readable) if readable else -1,
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
    """MT-Bench with FastChat's questions, temperatures, judge prompts and rating parser."""
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
