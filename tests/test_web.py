"""The shared web layer (valign.web): signing, cookies, CSRF, the admin token, rate
limits, security headers, templates and the database plumbing."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from valign.web.auth import AdminAuth
from valign.web.cookies import SignedCookie
from valign.web.csrf import check_csrf, csrf_token
from valign.web.database import SqlDatabase, database_url, has_tables, make_engine, migration_revision
from valign.web.headers import SECURITY_HEADERS, SecurityHeadersMiddleware
from valign.web.ratelimit import RateLimiter
from valign.web.signing import Signer
from valign.web.templates import stylesheet, template_env


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


def test_exhausted_peeks_without_consuming():
    rl = RateLimiter(per_minute=60, burst=2)
    assert not rl.exhausted("k", now=0.0) and not rl.exhausted("k", now=0.0)
    assert rl.allow("k", now=0.0) and rl.allow("k", now=0.0)
    assert rl.exhausted("k", now=0.0) and not rl.exhausted("k", now=1.5)


def test_database_buckets_are_shared_atomic_and_store_no_key(tmp_path):
    import concurrent.futures

    from sqlalchemy import text

    from valign.web.database import make_engine
    from valign.web.ratelimit import SqlBuckets

    url = f"sqlite:///{tmp_path / 'rl.db'}"
    one, two = (SqlBuckets(make_engine(url), secret="s" * 32) for _ in range(2))  # as two worker processes would
    a, b = RateLimiter(60, burst=3, store=one), RateLimiter(60, burst=3, store=two)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        taken = list(pool.map(lambda i: (a if i % 2 else b).allow("ip:203.0.113.9", now=100.0), range(12)))
    assert sum(taken) == 3, "no two workers take the same last request"
    assert b.exhausted("ip:203.0.113.9", now=100.0) and a.allow("ip:203.0.113.9", now=101.0)  # one a second comes back
    with one.engine.connect() as conn:
        keys = [k for (k,) in conn.execute(text("SELECT key FROM rate_limit_buckets"))]
    assert keys == [one.hashed("ip:203.0.113.9")] and "203.0.113" not in keys[0]
    assert a.allow("other", now=5000.0)  # ten idle minutes later the old bucket is swept
    with one.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rate_limit_buckets")).scalar() == 1


def test_signed_cookies_are_httponly_and_refuse_other_keys_and_old_values():
    from starlette.responses import Response

    signer = Signer("c" * 32, "session")
    cookie = SignedCookie("valign_admin", signer, path="/admin", max_age=60, samesite="strict", secure=True)
    response = Response()
    cookie.write(response, {"a": 1})
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header and "Path=/admin" in header and "SameSite=strict" in header and "Secure" in header and "Max-Age=60" in header
    value = header.split(";")[0].split("=", 1)[1]
    assert cookie.read({"valign_admin": value}) == {"a": 1}
    assert SignedCookie("valign_admin", Signer("d" * 32, "session")).read({"valign_admin": value}) is None
    assert SignedCookie("valign_admin", signer, max_age=-1).read({"valign_admin": value}) is None
    cleared = Response()
    cookie.clear(cleared)
    assert 'valign_admin=""' in cleared.headers["set-cookie"] and "Max-Age=0" in cleared.headers["set-cookie"]


def test_security_headers_are_added_unless_a_response_sets_its_own():
    async def app(scope, receive, send):  # noqa: ANN001
        await send({"type": "http.response.start", "status": 200, "headers": [(b"cache-control", b"max-age=60")]})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict] = []

    async def send(message):  # noqa: ANN001
        sent.append(message)

    asyncio.run(SecurityHeadersMiddleware(app)({"type": "http"}, None, send))
    headers = dict(sent[0]["headers"])
    assert headers[b"content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"].encode()
    assert headers[b"x-frame-options"] == b"DENY" and headers[b"cache-control"] == b"max-age=60"


def test_templates_escape_and_the_stylesheet_is_shared():
    assert template_env("survey").from_string("{{ x }}").render(x="<script>") == "&lt;script&gt;"
    assert template_env("chat", model="m").get_template("chat.html").globals["model"] == "m"
    base, chat = stylesheet(), stylesheet("chat/chat.css")
    assert chat.startswith(base) and ".turn" in chat and ".turn" not in base


def test_database_plumbing(tmp_path):
    assert database_url("a/b.db") == "sqlite:///a/b.db"
    engine = make_engine(str(tmp_path / "sub" / "x.db"))  # a bare path; its folder is made
    assert (tmp_path / "sub").is_dir() and migration_revision(engine) is None and not has_tables(engine, "t")
    db = SqlDatabase(engine)
    with db.write() as s:
        s.execute(text("create table t (x integer)"))
        s.execute(text("insert into t values (1)"))
    with pytest.raises(RuntimeError):
        with db.write() as s:
            s.execute(text("insert into t values (2)"))
            raise RuntimeError("rolled back")
    with db.read() as s:
        assert s.execute(text("select count(*) from t")).scalar() == 1
    assert has_tables(engine, "t")
    with pytest.raises(Exception, match="not supported"):
        make_engine("mysql://x/y")
