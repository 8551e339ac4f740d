"""The ChatModel protocol and the shared machinery behind every backend.

A backend implements two primitives on *requests* — one (conversation, sample index)
pair each — and `BaseChatModel` turns them into the public API: it expands ``n``,
consults the completion cache before any model call, stores each finished batch
straight away (so a killed run keeps what it paid for) and drives the progress bar.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, runtime_checkable

from valign.cache import CompletionCache
from valign.errors import ModelError
from valign.progress import GenProgress
from valign.types import Completion, Conversation, GenConfig


@runtime_checkable
class ChatModel(Protocol):
    """What every stage needs from a model.

    Example (loads the embedded model, so it is not run as a doctest)::

        model = load_model("embedded")
        model.generate([[{"role": "user", "content": "Hi"}]], GenConfig(max_new_tokens=8))[0].text
        # one {option: probability} per conversation, summing to 1
        model.choice_probs([[{"role": "user", "content": "Is 2+2=4? Answer A (yes) or B (no)."}]], ["A", "B"])
    """

    name: str

    def generate(self, convs: list[Conversation], cfg: GenConfig) -> list[Completion]: ...

    def choice_probs(
        self, convs: list[Conversation], options: list[str], answer_prefix: str = ""
    ) -> list[dict[str, float]]: ...


@dataclass(frozen=True)
class GenRequest:
    """One sample to draw: conversation ``index`` of the call, sample number ``sample``.

    ``seed`` is derived from the config's seed, the conversation and the sample number,
    so each sample is reproducible on its own (None when the config has no seed).
    """

    index: int
    sample: int
    conv: tuple[tuple[str, str], ...]
    seed: int | None

    @property
    def messages(self) -> Conversation:
        return [{"role": r, "content": c} for r, c in self.conv]  # type: ignore[typeddict-item]


def conv_key(conv: Conversation) -> tuple[tuple[str, str], ...]:
    """A hashable, validated form of a conversation."""
    try:
        return tuple((m["role"], m["content"]) for m in conv)
    except (KeyError, TypeError) as e:
        raise ModelError(
            f"a conversation must be a list of {{'role', 'content'}} messages; got {str(conv)[:80]!r}."
        ) from e


def sample_seed(seed: int | None, conv: tuple, sample: int) -> int | None:
    if seed is None:
        return None
    digest = hashlib.sha256(json.dumps([seed, conv, sample]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class BaseChatModel(ABC):
    """Backends subclass this and implement `_generate_batches` and `_choice_probs`."""

    name: str = "model"
    # How this model computes when that changes its answers but not which model it is
    # (a bf16 engine): part of the completion-cache keys, not of the name.
    variant: str = ""
    cache: CompletionCache | None = None

    # -- what a backend implements --------------------------------------------------------

    @abstractmethod
    def _generate_batches(
        self, requests: list[GenRequest], cfg: GenConfig
    ) -> Iterator[list[tuple[int, Completion]]]:
        """Yields finished batches as (position in `requests`, completion) pairs."""

    def generate_steps(
        self, requests: list[GenRequest], cfg: GenConfig, cancelled: Callable[[int], bool] | None = None
    ) -> Iterator[list[tuple[int, Completion]]]:
        """`_generate_batches` for a scheduler that interleaves several calls (`valign.serve`).

        A backend whose engine decodes step by step yields after every step (an empty
        list when nothing finished) and drops a request once ``cancelled(position)`` is
        True; this default yields whole batches and ignores ``cancelled``.
        """
        yield from self._generate_batches(requests, cfg)

    @abstractmethod
    def _choice_probs(
        self, convs: list[Conversation], options: list[str], answer_prefix: str
    ) -> list[dict[str, float]]:
        """Normalised probability of each option's first token, per conversation."""

    # -- the public API -------------------------------------------------------------------

    def generate(
        self, convs: list[Conversation], cfg: GenConfig | None = None, *, progress: str | GenProgress | None = None
    ) -> list[Completion]:
        """``n`` completions per conversation, grouped by conversation (``index * n + sample``).

        ``progress`` names a progress bar to show (done/total, tok/s, ETA), or is a
        `GenProgress` the caller keeps open across several calls.
        """
        cfg = cfg or GenConfig()
        requests = [
            GenRequest(i, j, key, sample_seed(cfg.seed, key, j))
            for i, conv in enumerate(convs)
            for key in [conv_key(conv)]
            for j in range(cfg.n)
        ]
        results: list[Completion | None] = [None] * len(requests)
        keys = [self._cache_key(r, cfg) for r in requests]
        if self.cache is not None:
            hits = self.cache.get_many(keys)
            for pos, key in enumerate(keys):
                if key in hits:
                    results[pos] = Completion.model_validate(hits[key]).model_copy(
                        update={"index": requests[pos].index, "sample": requests[pos].sample, "cached": True}
                    )
        missing = [pos for pos, res in enumerate(results) if res is None]
        if missing:
            todo = [requests[pos] for pos in missing]
            bar = progress if isinstance(progress, GenProgress) else GenProgress(progress, total=len(todo))
            with bar:
                for batch in self._generate_batches(todo, cfg):
                    stored = []
                    for local, comp in batch:
                        pos = missing[local]
                        comp = comp.model_copy(
                            update={"index": requests[pos].index, "sample": requests[pos].sample, "model": self.name}
                        )
                        results[pos] = comp
                        stored.append((keys[pos], comp.model_dump(exclude={"cached"})))
                    if self.cache is not None:
                        self.cache.put_many(stored)
                    bar.advance(len(batch), sum(c.completion_tokens for _, c in batch))
        return [r for r in results if r is not None]

    def choice_probs(
        self, convs: list[Conversation], options: list[str], answer_prefix: str = ""
    ) -> list[dict[str, float]]:
        """Normalised probabilities of each option's first token after the prompt + prefix."""
        if len(options) < 2 or len(set(options)) != len(options):
            raise ModelError(f"choice_probs needs two or more distinct options; got {options!r}.")
        keys = [self._choice_key(conv_key(c), options, answer_prefix) for c in convs]
        hits = self.cache.get_many(keys) if self.cache is not None else {}
        todo = [i for i, k in enumerate(keys) if k not in hits]
        fresh = self._choice_probs([convs[i] for i in todo], options, answer_prefix) if todo else []
        if self.cache is not None and todo:
            self.cache.put_many([(keys[i], p) for i, p in zip(todo, fresh)])
        by_pos = dict(zip(todo, fresh))
        return [by_pos[i] if i in by_pos else hits[keys[i]] for i in range(len(convs))]

    def with_cache(self, cache: CompletionCache | None) -> "BaseChatModel":
        """Attach a completion cache (shared by every model of a run)."""
        self.cache = cache
        return self

    # -- cache keys -----------------------------------------------------------------------

    def _cache_key(self, req: GenRequest, cfg: GenConfig) -> str:
        return _digest(["generate", self._cache_name, req.conv, cfg.for_sample(), req.sample])

    def _choice_key(self, conv: tuple, options: list[str], prefix: str) -> str:
        return _digest(["choice_probs", self._cache_name, conv, options, prefix])

    @property
    def _cache_name(self) -> str:
        return f"{self.name}@{self.variant}" if self.variant else self.name


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def normalise(scores: dict[str, float]) -> dict[str, float]:
    """Scale non-negative scores to sum to 1."""
    total = sum(scores.values())
    if total <= 0:
        raise ModelError("none of the options got any probability; check the options and the prompt.")
    return {k: v / total for k, v in scores.items()}
