"""The survey app's defences at work: rate limits on forms and on admin token guesses
(the pieces themselves are tested in test_web.py)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from valign.survey.app import SurveySettings, create_app
from valign.survey.instrument import load_instrument


def test_too_many_posts_get_429_with_retry_after(tmp_path):
    app = create_app(load_instrument("demo"), f"sqlite:///{tmp_path / 's.db'}", SurveySettings(admin_token=None, secret="s" * 32, rate_limit_session=30))
    c = TestClient(app)
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
    with TestClient(app) as client:
        codes = [client.get("/admin/api/summary", headers={"Authorization": f"Bearer guess-{i}"}).status_code for i in range(8)]
        assert codes[0] == 401 and codes[-1] == 429, codes
        blocked = client.get("/admin/api/summary", headers={"Authorization": f"Bearer {good}"})
        assert blocked.status_code == 429, "a blocked address cannot confirm a guess"
    with pytest.raises(ValignError, match="shorter than 16"):
        create_app(load_instrument("demo"), f"sqlite:///{tmp_path / 't.db'}", SurveySettings(admin_token="short", secret="s" * 32))
