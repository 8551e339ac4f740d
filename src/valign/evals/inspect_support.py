"""What valign's inspect_ai tasks share: the judge model, and valign models read directly.

Judges default to inspect's ``grader`` model role, else the evaluated model. Option
probabilities (``judge_mode=logprob``, survey fidelity) are read through valign
itself, so those models must be valign models (``valign/<spec>``): `valign_call` loads
each spec once and runs one call at a time on it, off inspect's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from inspect_ai.model import Model, get_model

from valign.errors import ValignError

__all__ = ["judge_model", "valign_spec", "valign_call", "mean_or_nan"]

_LOCK = threading.Lock()  # valign models read directly share the process with inspect's workers
_VALIGN_MODELS: dict[str, Any] = {}


def judge_model(judge: str | None) -> Model:
    """The named judge, else inspect's ``grader`` role, else the evaluated model."""
    return get_model(judge) if judge else get_model(role="grader", default=get_model())


def valign_spec(model: str | None, why: str = "judge_mode=logprob") -> str:
    """The valign spec of a ``valign/<spec>`` model name (the grader's by default)."""
    name = model or str(get_model(role="grader", default=get_model()))
    if not name.startswith("valign/"):
        raise ValignError(f"{why} reads option probabilities through valign, so the model must be valign/<spec>, not {name!r}.")
    return name.removeprefix("valign/")


async def valign_call(spec: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(model, *args)`` on the valign model of ``spec``, in a worker thread."""

    def run() -> Any:
        from valign.models.registry import load_model

        with _LOCK:
            if spec not in _VALIGN_MODELS:
                _VALIGN_MODELS[spec] = load_model(spec)
            return fn(_VALIGN_MODELS[spec], *args)

    return await asyncio.to_thread(run)


def mean_or_nan(values: list[float]) -> float:
    """The mean, or NaN for no values (inspect shows NaN as "no data").

    Example:
        >>> mean_or_nan([1.0, 2.0]), mean_or_nan([])
        (1.5, nan)
    """
    return sum(values) / len(values) if values else float("nan")
