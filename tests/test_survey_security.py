"""Signing, CSRF tokens, the admin token check and rate limits, as units and in the app."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from valign.survey.app import SurveySettings, create_app
from valign.survey.instrument import load_instrument
from valign.survey.security import AdminAuth, RateLimiter, Signer, check_csrf, csrf_token


def test_signed_values_cannot_be_altered_forged_or_replayed_too_late():
    s = Signer("a" * 32, "session")
    value = s.sign({"sid": "abc", "rid": "r1"})
    assert s.unsign(value) == {"sid": "abc", "rid": "r1"}
    body, mac = value.split(".")
    assert s.unsign(body[:-1] + ("A" if body[-1] != "A" else "B") + "." + mac) is None
    assert Signer("b" * 32, "session").unsign(value) is None  # another key
    assert Signer("a" * 32, "other-purpose").unsign(value) is None  # another purpose
    assert s.unsign(value, max_age=-1) is None
    assert s.unsign(None) is None and s.unsign("garbage") is None


def test_csrf_tokens_belong_to_one_session():
    s = Signer("k" * 32)
    assert check_csrf(s, "one", csrf_token(s, "one"))
    assert not check_csrf(s, "two", csrf_token(s, "one"))
    assert not check_csrf(s, "one", None) and not check_csrf(s, None, csrf_token(s, "one"))


def test_admin_auth():
    assert not AdminAuth(None).enabled and not AdminAuth(None).check_bearer("Bearer ")
    a = AdminAuth("t0ken")
    assert a.check_bearer("Bearer t0ken") and a.check_bearer("bearer t0ken")
    assert not a.check_bearer("Bearer t0ke") and not a.check_bearer("Basic t0ken") and not a.check_bearer(None)


def test_rate_limiter_refills_and_can_be_off():
    rl = RateLimiter(per_minute=60, burst=3)
    assert [rl.allow("k", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("other", now=0.0)  # keys are separate
    assert rl.allow("k", now=1.0) and not rl.allow("k", now=1.0)  # one per second comes back
    assert all(RateLimiter(per_minute=0).allow("k", now=0.0) for _ in range(1000))


def test_too_many_posts_get_429_with_retry_after(tmp_path):
    app = create_app(load_instrument("demo"), f"sqlite:///{tmp_path / 's.db'}", SurveySettings(admin_token=None, secret="s" * 32, rate_limit_session=30))
    c = TestClient(app)
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/").text).group(1)
    codes = [c.post("/consent", data={"csrf": csrf, "decision": "decline"}).status_code for _ in range(12)]
    assert codes[:10] == [200] * 10 and codes[-1] == 429  # burst of 10, then limited
    r = c.post("/consent", data={"csrf": csrf, "decision": "decline"})
    assert r.status_code == 429 and r.headers["retry-after"] == "60" and "Too many" in r.text


def test_exhausted_peeks_without_consuming():
    rl = RateLimiter(per_minute=60, burst=2)
    assert not rl.exhausted("k", now=0.0) and not rl.exhausted("k", now=0.0)
    assert rl.allow("k", now=0.0) and rl.allow("k", now=0.0)
    assert rl.exhausted("k", now=0.0) and not rl.exhausted("k", now=1.5)


def test_guessing_the_admin_token_is_rate_limited_and_short_tokens_refused(tmp_path):
    import pytest

    from valign.errors import ValignError

    good = "a-long-admin-token-" + "z" * 16
    app = create_app(load_instrument("demo"), f"sqlite:///{tmp_path / 's.db'}", SurveySettings(admin_token=good, secret="s" * 32))
    with TestClient(app) as client:
        codes = [client.get("/admin/api/summary", headers={"Authorization": f"Bearer guess-{i}"}).status_code for i in range(8)]
        assert codes[0] == 401 and codes[-1] == 429, codes
        blocked = client.get("/admin/api/summary", headers={"Authorization": f"Bearer {good}"})
        assert blocked.status_code == 429, "a blocked address cannot confirm a guess"
    with pytest.raises(ValignError, match="shorter than 16"):
        create_app(load_instrument("demo"), f"sqlite:///{tmp_path / 't.db'}", SurveySettings(admin_token="short", secret="s" * 32))
