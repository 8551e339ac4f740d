"""The inspect task of the fake suite that tests/test_eval_suites.py registers."""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import includes
from inspect_ai.solver import generate


@task
def fake(prompts: int = 2) -> Task:
    samples = [Sample(id=str(i), input=f"Say {i}.", target=str(i)) for i in range(prompts)]
    return Task(dataset=MemoryDataset(samples, name="fake"), solver=generate(), scorer=includes())
