"""What one request to `valign serve` may ask for, and the sentence that refuses more.

A served model has a bounded amount of memory and time. These limits are checked
before a request is queued: ``max_tokens`` and ``n`` per request, prompt plus answer
within the model's context, how many requests wait or run at once (``max_queue``) and
how many of them one client may have (``max_per_client``). Together with
``max_batches`` (batches decoded side by side) they bound the server's memory; see
`ServeLimits.kv_tokens`: for the embedded model (23,040 bytes of keys and values per
token in bf16) the defaults hold at most 4 × 16,384 tokens, 1.5 GB, beside the model.

Example:
    >>> limits = ServeLimits(max_tokens=1024, max_n=4)
    >>> limits.check_request(max_tokens=2000, n=1).status
    400
    >>> limits.check_request(max_tokens=100, n=2) is None
    True
    >>> limits.check_context(prompt_tokens=9000, max_tokens=100, context=8192).message
    "the messages are 9,000 tokens and max_tokens is 100, but this model's context holds 8,192 tokens; shorten the messages or lower max_tokens."
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["ServeLimits", "Refusal", "RefusedError", "InFlight", "DEFAULT_LIMITS"]


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: an HTTP status, one sentence, the field at fault."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class ServeLimits:
    """The limits `valign serve` enforces (each a CLI flag of the same name)."""

    max_tokens: int = 2048  # per choice; above it → 400
    max_n: int = 8  # choices per request; above it → 400
    max_queue: int = 64  # requests waiting or running; one more → 503
    max_per_client: int = 8  # of those, from one client address; one more → 429
    max_batches: int = 3  # batches decoded side by side (one step each in turn)
    max_body_bytes: int = 1 << 20  # a request body above it → 413, before it is parsed
    feedback_per_minute: int = 60  # POST /v1/feedback per client address, on average (bursts of 20); 0: no limit
    shutdown_seconds: float = 10.0  # SIGTERM → every request answered and the process gone within this

    def check_request(self, *, max_tokens: int, n: int) -> Refusal | None:
        """The refusal for a request asking more than one request may, or None."""
        if max_tokens > self.max_tokens:
            return Refusal(400, f"max_tokens is {max_tokens}, above this server's limit of {self.max_tokens}; ask for at most {self.max_tokens}.", "max_tokens")
        if n > self.max_n:
            return Refusal(400, f"n is {n}, above this server's limit of {self.max_n}; ask for at most {self.max_n} choices.", "n")
        return None

    @staticmethod
    def check_context(*, prompt_tokens: int, max_tokens: int, context: int | None, asked: bool = True) -> Refusal | None:
        """The refusal for a prompt whose answer would not fit the model's context, or None
        (``asked``: the client named ``max_tokens``; else only the prompt is at fault)."""
        if context is None or prompt_tokens + max_tokens <= context:
            return None
        if not asked:
            return Refusal(400, f"the messages are {prompt_tokens:,} tokens, which leaves no room for an answer in this model's context of "
                                f"{context:,} tokens; shorten the messages.", "messages", "context_length_exceeded")
        return Refusal(
            400,
            f"the messages are {prompt_tokens:,} tokens and max_tokens is {max_tokens:,}, but this model's context holds "
            f"{context:,} tokens; shorten the messages or lower max_tokens.",
            "messages",
            "context_length_exceeded",
        )

    def kv_tokens(self, token_budget: int) -> int:
        """The most token positions the server holds keys and values for at once.

        Each running batch reserves at most its engine's ``token_budget`` (slots ×
        their longest prompt + answer), at most ``max_batches`` run, and one more
        budget's worth is in use while a new batch's prompts are prefilled. How many
        requests wait (``max_queue``) adds only their prompts' text.

        Example:
            >>> ServeLimits().kv_tokens(token_budget=16384)
            65536
        """
        return (self.max_batches + 1) * token_budget


DEFAULT_LIMITS = ServeLimits()


class RefusedError(Exception):
    """A request refused under a `Refusal` (raised where a handler turns it into its answer)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class InFlight:
    """Counts the requests accepted and not yet answered, in all and per client.

    Example:
        >>> gate = InFlight(ServeLimits(max_queue=2, max_per_client=1))
        >>> gate.enter("a") is None, gate.enter("a").status, gate.enter("b") is None, gate.enter("c").status
        (True, 429, True, 503)
        >>> gate.leave("a"); gate.enter("c") is None
        True
    """

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self.total = 0
        self._per_client: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, client: str | None) -> Refusal | None:
        """Counts one more request in, or returns why it cannot come in now."""
        with self._lock:
            if self.total >= self.limits.max_queue:
                return Refusal(503, f"the server is busy with {self.total} requests, its limit; retry in a few seconds.", code="server_busy")
            mine = self._per_client.get(client, 0) if client is not None else 0
            if client is not None and mine >= self.limits.max_per_client:
                return Refusal(429, f"you have {mine} requests running here, this server's limit per client; wait for one to finish.", code="too_many_requests")
            self.total += 1
            if client is not None:
                self._per_client[client] = mine + 1
        return None

    def leave(self, client: str | None) -> None:
        with self._lock:
            self.total -= 1
            if client is not None:
                left = self._per_client.get(client, 1) - 1
                if left > 0:
                    self._per_client[client] = left
                else:
                    self._per_client.pop(client, None)
