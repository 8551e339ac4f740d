"""The survey app's defences at work: rate limits on forms and on admin token guesses,
links only for allowed hosts (the pieces themselves are tested in test_web.py)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from valign.survey.app import SurveySettings, create_app
from valign.survey.instrument import load_instrument


def test_too_many_posts_get_429_with_retry_after(tmp_path):
    app = create_app(load_instrument("demo"), f"sqlite:///{tmp_path / 's.db'}", SurveySettings(admin_token=None, secret="s" * 32, rate_limit_session=30))
    c = TestClient(app, base_url="http://127.0.0.1")
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/").text).group(1)
    codes = [c.post("/consent", data={"csrf": csrf, "decision": "decline"}).status_code for _ in range(12)]
    assert codes[:10] == [200] * 10 and codes[-1] == 429  # burst of 10, then limited
    r = c.post("/consent", data={"csrf": csrf, "decision": "decline"})
    assert r.status_code == 429 and r.headers["retry-after"] == "60" and "Too many" in r.text


def test_guessing_the_admin_token_is_rate_limited_and_short_tokens_refused(tmp_path):
    import pytest

    from valign.errors import ValignError

    good = "a-long-admin-token-" + "z" * 16
    app = create_app(load_instrument("demo"), f"sqlite:///{tmp_path / 's.db'}", SurveySettings(admin_token=good, secret="s" * 32))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        codes = [client.get("/admin/api/summary", headers={"Authorization": f"Bearer guess-{i}"}).status_code for i in range(8)]
        assert codes[0] == 401 and codes[-1] == 429, codes
        # Someone else's guesses from the same address never lock the administrator out.
        assert client.get("/admin/api/summary", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/admin/login").text).group(1)
        wrong = client.post("/admin/login", data={"csrf": csrf, "token": "still-guessing"}, follow_redirects=False)
        assert wrong.status_code == 429 and wrong.headers["retry-after"] == "60"
        right = client.post("/admin/login", data={"csrf": csrf, "token": good}, follow_redirects=False)
        assert right.status_code == 303 and "valign_admin=" in right.headers["set-cookie"]
        assert client.get("/admin/api/summary", headers={"Authorization": "Bearer guess-again"}).status_code == 429, "wrong guesses stay refused"
    with pytest.raises(ValignError, match="shorter than 16"):
        create_app(load_instrument("demo"), f"sqlite:///{tmp_path / 't.db'}", SurveySettings(admin_token="short", secret="s" * 32))


def test_links_are_never_built_from_an_arbitrary_host_header(tmp_path):
    """A resume link built from the Host header would let a request choose where it points."""
    inst = load_instrument("demo")
    app = create_app(inst, f"sqlite:///{tmp_path / 's.db'}", SurveySettings(admin_token=None, secret="s" * 32))
    c = TestClient(app, base_url="http://127.0.0.1")
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/").text).group(1)
    page = c.post("/consent", data={"csrf": csrf, "decision": "agree"})
    assert page.status_code == 200 and "http://127.0.0.1/r/" in page.text
    evil = c.get(str(page.url), headers={"Host": "evil.example"})
    assert evil.status_code == 400 and "evil.example" in evil.text and "--public-url" in evil.text and "/r/" not in evil.text
    fixed = create_app(inst, f"sqlite:///{tmp_path / 's.db'}", SurveySettings(admin_token=None, secret="s" * 32, public_url="https://survey.example.org/"))
    c2 = TestClient(fixed, base_url="http://127.0.0.1", cookies=c.cookies)
    shown = c2.get(str(page.url), headers={"Host": "evil.example"})
    assert shown.status_code == 200 and "https://survey.example.org/r/" in shown.text and "evil.example" not in shown.text
