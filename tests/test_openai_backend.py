"""The ``openai:`` backend against ``valign serve`` over real HTTP, and against scripted
servers for the failure modes (errors, retries, no logprobs)."""

from __future__ import annotations

import asyncio
import collections
import json
import socket

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from valign.cache import CompletionCache
from valign.errors import ModelError
from valign.models.openai_api import OpenAIChatModel
from valign.models.registry import load_model
from valign.serve import create_app, serve_in_background
from valign.types import GenConfig

pytestmark = [pytest.mark.slow, pytest.mark.model]

CONVS = [[{"role": "user", "content": f"Name fruit number {i}."}] for i in range(6)]
CFG = GenConfig(temperature=0.0, max_new_tokens=8, seed=0)
SAY_A = [{"role": "user", "content": "Say A."}]


class Counting:
    """ASGI wrapper around an app: counts chat-completion requests per listening port
    and answers the first ``fail_first`` of them with a 503."""

    def __init__(self, app, fail_first: int = 0) -> None:
        self.app = app
        self.fail_first = fail_first
        self.hits: collections.Counter[int] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.hits[scope["server"][1]] += 1
            if self.total <= self.fail_first:
                body = json.dumps({"error": {"message": "warming up", "type": "server_error", "param": None, "code": None}})
                await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture(scope="module")
def local(embedded_fp32):
    # fp32: a greedy answer then does not depend on its batch-mates. The server batches
    # requests as they arrive (and runs batches side by side), so its batches differ from
    # one local call's; in bf16 a batch-mate can change a matmul's rounding and so a near-tie.
    return embedded_fp32


@pytest.fixture(scope="module")
def app(local):
    return create_app(local)


@pytest.fixture()
def served(app):
    """(counting wrapper, base URL) of the embedded model behind a fresh server."""
    counting = Counting(app)
    with serve_in_background(counting) as url:
        yield counting, url


def test_generate_concurrently_in_order(local, served):
    counting, url = served
    remote = load_model(f"openai:embedded@{url}", concurrency=4)
    assert remote.name == f"openai:embedded@{url}"
    got = remote.generate(CONVS, CFG)
    assert [(c.index, c.sample) for c in got] == [(i, 0) for i in range(6)]
    assert all(c.text.strip() and c.model == remote.name and c.completion_tokens > 0 for c in got)
    # Greedy answers over HTTP are the local model's answers, in the same order.
    assert [c.text for c in got] == [c.text for c in local.generate(CONVS, CFG)]
    assert counting.total == remote.attempts == 6


def test_logprobs_come_back(served):
    remote = load_model(f"openai:embedded@{served[1]}")
    (c,) = remote.generate([SAY_A], GenConfig(temperature=0.0, max_new_tokens=3, logprobs=2))
    assert c.logprobs and len(c.logprobs) == c.completion_tokens
    assert all(len(t.top) == 2 and t.logprob <= 0 for t in c.logprobs)


def test_second_identical_call_is_a_cache_hit(served, tmp_path):
    counting, url = served
    remote = load_model(f"openai:embedded@{url}").with_cache(CompletionCache(tmp_path / "cache.sqlite"))
    first = remote.generate(CONVS[:3], CFG)
    sent = counting.total
    again = remote.generate(CONVS[:3], CFG)
    assert counting.total == sent == 3
    assert all(c.cached for c in again) and not any(c.cached for c in first)
    assert [c.text for c in again] == [c.text for c in first]


def test_choice_probs_rank_the_obvious_answer(local, served):
    counting, url = served
    remote = load_model(f"openai:embedded@{url}")
    convs = [SAY_A, [{"role": "user", "content": "Say B."}]]
    probs = remote.choice_probs(convs, ["A", "B"])
    for p in probs:
        assert sum(p.values()) == pytest.approx(1.0)
    assert probs[0]["A"] > 0.8
    # With an answer prefix (vLLM's continue_final_message) it agrees with the local model.
    prefixed = remote.choice_probs([SAY_A], ["A", "B"], answer_prefix="The answer is: (")[0]
    assert prefixed["A"] == pytest.approx(local.choice_probs([SAY_A], ["A", "B"], answer_prefix="The answer is: (")[0]["A"], abs=1e-3)
    assert counting.total == 3


def test_two_base_urls_share_the_load(app):
    counting = Counting(app)
    with serve_in_background(counting) as one, serve_in_background(counting) as two:
        remote = load_model(f"openai:embedded@{one},{two}", concurrency=4)
        got = remote.generate(CONVS, GenConfig(temperature=0.0, max_new_tokens=4))
    assert len(got) == 6
    assert counting.hits[_port(one)] >= 2 and counting.hits[_port(two)] >= 2
    assert sorted(remote.sent_per_url.values()) == sorted(counting.hits.values())


def test_retries_a_server_that_fails_twice(app):
    counting = Counting(app, fail_first=2)
    with serve_in_background(counting) as url:
        remote = OpenAIChatModel("embedded", [url], max_retries=3, backoff=0.01)
        (c,) = remote.generate([SAY_A], GenConfig(temperature=0.0, max_new_tokens=4))
    assert c.text
    assert counting.total == remote.attempts == 3


def _scripted(status: int = 200, fail_on: str | None = None) -> FastAPI:
    """A stand-in server: answers ``status`` (always, or only to a last message equal to
    ``fail_on``), else a fixed answer without logprobs."""
    fake = FastAPI()
    fake.state.hits = 0

    @fake.post("/v1/chat/completions")
    async def complete(request: Request) -> JSONResponse:
        fake.state.hits += 1
        body = await request.json()
        if status != 200 and (fail_on is None or body["messages"][-1]["content"] == fail_on):
            if fail_on is not None:
                await asyncio.sleep(0.3)  # fail after the other requests have finished
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}}, status)
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop", "logprobs": None}
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        )

    return fake


def test_a_server_that_always_fails_gives_a_clear_error():
    fake = _scripted(status=503)
    with serve_in_background(fake) as url:
        remote = OpenAIChatModel("fake", [url], max_retries=2, backoff=0.01)
        with pytest.raises(ModelError, match="503") as err:
            remote.generate([SAY_A], GenConfig(max_new_tokens=4))
    assert url in str(err.value) and "3 attempt" in str(err.value)
    assert fake.state.hits == remote.attempts == 3


def test_answers_before_a_failure_are_kept(tmp_path):
    fake = _scripted(status=503, fail_on="poison")
    convs = [SAY_A, [{"role": "user", "content": "Say B."}], [{"role": "user", "content": "poison"}]]
    cache = CompletionCache(tmp_path / "cache.sqlite")
    with serve_in_background(fake) as url:
        # Chunks of `concurrency` (4) results: the two answers are still an unfinished chunk.
        remote = OpenAIChatModel("fake", [url], concurrency=4, max_retries=0).with_cache(cache)
        with pytest.raises(ModelError, match="503"):
            remote.generate(convs, GenConfig(max_new_tokens=4))
        assert len(cache) == 2
        remote.generate(convs[:2], GenConfig(max_new_tokens=4))
    assert fake.state.hits == 3  # the re-run came from the cache


def test_a_client_error_is_not_retried(served):
    counting, url = served
    remote = OpenAIChatModel("not-served", [url], max_retries=3, backoff=0.01)
    with pytest.raises(ModelError, match="404.*model name 'not-served'"):
        remote.generate([SAY_A], GenConfig(max_new_tokens=4))
    assert counting.total == remote.attempts == 1


def test_an_unreachable_server_gives_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    remote = OpenAIChatModel("x", [url], max_retries=1, backoff=0.01)
    with pytest.raises(ModelError, match="could not connect to") as err:
        remote.generate([SAY_A], GenConfig(max_new_tokens=4))
    assert url in str(err.value)


def test_a_server_without_logprobs_says_so():
    fake = _scripted()
    with serve_in_background(fake) as url:
        remote = load_model(f"openai:fake@{url}")
        assert remote.generate([SAY_A], GenConfig(max_new_tokens=4))[0].text == "A"
        with pytest.raises(ModelError, match="does not return logprobs") as err:
            remote.choice_probs([SAY_A], ["A", "B"])
    assert url in str(err.value) and "top_logprobs" in str(err.value)


def test_works_when_an_event_loop_is_running(served):
    remote = load_model(f"openai:embedded@{served[1]}")

    async def inside_a_loop() -> str:
        return remote.generate([SAY_A], GenConfig(temperature=0.0, max_new_tokens=2))[0].text

    assert asyncio.run(inside_a_loop())


def _reasoning_server() -> FastAPI:
    """Answers like OpenAI's reasoning models: 400 for ``max_tokens`` and for a
    temperature other than 1, each with OpenAI's error shape."""
    fake = FastAPI()
    fake.state.bodies = []

    def unsupported(param: str, message: str) -> JSONResponse:
        code = "unsupported_parameter" if param == "max_tokens" else "unsupported_value"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}, 400)

    @fake.post("/v1/chat/completions")
    async def complete(request: Request) -> JSONResponse:
        body = await request.json()
        fake.state.bodies.append(body)
        if "max_tokens" in body:
            return unsupported("max_tokens", "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.")
        if body.get("temperature", 1) != 1:
            return unsupported("temperature", f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. Only the default (1) value is supported.")
        return JSONResponse({
            "id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        })

    return fake


def test_reasoning_models_get_max_completion_tokens_and_their_own_temperature():
    fake = _reasoning_server()
    with serve_in_background(fake) as url:
        by_name = OpenAIChatModel("gpt-5-mini", [url], max_retries=0)
        assert by_name.generate([SAY_A], GenConfig(max_new_tokens=16, temperature=0.7))[0].text == "ok"
        assert by_name.attempts == 1, "known from its name: no rejected request"
        assert fake.state.bodies[-1]["max_completion_tokens"] == 16 and "temperature" not in fake.state.bodies[-1]
        # A model whose name says nothing learns from the server's 400s, even with several requests in flight.
        unknown = OpenAIChatModel("house-reasoner", [url], max_retries=0, concurrency=4)
        got = unknown.generate([SAY_A, [{"role": "user", "content": "Say B."}]] * 2, GenConfig(max_new_tokens=16, temperature=0.7))
        assert [c.text for c in got] == ["ok"] * 4
        assert unknown.policy.token_param == "max_completion_tokens" and unknown.policy.fixed_sampling
        assert any("max_tokens" in a for a in unknown.policy.adjustments)
        # Other 400s are still not retried.
        plain = OpenAIChatModel("gpt-4o", [url], max_retries=3)
        plain.policy.learn = lambda *a: False  # type: ignore[method-assign]
        with pytest.raises(ModelError, match="400"):
            plain.generate([SAY_A], GenConfig(max_new_tokens=4))
        assert plain.attempts == 1


def test_an_out_of_range_temperature_is_an_error_not_a_new_rule():
    """Only 'unsupported' 400s teach the policy; a bad value is the caller's to fix."""
    fake = FastAPI()

    @fake.post("/v1/chat/completions")
    async def complete(request: Request) -> JSONResponse:
        return JSONResponse({"error": {"message": "2.5 is greater than the maximum of 2 - 'temperature'", "type": "invalid_request_error",
                                       "param": "temperature", "code": "decimal_above_max_value"}}, 400)

    with serve_in_background(fake) as url:
        remote = OpenAIChatModel("gpt-4o", [url], max_retries=0)
        with pytest.raises(ModelError, match="400"):
            remote.generate([SAY_A], GenConfig(max_new_tokens=4, temperature=2.5))
    assert not remote.policy.fixed_sampling and remote.policy.adjustments == []
