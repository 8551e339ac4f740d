"""Fuzzing `valign serve` from its own OpenAPI schema (schemathesis), over real HTTP: every
route answers whatever arrives — valid, invalid, wrong types, odd Unicode — with no 5xx.

A scripted model answers (tests/conftest.py), so the fuzzer spends its time on the
server's input handling; the embedded model's own paths are in test_serve_limits.py.
Bounded: `EXAMPLES` cases per operation, no deadline per case.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.conftest import ScriptedModel
from valign.feedback import FeedbackStore
from valign.serve import create_app, serve_in_background
from valign.serve_limits import ServeLimits

EXAMPLES = 60  # per operation (8 operations): about 20 s in all on 2 cores

# The schema does not depend on the model or the store: take it from a throwaway app.
schema = schemathesis.openapi.from_dict(create_app(ScriptedModel()).openapi())


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    store = FeedbackStore(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'feedback.db'}")
    # No feedback rate limit: the fuzzer sends far more than a person would.
    with serve_in_background(create_app(ScriptedModel(), feedback=store, limits=ServeLimits(feedback_per_minute=0))) as url:
        # One real answer, so that feedback on "chatcmpl-…" ids is not always a 404.
        httpx.post(f"{url}/chat/completions", json={"model": "scripted", "messages": [{"role": "user", "content": "Hi"}]}, timeout=30)
        yield url.removesuffix("/v1")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_route_answers_5xx(case, base_url):
    response = case.call(base_url=base_url, timeout=30)
    assert response.status_code < 500, f"{case.method} {case.path} → {response.status_code}: {response.text[:300]}"
    case.validate_response(response, checks=[not_a_server_error])


# Any character at all, lone surrogates and NUL included (JSON carries them as \ud800 and
# \u0000 escapes; a fuzzer from the schema generates only encodable text).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)


@given(text=ANY_TEXT)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_any_text_in_a_message_or_correction_gets_an_answer_or_a_400(text, base_url):
    def post(path: str, body: dict) -> httpx.Response:
        raw = json.dumps(body, ensure_ascii=True).encode()
        return httpx.post(f"{base_url}{path}", content=raw, headers={"content-type": "application/json"}, timeout=30)

    clean = "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text)
    r = post("/v1/chat/completions", {"model": "scripted", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == (200 if clean else 400), r.text
    if clean:
        answer = r.json()["id"]
        r = post("/v1/feedback", {"completion_id": answer, "rating": "down", "correction": text})
        assert r.status_code == 200, r.text
    r = post("/v1/feedback", {"completion_id": "chatcmpl-x", "rating": "down", "correction": text})
    assert r.status_code == (404 if clean else 400), r.text
