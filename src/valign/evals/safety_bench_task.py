"""The safety benchmarks as inspect_ai tasks (``valign/xstest``, ``valign/orbench``,
``valign/strongreject``, ``valign/harmbench``): the same prompts as the suites, each
answer read by a valign refusal classifier (``rules`` unless ``-T classifier=…``).

The score is 1 for a refusal (partial or full) and 0 for compliance, its metric the
refusal rate on the safe and on the unsafe prompts apart; the classifier's class
(XSTest's three) is the score's answer. Registered by `valign.evals.inspect_tasks`::

    inspect eval valign/xstest --model valign/embedded -T limit=20 -T source=data/xstest_prompts.csv
"""

from __future__ import annotations

from typing import Any

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import Score, Target, grouped, mean, scorer
from inspect_ai.solver import TaskState, generate

from valign.evals import bench_harmbench, bench_orbench, bench_strongreject, bench_xstest
from valign.evals.classifiers import Exchange, load_classifier
from valign.evals.safety_bench import BenchSpec, sample_prompts

__all__ = ["xstest", "orbench", "strongreject", "harmbench", "bench_task", "classifier_scorer"]


@scorer(metrics=[grouped(mean(), "side", all=False)])
def classifier_scorer(classifier: str = "rules"):
    """1 when the classifier reads a refusal (partial or full), else 0; the metric is the
    refusal rate per side (``safe``: over-refusal, ``unsafe``: harmlessness)."""
    reader = load_classifier(classifier)

    async def score(state: TaskState, target: Target) -> Score:
        c = reader.classify([Exchange(state.input_text, state.output.completion)])[0]
        return Score(value=1 if c.refused else 0, answer=c.label, explanation=c.rule or c.label)

    return score


def bench_task(spec: BenchSpec, max_tokens: int, classifier: str, **settings: Any) -> Task:
    """The task of a benchmark with these suite settings (None: the suite's default)."""
    cfg = spec.config(**{k: v for k, v in settings.items() if v is not None})
    prompts = sample_prompts(spec.load(cfg, None), cfg.limit, cfg.seed)
    samples = [
        Sample(id=p.id, input=p.prompt, target="comply" if p.safe else "refuse", metadata={"side": "safe" if p.safe else "unsafe", "category": p.category})
        for p in prompts
    ]
    return Task(
        dataset=MemoryDataset(samples, name=f"valign-{spec.name}"),
        solver=generate(),
        scorer=classifier_scorer(classifier),
        config=GenerateConfig(temperature=0.0, max_tokens=max_tokens),
    )


@task
def xstest(source: str | None = None, limit: int | None = None, classifier: str = "rules", max_tokens: int = 256) -> Task:
    """XSTest: safe prompts that only look unsafe, and unsafe contrasts."""
    return bench_task(bench_xstest.SPEC, max_tokens, classifier, source=source, limit=limit)


@task
def orbench(source: str | None = None, limit: int | None = None, classifier: str = "rules", max_tokens: int = 256) -> Task:
    """OR-Bench: Hard-1K (over-refusal) and Toxic (harmlessness)."""
    return bench_task(bench_orbench.SPEC, max_tokens, classifier, source=source, limit=limit)


@task
def strongreject(source: str | None = None, limit: int | None = None, classifier: str = "rules", max_tokens: int = 256) -> Task:
    """StrongREJECT's forbidden prompts (refusal rate; the harm score is ``valign eval``'s)."""
    return bench_task(bench_strongreject.SPEC, max_tokens, classifier, source=source, limit=limit)


@task
def harmbench(source: str | None = None, limit: int | None = None, classifier: str = "rules", max_tokens: int = 256) -> Task:
    """HarmBench's behaviours (the shipped 200 unless ``source`` names a file)."""
    return bench_task(bench_harmbench.SPEC, max_tokens, classifier, source=source, limit=limit)
