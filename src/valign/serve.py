"""An OpenAI-compatible chat server for any valign model: ``valign serve MODEL --port P``.

Any OpenAI client (the official ``openai`` package, valign's own ``openai:`` backend,
curl) can talk to it. Request handlers never touch the model: they queue their work
and a single worker thread drains the queue, running every waiting request with the
same sampling settings through one batched model call. That is both the only safe
way to share a model that is not thread-safe and the fast way on a CPU, where a
batch of 8 costs little more than one request.

Besides OpenAI's fields, a request may carry vLLM's ``continue_final_message`` (the
last message is a partial assistant answer to continue) and ``add_generation_prompt``;
that is how `choice_probs` with an ``answer_prefix`` works over HTTP.

With a feedback store (``valign serve MODEL --feedback-db URL``), every answer is
recorded under ``<completion id>:<choice index>`` and people can rate it at
``POST /v1/feedback`` — ``{"completion_id": "chatcmpl-…", "choice": 0, "rating": "up" |
"down", "correction": "…"}`` — or on the chat page at ``/chat`` (plain HTML forms,
no JavaScript), for continual learning (`valign.feedback`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.requests import Request as _Request  # resolved by FastAPI from this module's globals

from valign.errors import ValignError
from valign.models.base import BaseChatModel, ChatModel, GenRequest, conv_key, sample_seed
from valign.types import Completion, Conversation, GenConfig

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

    from valign.feedback import FeedbackStore

DEFAULT_MAX_TOKENS = 512  # OpenAI's default is "up to the context"; a CPU model needs a bound
BATCH_WINDOW = 0.005  # seconds the worker waits for more requests before a batch starts
MAX_BATCH_JOBS = 256  # requests taken per batch; the model splits them further by its token budget
FEEDBACK_PER_MINUTE = 60  # POST /v1/feedback per client address, on average (bursts of up to 20)


# -- the request -----------------------------------------------------------------------


class ChatMessageIn(BaseModel):
    """One message of a request; content may be a string or OpenAI's list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in v):
                raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
            return "".join(p["text"] for p in v)
        return v


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions`` (the fields valign can honour).

    Example:
        >>> req = ChatCompletionRequest(model="embedded", messages=[{"role": "user", "content": "Hi"}], max_tokens=16)
        >>> req.gen_config().max_new_tokens, req.conversation()
        (16, [{'role': 'user', 'content': 'Hi'}])
    """

    # Clients send many optional fields (user, metadata, …) that change nothing here.
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    n: int = Field(1, ge=1, le=128)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stop: str | list[str] | None = None
    # vLLM's extensions for continuing a partial assistant message.
    continue_final_message: bool = False
    add_generation_prompt: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        if self.stream:
            raise ValueError("streaming is not supported; send stream=false")
        if self.stop:
            raise ValueError("stop sequences are not supported; leave stop unset")
        if self.continue_final_message:
            if self.add_generation_prompt:
                raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
            if self.messages[-1].role != "assistant":
                raise ValueError("continue_final_message needs the last message to be an assistant message to continue")
        elif self.add_generation_prompt is False:
            raise ValueError("add_generation_prompt=false is only supported together with continue_final_message=true")
        return self

    def conversation(self) -> Conversation:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in self.messages]  # type: ignore[misc]

    def gen_config(self) -> GenConfig:
        # The model is asked for at least one alternative so the chosen token's own
        # logprob comes back even when top_logprobs is 0.
        return GenConfig(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS,
            seed=self.seed,
            n=self.n,
            logprobs=max(self.top_logprobs or 0, 1) if self.logprobs else 0,
        )


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

    Example:
        >>> APIError(404, "The model 'x' does not exist.", code="model_not_found").body()["error"]["code"]
        'model_not_found'
    """

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- the batching worker ---------------------------------------------------------------


@dataclass
class _Job:
    conv: Conversation
    cfg: GenConfig
    continue_final: bool
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


_STOP = object()


class Batcher:
    """Runs queued requests on the model from one worker thread, in batches.

    Each cycle takes every waiting request (after a few milliseconds for stragglers),
    groups them by sampling settings and makes one model call per group; requests that
    arrive meanwhile form the next cycle. ``batches`` counts model calls and
    ``jobs`` requests served.

    For valign's own backends, requests that differ only in ``seed`` or ``n`` share a
    batch: every sample gets its own seed, exactly the one ``model.generate`` would
    give it, so answers do not depend on what else was in the batch.

    Example (loads the embedded model)::

        batcher = Batcher(load_model("embedded"))
        future = batcher.submit([{"role": "user", "content": "Hi"}], GenConfig(max_new_tokens=8))
        future.result()[0].text
    """

    def __init__(self, model: ChatModel, *, window: float = BATCH_WINDOW, max_jobs: int = MAX_BATCH_JOBS) -> None:
        self.model = model
        self.window = window
        self.max_jobs = max_jobs
        self.batches = 0
        self.jobs = 0
        self._queue: queue.Queue = queue.Queue()  # the running worker's queue
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def can_continue(self) -> bool:
        """Whether the model can continue a partial assistant message (needs prompt rendering)."""
        return isinstance(self.model, BaseChatModel) and callable(getattr(self.model, "render", None))

    def submit(self, conv: Conversation, cfg: GenConfig, continue_final: bool = False) -> concurrent.futures.Future:
        """Queues one request; the future resolves to its ``cfg.n`` completions."""
        job = _Job(conv, cfg, continue_final)
        with self._lock:
            self._start_locked()
            self._queue.put(job)
        return job.future

    def start(self) -> None:
        with self._lock:
            self._start_locked()

    def stop(self) -> None:
        """Finishes the requests already queued, then stops the worker."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join()

    def _start_locked(self) -> None:
        if self._thread is None:
            # Each worker gets its own queue, so a worker started right after a stop()
            # can never take the stop signal meant for the old one.
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._loop, args=(self._queue,), name="valign-serve-batcher", daemon=True)
            self._thread.start()

    def _loop(self, jobs_in: queue.Queue) -> None:
        while True:
            first = jobs_in.get()
            if first is _STOP:
                return
            time.sleep(self.window)
            jobs, stopping = [first], False
            while len(jobs) < self.max_jobs:
                try:
                    item = jobs_in.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                jobs.append(item)
            groups: dict[tuple, list[_Job]] = {}
            # A client that went away cancels its future; skip its work. Once a future
            # is marked running it can no longer be cancelled, so setting it is safe.
            for job in (j for j in jobs if j.future.set_running_or_notify_cancel()):
                groups.setdefault(self._group_key(job), []).append(job)
            for group in groups.values():
                self._run(group)
            if stopping:
                return

    def _group_key(self, job: _Job) -> tuple:
        if isinstance(self.model, BaseChatModel):
            return (job.cfg.model_copy(update={"seed": None, "n": 1}), job.continue_final)
        return (job.cfg, job.continue_final)

    def _run(self, group: list[_Job]) -> None:
        try:
            if isinstance(self.model, BaseChatModel):
                outs = self._generate_base(self.model, group)
            else:
                flat = self.model.generate([j.conv for j in group], group[0].cfg)
                n = group[0].cfg.n
                outs = [flat[k * n : (k + 1) * n] for k in range(len(group))]
        except BaseException as e:  # every waiting client gets the error, the worker lives on
            for job in group:
                job.future.set_exception(e)
            return
        finally:
            self.batches += 1
        self.jobs += len(group)
        for job, comps in zip(group, outs):
            job.future.set_result(comps)

    def _generate_base(self, model: BaseChatModel, group: list[_Job]) -> list[list[Completion]]:
        """One call of the backend's batch primitive for the whole group, through its cache."""
        requests: list[GenRequest] = []
        keys: list[str | None] = []
        for k, job in enumerate(group):
            conv = conv_key(job.conv)
            for j in range(job.cfg.n):
                req = GenRequest(k, j, conv, sample_seed(job.cfg.seed, conv, j))
                requests.append(req)
                # A continued message renders differently from the same messages
                # answered anew, so it must not share their cache entries.
                keys.append(None if job.continue_final else model._cache_key(req, job.cfg))
        results: list[Completion | None] = [None] * len(requests)
        if model.cache is not None:
            hits = model.cache.get_many([k for k in keys if k is not None])
            for pos, key in enumerate(keys):
                if key in hits:
                    results[pos] = Completion.model_validate(hits[key]).model_copy(update={"cached": True})
        todo = [pos for pos, r in enumerate(results) if r is None]
        if todo:
            shared = group[0].cfg.model_copy(update={"seed": None, "n": 1})
            runner = _Continuing(model) if group[0].continue_final else model
            gen = type(model)._generate_batches(runner, [requests[p] for p in todo], shared)  # type: ignore[arg-type]
            for batch in gen:
                stored = []
                for local, comp in batch:
                    pos = todo[local]
                    comp = comp.model_copy(update={"index": requests[pos].index, "sample": requests[pos].sample, "model": model.name})
                    results[pos] = comp
                    if keys[pos] is not None:
                        stored.append((keys[pos], comp.model_dump(exclude={"cached"})))
                if model.cache is not None and stored:
                    model.cache.put_many(stored)
        per_job: list[list[Completion]] = [[] for _ in group]
        for req, comp in zip(requests, results):
            per_job[req.index].append(comp)  # type: ignore[arg-type]
        return per_job


class _Continuing:
    """A view of a local model whose prompts continue the final assistant message.

    The backend renders each request with ``self.render(messages)``; this view renders
    ``messages[:-1]`` with the last message's text as the answer prefix instead, and
    hands everything else to the model itself.
    """

    def __init__(self, model: BaseChatModel) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def render(self, conv: Conversation, answer_prefix: str = "") -> list[int]:
        return self._model.render(conv[:-1], answer_prefix=conv[-1]["content"] + answer_prefix)  # type: ignore[attr-defined]


# -- the app ---------------------------------------------------------------------------


def create_app(model: ChatModel, *, model_name: str | None = None, feedback: "FeedbackStore | None" = None, chat_page: bool = True) -> "FastAPI":
    """An OpenAI-compatible FastAPI app serving ``model`` (``GET /v1/models``, ``POST /v1/chat/completions``).

    ``app.state`` holds ``model``, ``model_name`` and the ``batcher``, whose ``batches``
    counts model calls and ``jobs`` requests served. With ``feedback``, answers are
    recorded and ``POST /v1/feedback`` takes ratings; ``chat_page`` adds ``/chat``.

    Example (then: ``OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")``)::

        app = create_app(load_model("embedded"))
        uvicorn.run(app, port=8000)
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    name = model_name or model.name
    batcher = Batcher(model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            # The model call in progress finishes; the thread is joined off the event loop.
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="valign", summary=f"OpenAI-compatible chat completions from {name}", lifespan=lifespan)
    app.state.model = model
    app.state.model_name = name
    app.state.batcher = batcher
    app.state.created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_error(exc.errors()).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), type=kind).body(), status_code=exc.status_code)

    app.state.feedback = feedback
    app.include_router(_chat_router(name, batcher, app.state.created, feedback))
    if feedback is not None:
        app.include_router(_feedback_router(feedback))
    if chat_page:
        from valign.chat import chat_page_router

        app.include_router(chat_page_router(name, batcher.submit, feedback))
    return app


class FeedbackIn(BaseModel):
    """``POST /v1/feedback``: a rating of one served answer, optionally with a correction."""

    model_config = ConfigDict(extra="forbid")

    completion_id: str = Field(..., min_length=1, max_length=60)
    choice: int = Field(0, ge=0, le=127)
    rating: Literal["up", "down"]
    correction: str | None = None


def _feedback_router(store: "FeedbackStore") -> "APIRouter":
    """``POST /v1/feedback`` and ``GET /v1/feedback`` (counts only: no content leaves)."""
    from fastapi import APIRouter

    from valign.feedback import FeedbackError
    from valign.web.ratelimit import RateLimiter, client_address

    router = APIRouter(prefix="/v1")
    # Feedback becomes training data: bound how fast one client can write it (addresses
    # stay in this process's memory only).
    limiter = RateLimiter(per_minute=FEEDBACK_PER_MINUTE, burst=20)

    @router.post("/feedback")
    async def post_feedback(body: FeedbackIn, request: _Request) -> dict[str, Any]:
        if not limiter.allow(client_address(request)):
            raise APIError(429, "too much feedback from this address; wait a minute and send again.", type="rate_limit_error")
        try:
            saved = await asyncio.to_thread(store.rate, f"{body.completion_id}:{body.choice}", body.rating, body.correction)
        except FeedbackError as e:
            raise APIError(404 if "no answer" in str(e) else 400, str(e), param="completion_id" if "no answer" in str(e) else None) from e
        return {"object": "feedback", **saved}

    @router.get("/feedback")
    async def feedback_counts() -> dict[str, Any]:
        return {"object": "feedback.counts", **(await asyncio.to_thread(store.counts))}

    return router


def _chat_router(name: str, batcher: Batcher, created: int, feedback: "FeedbackStore | None" = None) -> "APIRouter":
    """``/v1/models`` and ``/v1/chat/completions``."""
    from fastapi import APIRouter

    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "valign"}]}

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> dict[str, Any]:
        if body.model != name:
            raise APIError(404, f"The model '{body.model}' does not exist; this server serves '{name}'.", param="model", code="model_not_found")
        if body.continue_final_message and not batcher.can_continue:
            raise APIError(
                400,
                f"'{name}' cannot continue a partial assistant message here; send the conversation without continue_final_message.",
                param="continue_final_message",
            )
        cfg = body.gen_config()
        future = batcher.submit(body.conversation(), cfg, body.continue_final_message)
        try:
            comps = await asyncio.wrap_future(future)
        except ValignError as e:
            raise APIError(400, str(e)) from e
        except Exception as e:
            raise APIError(500, f"the model failed: {type(e).__name__}: {e}", type="server_error") from e
        response = _response(name, comps, (body.top_logprobs or 0) if body.logprobs else None)
        # Answers people may rate: not option-probability probes (one token, or the
        # continuation of a partial answer), which judges and evaluations send.
        if feedback is not None and not body.continue_final_message and cfg.max_new_tokens > 1:
            conv = body.conversation()
            await asyncio.to_thread(
                lambda: [feedback.record(f"{response['id']}:{i}", name, conv, c.text) for i, c in enumerate(comps)]
            )
        return response

    return router


def _response(name: str, comps: list[Completion], top_logprobs: int | None) -> dict[str, Any]:
    """OpenAI's ``chat.completion`` object for the completions of one request."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "system_fingerprint": None,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text, "refusal": None},
                "finish_reason": c.finish_reason,
                "logprobs": _logprobs(c, top_logprobs),
            }
            for i, c in enumerate(comps)
        ],
        "usage": {
            # The prompt is the same for every choice, so it is counted once, as OpenAI does.
            "prompt_tokens": comps[0].prompt_tokens if comps else 0,
            "completion_tokens": sum(c.completion_tokens for c in comps),
            "total_tokens": (comps[0].prompt_tokens if comps else 0) + sum(c.completion_tokens for c in comps),
        },
    }


def _logprobs(c: Completion, top_logprobs: int | None) -> dict[str, Any] | None:
    if top_logprobs is None or c.logprobs is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(a, lp) for a, lp in t.top[:top_logprobs]]}
            for t in c.logprobs
        ],
        "refusal": None,
    }


def _validation_error(errors: Any) -> APIError:
    """The first pydantic error as one OpenAI-style message naming the field."""
    first = list(errors)[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON; send a JSON object with 'model' and 'messages'.")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    return APIError(400, f"{param}: {msg}" if param else msg, param=param)


def serve(
    spec: str, host: str = "127.0.0.1", port: int = 8000, *, model_name: str | None = None, log_level: str = "info", feedback_db: str | None = None
) -> None:
    """Loads the model a spec names and serves it until interrupted.

    Example (what ``valign serve embedded --port 8000`` runs; elsewhere, then:
    ``load_model("openai:embedded@http://127.0.0.1:8000/v1")``)::

        serve("embedded", port=8000)
    """
    import uvicorn

    from valign.models.registry import load_model

    store = None
    if feedback_db is not None:
        from valign.feedback import FeedbackStore

        store = FeedbackStore(feedback_db)
    app = create_app(load_model(spec), model_name=model_name, feedback=store)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextmanager
def serve_in_background(app: Any, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0) -> Iterator[str]:
    """Runs an ASGI app with uvicorn in a background thread; yields its ``/v1`` base URL.

    ``port=0`` takes a free port. For tests, notebooks and benchmarks: the server stops
    when the block ends.

    Example (loads the embedded model)::

        with serve_in_background(create_app(load_model("embedded"))) as url:
            load_model(f"openai:embedded@{url}").generate([[{"role": "user", "content": "Hi"}]])
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="valign-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ValignError(f"could not start a server on {host}:{port}; is the port free?")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout)
