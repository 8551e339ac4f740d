"""What a reward is: a scorer of sampled answers in TRL's reward-function signature.

TRL's `GRPOTrainer` calls each of its ``reward_funcs`` as
``f(prompts=…, completions=…, completion_ids=…, **columns)`` and expects one number per
completion (None where the function has no opinion). A `Reward` is such a callable with
a name (TRL logs ``rewards/<name>/mean`` per step) and a `score` method that sees plain
conversations and answer texts, which is all valign's judges and classifiers need.

Each kind of reward is one module beside this one (a config class with a ``kind``
literal and a `Reward` subclass) plus one entry in `valign.rewards.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from valign.constitution import Constitution
from valign.models.base import ChatModel
from valign.types import Conversation

__all__ = ["RewardConfig", "RewardContext", "Reward", "as_conversation", "answer_text", "group_key"]


class RewardConfig(BaseModel):
    """What every reward's settings share: its weight in the sum, and a name for the log.

    Example (YAML, one entry of ``grpo.rewards``):
        {kind: refusal, weight: 0.5, name: over_refusal}
    """

    model_config = ConfigDict(extra="forbid")

    weight: float = 1.0  # TRL's reward_weights: the advantage uses the weighted sum
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")  # default: the kind

    @property
    def label(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]


@dataclass
class RewardContext:
    """What a reward may use from the run: models (loaded once per run), the
    constitution, the seed and the run's model spec (the default judge)."""

    load_model: Callable[[str], ChatModel]
    constitution: Constitution
    seed: int
    run_model: str


def as_conversation(prompt: Any) -> Conversation:
    """TRL passes a conversational prompt as messages and a standard one as text.

    Example:
        >>> as_conversation("Hi")
        [{'role': 'user', 'content': 'Hi'}]
    """
    return list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def answer_text(completion: Any) -> str:
    """The text of a completion: the last assistant message of a conversational one.

    Example:
        >>> answer_text([{"role": "assistant", "content": "Sure."}]), answer_text("Sure.")
        ('Sure.', 'Sure.')
    """
    if isinstance(completion, list):
        return str(completion[-1]["content"]) if completion else ""
    return str(completion)


def group_key(prompt: Conversation, prompt_id: Any = None) -> str:
    """Which GRPO group a completion belongs to: its prompt's id when the data has one,
    else the prompt itself (TRL repeats each prompt once per generation).

    Example:
        >>> group_key([{"role": "user", "content": "Hi"}], "p1"), group_key([{"role": "user", "content": "Hi"}])
        ('p1', 'user:Hi')
    """
    if prompt_id is not None:
        return str(prompt_id)
    return "\n".join(f"{m['role']}:{m['content']}" for m in prompt)


class Reward(ABC):
    """A reward function TRL can call; subclasses implement `score`.

    ``columns`` holds the dataset's other columns, one value per completion (valign's
    GRPO data has ``id`` and ``kind``), and TRL's ``log_metric`` callback.
    """

    def __init__(self, name: str) -> None:
        self.__name__ = name  # TRL names the reward's log entries after it

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float | None]:
        convs = [as_conversation(p) for p in prompts]
        answers = [answer_text(c) for c in completions]
        return self.score(convs, answers, columns)

    @abstractmethod
    def score(self, prompts: list[Conversation], answers: list[str], columns: dict[str, Any]) -> list[float | None]:
        """One reward per answer, in order."""

    def describe(self) -> dict[str, Any]:
        """What its scores depend on besides the config (templates, rule versions), for the fingerprint."""
        return {}
