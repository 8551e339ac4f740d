"""Any OpenAI-compatible server: ``openai:<model>@<base_url>[,<base_url>…]``.

vLLM, SGLang, llama.cpp's server, Ollama, ``valign serve`` and OpenAI itself speak the
same chat-completions API. Requests go out asynchronously with bounded concurrency,
spread over the base URLs (least requests in flight first), and are retried with
exponential backoff and jitter on rate limits, server errors, timeouts and dropped
connections. The retry loop is ours, not the client's, so every attempt is counted
and the final error names the server and what it answered.

`option_probs` — how a list of options is scored from a server's ``top_logprobs`` —
lives here and is shared with the vLLM backend.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import random
import re
import threading
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator, TypeVar

from valign.errors import ModelError
from valign.models.base import BaseChatModel, GenRequest, normalise
from valign.types import Completion, Conversation, GenConfig, TokenLogprob

if TYPE_CHECKING:
    from openai import AsyncOpenAI

T = TypeVar("T")

# Statuses worth another attempt: the server is busy, restarting or overloaded.
# Anything else (400, 401, 404, 422, …) would fail the same way again.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF = 30.0  # seconds; a long outage should fail, not stall a run for hours
TOP_LOGPROBS = 20  # the most OpenAI's API (and vLLM's default max_logprobs) allows


# OpenAI's reasoning models: ``o1``, ``o3-mini``, ``gpt-5``, ``gpt-5-mini``, … (also behind
# a provider prefix such as ``openai/gpt-5``).
REASONING_MODEL = re.compile(r"(^|/)(o\d|gpt-5)", re.IGNORECASE)


class RequestPolicy:
    """Which sampling parameters a model accepts, learned from its name and its errors.

    OpenAI's reasoning models (the o-series, GPT-5) reject ``max_tokens`` — they want
    ``max_completion_tokens`` — and any ``temperature``/``top_p`` but the default,
    while many local servers do not know ``max_completion_tokens``. The policy starts
    from the model's name and, when a server answers 400 naming one of these
    parameters (OpenAI's ``unsupported_parameter``/``unsupported_value`` errors),
    adapts and the request is sent again at once. `adjustments` says what changed, so
    a run can report that e.g. its judge sampled at the model's fixed temperature.

    Example:
        >>> RequestPolicy.for_model("gpt-5").apply({"max_tokens": 64, "temperature": 0.7, "messages": []})
        {'messages': [], 'max_completion_tokens': 64}
    """

    def __init__(self, token_param: str = "max_tokens", fixed_sampling: bool = False) -> None:
        self.token_param = token_param
        self.fixed_sampling = fixed_sampling
        self.adjustments: list[str] = []

    @classmethod
    def for_model(cls, model: str) -> RequestPolicy:
        if REASONING_MODEL.search(model):
            return cls("max_completion_tokens", fixed_sampling=True)
        return cls()

    def apply(self, params: dict[str, Any]) -> dict[str, Any]:
        """The request parameters this model accepts (``params`` uses ``max_tokens``)."""
        out = dict(params)
        if "max_tokens" in out and self.token_param != "max_tokens":
            out[self.token_param] = out.pop("max_tokens")
        if self.fixed_sampling:
            out.pop("temperature", None)
            out.pop("top_p", None)
        return out

    def learn(self, error: Any, params: dict[str, Any], sent: dict[str, Any]) -> bool:
        """Adapt to a 400 that names a parameter; True if ``params`` would now go out
        differently from ``sent`` (so sending again is worth it). A request that went
        out before another one taught the policy is simply sent again."""
        param = str(getattr(error, "param", "") or "")
        code = str(getattr(error, "code", "") or "")
        text = f"{param} {code} {error}".lower()
        if code not in ("unsupported_parameter", "unsupported_value") and "not supported" not in text and "unsupported" not in text:
            return False  # e.g. a temperature out of range: the caller's mistake, not the model's rule
        if param == "max_tokens" and self.token_param == "max_tokens" and "max_completion_tokens" in text:
            self.token_param = "max_completion_tokens"
        elif param == "max_completion_tokens" and self.token_param == "max_completion_tokens":
            self.token_param = "max_tokens"  # a server that predates the new name
        elif param in ("temperature", "top_p") and not self.fixed_sampling:
            self.fixed_sampling = True
        else:
            return self.apply(params) != sent
        self.adjustments.append(f"{param}: {_short(error)}")
        return True


def parse_openai_spec(spec: str) -> tuple[str, list[str]]:
    """``openai:<model>@<url>[,<url>…]`` → (model, base URLs).

    Example:
        >>> parse_openai_spec("openai:smol@http://a:8000/v1,http://b:8000/v1")
        ('smol', ['http://a:8000/v1', 'http://b:8000/v1'])
    """
    model, sep, urls = spec.strip().removeprefix("openai:").rpartition("@")
    found = [u for u in urls.split(",") if u]
    if not spec.strip().startswith("openai:") or not sep or not model or not found:
        raise ModelError(f"'{spec}' needs the form openai:<model>@<base_url>, e.g. openai:gpt-4o-mini@https://api.openai.com/v1.")
    return model, found


def option_probs(top: Iterable[tuple[str, float]], options: list[str]) -> dict[str, float]:
    """Probability mass of each option among one position's top alternatives (not normalised).

    An alternative counts for an option when its stripped text is a non-empty prefix of
    the stripped option, so ``"A"``, ``" A"`` and ``"Ab"`` all count for ``"Absolutely"``.
    An alternative that fits several options (``"A"`` for ``"A"`` and ``"AB"``) says
    nothing about which one was meant and is ignored.

    Example:
        >>> option_probs([(" A", -0.1), ("B", -2.5), ("The", -4.0)], ["A", "B"])
        {'A': 0.9048374180359595, 'B': 0.0820849986238988}
    """
    wanted = {o: o.strip() for o in options}
    mass = dict.fromkeys(options, 0.0)
    for token, logprob in top:
        text = token.strip()
        if not text:
            continue
        hits = [o for o, s in wanted.items() if s.startswith(text)]
        if len(hits) == 1:
            mass[hits[0]] += math.exp(logprob)
    return mass


def probs_or_error(mass: dict[str, float], where: str, options: list[str]) -> dict[str, float]:
    """`normalise`, with an error that says which server and which options found nothing."""
    if sum(mass.values()) <= 0:
        raise ModelError(
            f"none of the options {options!r} is among the top {TOP_LOGPROBS} next tokens {where} returned; "
            "ask for the options explicitly in the prompt (e.g. 'Answer with A or B') or use an answer_prefix."
        )
    return normalise(mass)


class _Pool:
    """One client per base URL; picks the URL with the fewest requests in flight."""

    def __init__(self, urls: list[str], clients: list["AsyncOpenAI"]) -> None:
        self.urls = urls
        self.clients = clients
        self.in_flight = [0] * len(urls)
        self._next = 0  # round-robin among equally loaded URLs

    def acquire(self) -> int:
        n = len(self.urls)
        i = min(range(n), key=lambda k: (self.in_flight[k], (k - self._next) % n))
        self._next = (i + 1) % n
        self.in_flight[i] += 1
        return i

    def release(self, i: int) -> None:
        self.in_flight[i] -= 1


class OpenAIChatModel(BaseChatModel):
    """A model behind one or more OpenAI-compatible chat-completions endpoints.

    ``attempts`` counts every HTTP request sent (retries included) and ``sent_per_url``
    how many went to each base URL, so a run can report them.

    Example (needs the servers, so it is not run as a doctest)::

        m = OpenAIChatModel("gpt-4o-mini", ["https://api.openai.com/v1"])
        m.generate([[{"role": "user", "content": "Hi"}]], GenConfig(max_new_tokens=16))[0].text
        judge = OpenAIChatModel("llama-70b", ["http://gpu1:8000/v1", "http://gpu2:8000/v1"], concurrency=64)
        judge.choice_probs([[{"role": "user", "content": "Which is kinder, A or B?"}]], ["A", "B"])
    """

    def __init__(
        self,
        model: str,
        base_urls: list[str],
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        max_retries: int = 5,
        timeout: float = 120.0,
        backoff: float = 0.5,
    ) -> None:
        if not base_urls:
            raise ModelError(f"openai:{model} needs at least one base URL, e.g. openai:{model}@http://localhost:8000/v1.")
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ModelError(
                f"openai:{model}: concurrency must be ≥ 1, max_retries ≥ 0, timeout > 0 and backoff ≥ 0; "
                f"got {concurrency}, {max_retries}, {timeout}, {backoff}."
            )
        self.model = model
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self.name = f"openai:{model}@{','.join(base_urls)}"
        # Local servers (vLLM, llama.cpp, valign serve) accept any key, but the client
        # insists on one.
        self.api_key = os.environ.get(api_key_env) or "EMPTY"
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.attempts = 0
        self.sent_per_url = dict.fromkeys(self.base_urls, 0)
        self.policy = RequestPolicy.for_model(model)

    # -- generation -------------------------------------------------------------------

    def _generate_batches(self, requests: list[GenRequest], cfg: GenConfig) -> Iterator[list[tuple[int, Completion]]]:
        async def one(pool: _Pool, pos: int) -> tuple[int, Completion]:
            req = requests[pos]
            params: dict[str, Any] = {
                "messages": req.messages,
                "n": 1,
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
                "max_tokens": cfg.max_new_tokens,
            }
            if req.seed is not None:
                params["seed"] = req.seed
            if cfg.logprobs > 0:
                params.update(logprobs=True, top_logprobs=cfg.logprobs)
            resp, url = await self._create(pool, params)
            return pos, self._to_completion(resp, url, want_logprobs=cfg.logprobs > 0)

        chunk: list[tuple[int, Completion]] = []
        # Chunks of about `concurrency` results: often enough that a killed run keeps
        # its work (the caller caches each chunk), rarely enough to keep SQLite cheap.
        try:
            for item in self._run_concurrently([lambda pool, p=p: one(pool, p) for p in range(len(requests))]):
                chunk.append(item)
                if len(chunk) >= self.concurrency:
                    yield chunk
                    chunk = []
        except ModelError:
            if chunk:
                yield chunk  # what finished before the failure is cached, not lost
            raise
        if chunk:
            yield chunk

    def _to_completion(self, resp: Any, url: str, *, want_logprobs: bool) -> Completion:
        if not resp.choices:
            raise ModelError(f"{url} answered with no choices; check that it serves chat completions for '{self.model}'.")
        choice = resp.choices[0]
        logprobs = None
        if want_logprobs:
            content = choice.logprobs.content if choice.logprobs is not None else None
            if not content:
                raise self._no_logprobs(url)
            logprobs = [
                TokenLogprob(token=c.token, logprob=c.logprob, top=[(t.token, t.logprob) for t in c.top_logprobs or []])
                for c in content
            ]
        usage = resp.usage
        return Completion(
            text=choice.message.content or "",
            finish_reason="length" if choice.finish_reason == "length" else "stop",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else len(logprobs or []),
            logprobs=logprobs,
        )

    # -- option probabilities ---------------------------------------------------------

    def _choice_probs(self, convs: list[Conversation], options: list[str], answer_prefix: str) -> list[dict[str, float]]:
        async def one(pool: _Pool, pos: int) -> tuple[int, dict[str, float]]:
            messages = list(convs[pos])
            params: dict[str, Any] = {
                "messages": messages,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": TOP_LOGPROBS,
            }
            if answer_prefix:
                # vLLM's (and valign serve's) way to continue a partial assistant turn.
                params["messages"] = messages + [{"role": "assistant", "content": answer_prefix}]
                params["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
            resp, url = await self._create(pool, params)
            choice = resp.choices[0] if resp.choices else None
            content = choice.logprobs.content if choice is not None and choice.logprobs is not None else None
            if not content:
                raise self._no_logprobs(url)
            top = [(t.token, t.logprob) for t in content[0].top_logprobs or []]
            # Some servers return the chosen token but no alternatives: count it too.
            top = top or [(content[0].token, content[0].logprob)]
            return pos, probs_or_error(option_probs(top, options), url, options)

        results: list[dict[str, float]] = [{} for _ in convs]
        for pos, probs in self._run_concurrently([lambda pool, p=p: one(pool, p) for p in range(len(convs))]):
            results[pos] = probs
        return results

    def _no_logprobs(self, url: str) -> ModelError:
        return ModelError(
            f"{url} does not return logprobs, which '{self.model}' needs here; enable logprobs on the server "
            "or use one that supports `top_logprobs` (vLLM, SGLang, OpenAI, valign serve)."
        )

    # -- transport --------------------------------------------------------------------

    async def _create(self, pool: _Pool, params: dict[str, Any]) -> tuple[Any, str]:
        """One chat completion with retries; returns the response and the URL that gave it."""
        import openai

        attempt = adaptations = 0
        while True:
            i = pool.acquire()
            url = pool.urls[i]
            self.attempts += 1
            self.sent_per_url[url] += 1
            retry_after, status = 0.0, None
            sent = self.policy.apply(params)
            try:
                return await pool.clients[i].chat.completions.create(model=self.model, **sent), url
            except openai.APIStatusError as e:
                status = e.status_code
                if status == 400 and adaptations < 3 and self.policy.learn(e, params, sent):
                    adaptations += 1  # a parameter this model does not take: send it again without
                    continue
                if status not in RETRY_STATUSES:
                    raise ModelError(self._rejected(url, status, e)) from e
                failure = f"{url} answered {status} ({_short(e)})"
                retry_after = _retry_after(e)
            except openai.APITimeoutError:
                failure = f"{url} did not answer within {self.timeout:g}s"
            except openai.APIConnectionError as e:
                failure = f"could not connect to {url} ({_short(e.__cause__ or e)})"
            finally:
                pool.release(i)
            if attempt == self.max_retries:
                fix = (
                    "it is rate-limiting us: lower concurrency or raise max_retries"
                    if status == 429
                    else "check that the server is up and the URL is right, or raise max_retries/timeout"
                )
                raise ModelError(f"{failure}, {attempt + 1} attempt(s) in total; {fix}.")
            # Exponential backoff, jittered ±50% so many requests do not retry in step;
            # a server's Retry-After wins when it asks for longer.
            delay = min(MAX_BACKOFF, self.backoff * 2**attempt) * (0.5 + random.random())
            await asyncio.sleep(max(delay, min(retry_after, MAX_BACKOFF)))
            attempt += 1

    def _rejected(self, url: str, status: int, e: Exception) -> str:
        hint = {
            401: f"set a valid API key in ${self.api_key_env}",
            403: f"check that the key in ${self.api_key_env} may use '{self.model}'",
            404: f"check the model name '{self.model}' and that the base URL ends in /v1",
        }.get(status, "check the request settings against what the server supports")
        return f"{url} rejected the request with {status} ({_short(e)}); {hint}."

    def _run_concurrently(self, jobs: list[Callable[[_Pool], Awaitable[T]]]) -> Iterator[T]:
        """Runs the jobs on a private event loop in a worker thread, yielding results as they finish.

        A thread (rather than ``asyncio.run`` here) lets results stream back to a plain
        generator and works even when the caller already runs an event loop (Jupyter,
        an async web handler).
        """
        results: queue.Queue = queue.Queue()
        done = object()
        state: dict[str, Any] = {}

        async def main() -> None:
            from openai import AsyncOpenAI

            clients = [
                AsyncOpenAI(base_url=u, api_key=self.api_key, timeout=self.timeout, max_retries=0) for u in self.base_urls
            ]
            pool = _Pool(self.base_urls, clients)
            gate = asyncio.Semaphore(self.concurrency)

            async def guarded(job: Callable[[_Pool], Awaitable[T]]) -> None:
                async with gate:
                    results.put(await job(pool))

            tasks = [asyncio.create_task(guarded(j)) for j in jobs]
            state["cancel"] = lambda: [t.cancel() for t in tasks]
            try:
                # The first failure (a ModelError after its retries) stops the rest.
                for fut in asyncio.as_completed(tasks):
                    await fut
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for c in clients:
                    await c.close()

        def run() -> None:
            loop = asyncio.new_event_loop()
            state["loop"] = loop
            try:
                loop.run_until_complete(main())
            except BaseException as e:  # handed to the consuming thread
                state["error"] = e
            finally:
                loop.close()
                results.put(done)

        worker = threading.Thread(target=run, name="valign-openai", daemon=True)
        worker.start()
        try:
            while (item := results.get()) is not done:
                yield item
            if "error" in state:
                raise state["error"]
        finally:
            # The consumer stopped early (error, interrupt, generator closed): stop the
            # requests still in flight instead of leaving them to run unseen.
            if worker.is_alive() and "cancel" in state:
                try:
                    state["loop"].call_soon_threadsafe(state["cancel"])
                except RuntimeError:
                    pass  # the loop already finished
            worker.join()


def _short(e: BaseException) -> str:
    """The first line of an error's message, without the client's noise."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else None
        if msg:
            return str(msg).splitlines()[0][:200]
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def _retry_after(e: Any) -> float:
    """Seconds the server asked us to wait (``Retry-After``), or 0."""
    try:
        return float(e.response.headers.get("retry-after", 0))
    except (AttributeError, TypeError, ValueError):
        return 0.0
