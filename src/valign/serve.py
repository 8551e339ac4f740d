"""An OpenAI-compatible chat server for any valign model: ``valign serve MODEL --port P``.

Any OpenAI client (the official ``openai`` package, valign's own ``openai:`` backend,
curl) can talk to it. Request handlers never touch the model: they queue their work
for one worker thread (`valign.scheduler.Batcher`), which batches requests that share
sampling settings into one model call.

Besides OpenAI's fields, a request may carry vLLM's ``continue_final_message`` (the
last message is a partial assistant answer to continue) and ``add_generation_prompt``;
that is how `choice_probs` with an ``answer_prefix`` works over HTTP.

With a feedback store (``valign serve MODEL --feedback-db URL``), every answer is
recorded under ``<completion id>:<choice index>`` and people can rate it at
``POST /v1/feedback`` — ``{"completion_id": "chatcmpl-…", "choice": 0, "rating": "up" |
"down", "correction": "…"}`` — or on the chat page at ``/chat`` (plain HTML forms,
no JavaScript), for continual learning (`valign.feedback`).

One client cannot take the server (`valign.serve_limits`): ``max_tokens``, ``n``, the
prompt against the model's context, requests in flight (all and per client) and body
size are limited, each refusal one sentence; the scheduler (`valign.scheduler`)
advances every running batch a step at a time, so a short request answers while a long
one runs; a request whose client disconnected is dropped at its next step; SIGTERM
answers every open request with 503 and stops within ``shutdown_seconds``. With an API
key (``--api-key-env VAR``) every ``/v1`` route needs ``Authorization: Bearer <key>``
(and the chat page, which cannot send one, is not served). The access log keeps no
client address unless ``--access-log-addresses`` asks for uvicorn's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.requests import Request as _Request  # resolved by FastAPI from this module's globals

from valign.errors import ValignError
from valign.models.base import ChatModel
from valign.scheduler import Batcher, Cancelled, ContinuingView, Job
from valign.serve_limits import DEFAULT_LIMITS, InFlight, Refusal, RefusedError, ServeLimits
from valign.types import Completion, Conversation, GenConfig

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

    from valign.feedback import FeedbackStore

__all__ = ["create_app", "serve", "serve_in_background", "ChatCompletionRequest", "FeedbackIn", "APIError", "Batcher", "clean_text"]

DEFAULT_MAX_TOKENS = 512  # when a request names none (and its prompt leaves room); OpenAI's is "up to the context"
DISCONNECT_POLL = 0.1  # seconds between checks whether a waiting request's client is still there


# -- the request -----------------------------------------------------------------------


def clean_text(value: str) -> str:
    r"""Text a model, a database and a JSON answer can all take: no NUL, no lone surrogate.

    Example:
        >>> clean_text("Hi")
        'Hi'
        >>> clean_text("\ud800")
        Traceback (most recent call last):
        ...
        ValueError: contains a lone surrogate (U+D800), which is not Unicode text; send valid UTF-8
    """
    if "\x00" in value:
        raise ValueError("contains a NUL character (\\u0000); remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains a lone surrogate (U+{ord(value[e.start]):04X}), which is not Unicode text; send valid UTF-8") from None
    return value


CleanText = Annotated[str, AfterValidator(clean_text)]


class ChatMessageIn(BaseModel):
    """One message of a request; content may be a string or OpenAI's list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: CleanText

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

    model: CleanText = Field(max_length=300)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32768)
    n: int = Field(1, ge=1, le=128)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # OpenAI's: a 64-bit integer
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

    @property
    def asked_tokens(self) -> int | None:
        """The answer length the client asked for, if any."""
        return self.max_completion_tokens or self.max_tokens

    def gen_config(self, max_new_tokens: int | None = None) -> GenConfig:
        # The model is asked for at least one alternative so the chosen token's own
        # logprob comes back even when top_logprobs is 0.
        return GenConfig(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=max_new_tokens or self.asked_tokens or DEFAULT_MAX_TOKENS,
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


# -- the app ---------------------------------------------------------------------------


def create_app(
    model: ChatModel,
    *,
    model_name: str | None = None,
    feedback: "FeedbackStore | None" = None,
    chat_page: bool = True,
    limits: ServeLimits = DEFAULT_LIMITS,
    api_key: str | None = None,
) -> "FastAPI":
    """An OpenAI-compatible FastAPI app serving ``model`` (``GET /v1/models``, ``POST /v1/chat/completions``).

    ``app.state`` holds ``model``, ``model_name``, the ``batcher`` (its ``batches``
    counts model calls and ``jobs`` requests served) and ``in_flight``. With
    ``feedback``, answers are recorded and ``POST /v1/feedback`` takes ratings;
    ``chat_page`` adds ``/chat`` (not with an ``api_key``, which every ``/v1`` route
    then needs as ``Authorization: Bearer <key>``). ``limits`` bound every request.

    Example (then: ``OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")``)::

        app = create_app(load_model("embedded"))
        uvicorn.run(app, port=8000)
    """
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from valign.web.limits import BodyLimitMiddleware

    name = model_name or model.name
    batcher = Batcher(model, max_batches=limits.max_batches)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            # Every open request is dropped at its next step; the thread is joined off the event loop.
            await asyncio.to_thread(batcher.stop, limits.shutdown_seconds / 2)

    app = FastAPI(title="valign", summary=f"OpenAI-compatible chat completions from {name}", lifespan=lifespan)
    app.state.model = model
    app.state.model_name = name
    app.state.batcher = batcher
    app.state.limits = limits
    app.state.in_flight = InFlight(limits)
    app.state.created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        detail = str(exc.detail)
        if detail == "There was an error parsing the body":  # FastAPI's words for a body that is not UTF-8 JSON
            detail = "the request body is not valid UTF-8 JSON; send a JSON object with 'model' and 'messages'."
        return _error_response(APIError(exc.status_code, detail if detail.endswith(".") else detail + ".", type=kind))

    guard = [Depends(_bearer_check(api_key))] if api_key else []
    app.state.feedback = feedback
    app.include_router(_chat_router(name, batcher, app.state.created, app.state.in_flight, limits, feedback), dependencies=guard)
    if feedback is not None:
        app.include_router(_feedback_router(feedback, limits.feedback_per_minute), dependencies=guard)
    if chat_page and not api_key:
        from valign.chat import chat_page_router

        app.include_router(chat_page_router(name, lambda conv, cfg: _admit(batcher, app.state.in_flight, limits, conv, cfg, None).future, feedback))
    # Outermost: a body above the limit is refused before anything reads it.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limits.max_body_bytes)
    return app


def _error_response(error: "APIError") -> Any:
    """OpenAI's error shape, in ASCII-escaped JSON, so no text echoed from a request can
    make the answer itself unencodable."""
    from fastapi.responses import Response

    headers = {"Retry-After": "5"} if error.status in (429, 503) else {}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(json.dumps(error.body(), ensure_ascii=True), status_code=error.status, media_type="application/json", headers=headers)


def _bearer_check(api_key: str) -> Any:
    """A FastAPI dependency refusing requests without ``Authorization: Bearer <api_key>``
    (compared in constant time, `valign.web.auth.AdminAuth`)."""
    from valign.web.auth import AdminAuth

    auth = AdminAuth(api_key)

    async def check(request: _Request) -> None:
        if not auth.check_bearer(request.headers.get("authorization")):
            raise APIError(401, "this server needs an API key: send the header 'Authorization: Bearer <key>' with the key it was started with.",
                           type="authentication_error", code="invalid_api_key")

    return check


def _prompt_tokens(batcher: Batcher, conv: Conversation, continue_final: bool) -> int | None:
    """The prompt's length in the model's tokens (None where the model does not render prompts)."""
    model = batcher.model
    if not callable(getattr(model, "render", None)):
        return None
    renderer = ContinuingView(model) if continue_final else model  # type: ignore[arg-type]
    return len(renderer.render(conv))


def _admit(
    batcher: Batcher, in_flight: InFlight, limits: ServeLimits, conv: Conversation, cfg: GenConfig, client: str | None,
    continue_final: bool = False, asked_tokens: int | None = None,
) -> Job:
    """Checks one request against the limits and queues it (raises `RefusedError`).

    A request that names no ``max_tokens`` gets what its prompt leaves of the context, up
    to `DEFAULT_MAX_TOKENS`; one that names too many for its prompt is refused.
    """
    refusal = limits.check_request(max_tokens=cfg.max_new_tokens, n=cfg.n)
    if refusal is None:
        context = getattr(batcher.model, "context_length", None)
        prompt = _prompt_tokens(batcher, conv, continue_final) if context else None
        if prompt is not None and context is not None:
            if asked_tokens is None and prompt < context:
                cfg = cfg.model_copy(update={"max_new_tokens": min(cfg.max_new_tokens, context - prompt)})
            refusal = limits.check_context(prompt_tokens=prompt, max_tokens=cfg.max_new_tokens, context=context, asked=asked_tokens is not None)
    if refusal is None:
        refusal = in_flight.enter(client)
    if refusal is not None:
        raise RefusedError(refusal)
    job = batcher.enqueue(conv, cfg, continue_final)
    job.future.add_done_callback(lambda _: in_flight.leave(client))
    return job


async def _answer_or_drop(request: _Request, job: Job) -> list[Completion] | None:
    """The job's completions, or None once its client disconnected (the job is dropped)."""
    waiting = asyncio.wrap_future(job.future)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                job.cancel()
                waiting.cancel()
                return None
    except asyncio.CancelledError:  # the server cancelled this handler (shutdown): stop the work too
        job.cancel("the server is shutting down")
        raise


class FeedbackIn(BaseModel):
    """``POST /v1/feedback``: a rating of one served answer, optionally with a correction."""

    model_config = ConfigDict(extra="forbid")

    completion_id: str = Field(..., min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.:-]+$")
    choice: int = Field(0, ge=0, le=127)
    rating: Literal["up", "down"]
    correction: CleanText | None = None


def _feedback_router(store: "FeedbackStore", per_minute: int) -> "APIRouter":
    """``POST /v1/feedback`` and ``GET /v1/feedback`` (counts only: no content leaves)."""
    from fastapi import APIRouter

    from valign.feedback import FeedbackError
    from valign.web.ratelimit import RateLimiter, client_address

    router = APIRouter(prefix="/v1")
    # Feedback becomes training data: bound how fast one client can write it (addresses
    # stay in this process's memory only).
    limiter = RateLimiter(per_minute=per_minute, burst=20)

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


def _chat_router(
    name: str, batcher: Batcher, created: int, in_flight: InFlight, limits: ServeLimits, feedback: "FeedbackStore | None" = None
) -> "APIRouter":
    """``/v1/models`` and ``/v1/chat/completions``."""
    from fastapi import APIRouter, Response

    from valign.web.ratelimit import client_address

    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "valign"}]}

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: _Request) -> dict[str, Any] | Response:
        if body.model != name:
            raise APIError(404, f"The model '{body.model}' does not exist; this server serves '{name}'.", param="model", code="model_not_found")
        if body.continue_final_message and not batcher.can_continue:
            raise APIError(
                400,
                f"'{name}' cannot continue a partial assistant message here; send the conversation without continue_final_message.",
                param="continue_final_message",
            )
        conv = body.conversation()
        try:
            # Off the event loop: rendering a long prompt to count its tokens takes a while.
            job = await asyncio.to_thread(
                _admit, batcher, in_flight, limits, conv, body.gen_config(), client_address(request),
                body.continue_final_message, body.asked_tokens,
            )
        except RefusedError as e:
            raise _api_error_from(e.refusal) from e
        except ValignError as e:  # the model could not render this conversation
            raise APIError(400, str(e)) from e
        try:
            comps = await _answer_or_drop(request, job)
        except Cancelled as e:
            raise APIError(503, f"{e}; send the request again.", type="server_error", code="cancelled") from e
        except ValignError as e:
            raise APIError(400, str(e)) from e
        except Exception as e:
            raise APIError(500, f"the model failed: {type(e).__name__}: {e}", type="server_error") from e
        if comps is None:  # the client has gone: nobody reads this
            return Response(status_code=499)
        response = _response(name, comps, (body.top_logprobs or 0) if body.logprobs else None)
        # Answers people may rate: not option-probability probes (one token, or the
        # continuation of a partial answer), which judges and evaluations send.
        if feedback is not None and not body.continue_final_message and job.cfg.max_new_tokens > 1:
            await asyncio.to_thread(
                lambda: [feedback.record(f"{response['id']}:{i}", name, conv, c.text) for i, c in enumerate(comps)]
            )
        return response

    return router


def _api_error_from(refusal: Refusal) -> APIError:
    kind = "invalid_request_error" if refusal.status < 500 else "server_error"
    if refusal.status == 429:
        kind = "rate_limit_error"
    return APIError(refusal.status, refusal.message, type=kind, param=refusal.param, code=refusal.code)


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
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ").rstrip(".") + "."
    if param is None and first.get("type") == "model_attributes_type":
        msg = "the request body must be a JSON object with 'model' and 'messages'."
    return APIError(400, f"{param}: {msg}" if param else msg, param=param)


def serve(
    spec: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_name: str | None = None,
    log_level: str = "info",
    feedback_db: str | None = None,
    limits: ServeLimits = DEFAULT_LIMITS,
    api_key: str | None = None,
    access_log_addresses: bool = False,
    workers: int = 1,
    sockets: list[Any] | None = None,
) -> None:
    """Loads the model a spec names and serves it until interrupted (SIGINT or SIGTERM).

    On SIGTERM every open request is answered 503 at its next step and the process exits
    within ``limits.shutdown_seconds``. ``workers`` > 1 runs that many processes, each
    with its own copy of the model and its own limits, on one port
    (`valign.serve_workers`); ``sockets`` is how such a worker gets the shared socket.

    Example (what ``valign serve embedded --port 8000`` runs; elsewhere, then:
    ``load_model("openai:embedded@http://127.0.0.1:8000/v1")``)::

        serve("embedded", port=8000)
    """
    import uvicorn

    from valign.models.registry import load_model
    from valign.web.access_log import ACCESS_LOGGER, AnonymousAccessLog

    if workers > 1:
        from valign.serve_workers import serve_workers

        each = dict(spec=spec, host=host, port=port, model_name=model_name, log_level=log_level, feedback_db=feedback_db,
                    limits=limits, api_key=api_key, access_log_addresses=access_log_addresses)
        return serve_workers(serve, workers, host, port, each, shutdown_seconds=limits.shutdown_seconds)

    store = None
    if feedback_db is not None:
        from valign.feedback import FeedbackStore

        store = FeedbackStore(feedback_db)
    app: Any = create_app(load_model(spec), model_name=model_name, feedback=store, limits=limits, api_key=api_key)
    batcher: Batcher = app.state.batcher
    if not access_log_addresses:
        app = AnonymousAccessLog(app)
        access = logging.getLogger(ACCESS_LOGGER)
        if not access.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
            access.addHandler(handler)
            access.setLevel(logging.INFO if log_level in ("info", "debug", "trace") else logging.WARNING)
            access.propagate = False

    class StoppingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            batcher.begin_stop()  # open requests are answered 503 at their next step, so connections close
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=access_log_addresses,
        timeout_graceful_shutdown=max(1, int(limits.shutdown_seconds / 2)),
    )
    StoppingServer(config).run(sockets=sockets)


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
