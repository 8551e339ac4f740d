"""The data contract between modules: messages, generation settings, completions, rows.

Conversations are plain lists of ``{"role": ..., "content": ...}`` dicts, the shape every
chat template, TRL dataset and OpenAI-compatible server already uses.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo


class Message(TypedDict):
    """One chat message. Example: ``{"role": "user", "content": "Hi"}``."""

    role: Literal["system", "user", "assistant"]
    content: str


Conversation = list[Message]
"""A conversation: ``[{"role": "user", "content": "Is lying ever right?"}]``."""

Row = dict[str, Any]
"""A stage's output row: a dict with a stable ``id`` and TRL's column names."""


class GenConfig(BaseModel):
    """Everything that changes what a model generates (and so keys the cache).

    ``n`` samples are drawn per conversation; with ``seed`` set, sample ``j`` of a
    conversation is reproducible on its own, whatever else shares its batch.
    ``logprobs`` asks for that many top alternatives per generated token (0 = none).

    Example:
        >>> GenConfig(temperature=1.0, max_new_tokens=64, seed=0, n=2)
        GenConfig(temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0, n=2, logprobs=0)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, ge=1, le=32768)
    seed: int | None = None
    n: int = Field(1, ge=1, le=128)
    logprobs: int = Field(0, ge=0, le=20)

    def for_sample(self) -> dict[str, Any]:
        """The fields that identify one sample (everything but ``n``)."""
        return self.model_dump(exclude={"n"})

    def seeded(self, seed: int) -> GenConfig:
        """This config if it names its own seed, else a copy with ``seed`` — the run's, or
        one `derived_seed` made for a use — so a rerun asks the same and hits the cache.

        Example:
            >>> GenConfig().seeded(7).seed, GenConfig(seed=1).seeded(7).seed
            (7, 1)
        """
        return self if self.seed is not None else self.model_copy(update={"seed": seed})


def derived_seed(*parts: object) -> int:
    """A seed for one use of the run's seed (``derived_seed(seed, round, "critique")``):
    the same in every run and process, different for different uses.

    Example:
        >>> derived_seed(0, 1, "critique") == derived_seed(0, 1, "critique") != derived_seed(0, 2, "critique")
        True
    """
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def keep_gen_defaults(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A ``before`` field validator for `GenConfig` settings whose default is not
    GenConfig's own: a partial setting fills the rest from the field's default.

    Without it ``gen: {max_new_tokens: 64}`` (or ``--set keycases.gen.max_new_tokens=64``)
    would build a fresh GenConfig and quietly turn a greedy default (temperature 0)
    into sampling at GenConfig's 0.7. Use it as
    ``_gen_defaults = field_validator("gen", mode="before")(keep_gen_defaults)``.

    Example:
        >>> from pydantic import field_validator
        >>> class Section(BaseModel):
        ...     gen: GenConfig = Field(default_factory=lambda: GenConfig(temperature=0.0))
        ...     _gen_defaults = field_validator("gen", mode="before")(keep_gen_defaults)
        >>> Section.model_validate({"gen": {"max_new_tokens": 64}}).gen.temperature
        0.0
    """
    factory = cls.model_fields[info.field_name].default_factory if info.field_name else None
    if isinstance(value, dict) and factory is not None:
        return {**factory().model_dump(), **value}  # type: ignore[call-arg]
    return value


class TokenLogprob(BaseModel):
    """A generated token, its log-probability and the most likely alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = Field(default_factory=list)


class Completion(BaseModel):
    """One sampled answer to one conversation.

    ``index`` is the conversation's position in the request, ``sample`` the sample
    number within it (0 … n-1). ``cached`` is true when no model call was made.

    Example:
        >>> Completion(text="Hello!", index=0, sample=0, completion_tokens=3, model="embedded")
        Completion(text='Hello!', index=0, sample=0, finish_reason='stop', prompt_tokens=0, completion_tokens=3, model='embedded', cached=False, logprobs=None)
    """

    text: str
    index: int = 0
    sample: int = 0
    finish_reason: Literal["stop", "length"] = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    cached: bool = False
    logprobs: list[TokenLogprob] | None = None
