"""`valign serve`: the OpenAI-compatible app on the real embedded model, over real HTTP."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from valign.models.openai_api import option_probs
from valign.models.registry import load_model
from valign.serve import create_app, serve_in_background
from valign.types import GenConfig

pytestmark = [pytest.mark.slow, pytest.mark.model]

SAY_A = [{"role": "user", "content": "Say A."}]


@pytest.fixture(scope="module")
def model():
    return load_model("embedded")


@pytest.fixture(scope="module")
def server(model):
    """(app, base URL) of one server for the whole module."""
    app = create_app(model)
    with serve_in_background(app) as url:
        yield app, url


@pytest.fixture()
def client(server):
    with openai.OpenAI(base_url=server[1], api_key="unused", max_retries=0) as c:
        yield c


def test_models_lists_the_served_model(server):
    body = httpx.get(server[1] + "/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["embedded"]


def test_official_client_gets_a_chat_completion(client):
    r = client.chat.completions.create(model="embedded", messages=SAY_A, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "embedded"
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_n_samples_are_seeded_and_reproducible(client):
    ask = dict(model="embedded", messages=[{"role": "user", "content": "Write a word."}], max_tokens=8, temperature=1.0, n=2, seed=7)
    first = client.chat.completions.create(**ask)
    again = client.chat.completions.create(**ask)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    # Usage counts the prompt once and the tokens of both choices.
    assert 2 <= first.usage.completion_tokens <= 16


def test_logprobs_are_well_formed(client):
    r = client.chat.completions.create(
        model="embedded", messages=SAY_A, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 4
    for pos in content:
        assert pos.logprob <= 0 and pos.bytes == list(pos.token.encode())
        assert len(pos.top_logprobs) == 3
        values = [t.logprob for t in pos.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert all(t.bytes == list(t.token.encode()) for t in pos.top_logprobs)
        # Greedy decoding picks the most likely token.
        assert pos.token == pos.top_logprobs[0].token
        assert pos.logprob == pytest.approx(values[0])
    # logprobs without alternatives: the chosen token only.
    r = client.chat.completions.create(model="embedded", messages=SAY_A, max_tokens=2, temperature=0, logprobs=True)
    assert all(pos.top_logprobs == [] for pos in r.choices[0].logprobs.content)


def test_bad_requests_get_openai_error_shape(server, client):
    url = server[1] + "/chat/completions"
    cases = [
        ({"model": "embedded", "messages": []}, 400, "messages"),
        ({"model": "embedded", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
        ({"model": "embedded", "messages": SAY_A, "temperature": 9}, 400, "temperature"),
        ({"model": "embedded", "messages": SAY_A, "top_logprobs": 3}, 400, None),
        ({"model": "embedded", "messages": SAY_A, "continue_final_message": True}, 400, None),
        ({"model": "nope", "messages": SAY_A}, 404, "model"),
    ]
    for body, status, param in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == status, body
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error" and err["message"]
        assert err["param"] == param, err
    assert httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    # The official client maps them to its typed errors.
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="embedded", messages=SAY_A, temperature=9)
    with pytest.raises(openai.NotFoundError, match="serves 'embedded'"):
        client.chat.completions.create(model="gpt-4o", messages=SAY_A)


def test_concurrent_requests_are_batched(server):
    app, url = server

    async def ask_all() -> list[str]:
        async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0) as c:
            replies = await asyncio.gather(
                *[
                    c.chat.completions.create(
                        model="embedded", messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=8, seed=i
                    )
                    for i in range(8)
                ]
            )
        return [r.choices[0].message.content for r in replies]

    before = app.state.batcher.batches
    texts = asyncio.run(ask_all())
    calls = app.state.batcher.batches - before
    assert len(texts) == 8 and all(t for t in texts)
    # Different seeds still share a batch: each sample carries its own seed.
    assert 1 <= calls < 8


def test_continue_final_message_matches_local_answer_prefix(model, client):
    """``continue_final_message`` renders exactly like a local ``answer_prefix``."""
    prefix = "The answer is: ("
    r = client.chat.completions.create(
        model="embedded",
        messages=SAY_A + [{"role": "assistant", "content": prefix}],
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=20,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    top = [(t.token, t.logprob) for t in r.choices[0].logprobs.content[0].top_logprobs]
    assert len(top) == 20
    mass = option_probs(top, ["A", "B"])
    total = sum(mass.values())
    served = {k: v / total for k, v in mass.items()}
    local = model.choice_probs([SAY_A], ["A", "B"], answer_prefix=prefix)[0]
    assert served["A"] == pytest.approx(local["A"], abs=1e-3)
    assert served["A"] > 0.8


def test_a_cancelled_request_does_not_stop_the_worker(server):
    """A client that hangs up cancels its future; the worker must carry on."""
    batcher = server[0].state.batcher
    gone = batcher.submit(SAY_A, GenConfig(max_new_tokens=2))
    gone.cancel()
    kept = batcher.submit(SAY_A, GenConfig(max_new_tokens=2))
    assert kept.result(timeout=60)[0].text
