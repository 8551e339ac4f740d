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


# -- request bodies: limits and strict reading (valign.web.limits, valign.web.bodies) -------------


def _body_app(max_body_bytes: int):
    """A bare Starlette app behind the body limit that echoes how much body it read."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from valign.web.limits import BodyLimitMiddleware

    async def echo(request):  # noqa: ANN001
        return PlainTextResponse(str(len(await request.body())))

    return BodyLimitMiddleware(Starlette(routes=[Route("/", echo, methods=["POST"])]), max_body_bytes=max_body_bytes)


def test_body_limit_checks_content_length_and_counts_streamed_chunks():
    from starlette.testclient import TestClient

    c = TestClient(_body_app(1000))
    assert c.post("/", content=b"x" * 1000).text == "1000"
    r = c.post("/", content=b"x" * 1001)  # announced by Content-Length: refused before the app runs
    assert r.status_code == 413 and r.text == "The request body is larger than this server accepts (at most 1000 bytes); send less.\n"
    assert r.headers["connection"] == "close"
    r = c.post("/", content=iter([b"x" * 600, b"x" * 600]))  # chunked, no length: counted as it arrives
    assert r.status_code == 413 and "at most 1000 bytes" in r.text
    assert c.post("/", content=iter([b"x" * 500, b"x" * 500])).text == "1000"
    r = c.post("/", content=b"x", headers={"content-length": "1x"})
    assert r.status_code == 400 and "Content-Length" in r.text


def test_the_app_reads_at_most_the_limit_of_a_streamed_body():
    from valign.web.limits import BodyLimitMiddleware

    chunks = [b"x" * 100] * 50
    taken = 0

    async def receive():
        nonlocal taken
        taken += 1
        return {"type": "http.request", "body": chunks[taken - 1], "more_body": taken < len(chunks)}

    async def app(scope, receive, send):  # noqa: ANN001  reads everything it is given
        while (await receive()).get("more_body"):
            pass

    sent: list[dict] = []

    async def send(message):  # noqa: ANN001
        sent.append(message)

    asyncio.run(BodyLimitMiddleware(app, max_body_bytes=250)({"type": "http", "headers": []}, receive, send))
    assert taken == 3 and sent[0]["status"] == 413, "refused at the chunk that crossed 250 bytes, not after all 50"


def test_forms_are_read_as_text_fields_each_sent_once():
    import json

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from valign.web.bodies import read_form, read_json_object

    async def form(request):  # noqa: ANN001
        return JSONResponse(await read_form(request))

    async def body(request):  # noqa: ANN001
        return JSONResponse(await read_json_object(request))

    app = Starlette(routes=[Route("/form", form, methods=["POST"]), Route("/json", body, methods=["POST"])])
    c = TestClient(app)
    assert c.post("/form", data={"a": "1\x00", "b": "ü"}).json() == {"a": "1", "b": "ü"}
    r = c.post("/form", files={"csrf": ("f.txt", b"token")})
    assert r.status_code == 400 and r.text == "The field 'csrf' was sent as a file; this form takes text only."
    r = c.post("/form", content=b"a=1&a=2", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "'a' was sent more than once" in r.text
    r = c.post("/form", content="&".join(f"f{i}=1" for i in range(300)).encode(), headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "Too many fields" in r.text
    assert c.post("/form", content=b"{}", headers={"content-type": "application/json"}).json() == {}  # not a form: no fields
    assert c.post("/json", content=json.dumps({"n": 3})).json() == {"n": 3}
    for raw, words in ((b'{"n": -Infinity}', "-Infinity is not a number"), (b'"x"', "must be a JSON object"), (b'{"t": "\\udfff"}', "lone surrogate")):
        r = c.post("/json", content=raw)
        assert r.status_code == 400 and words in r.text, r.text


def test_tokens_and_signed_values_refuse_what_is_not_text():
    from starlette.datastructures import UploadFile
    import io

    s = Signer("k" * 32)
    upload = UploadFile(io.BytesIO(b"x"), filename="csrf")
    assert check_csrf(s, "sid", upload) is False and check_csrf(s, "sid", "é") is False
    assert s.unsign(upload) is None and s.unsign("é.é") is None and s.unsign(["a.b"]) is None
    auth = AdminAuth("t" * 20)
    assert auth.check_token(upload) is False and auth.check_token("\ud800") is False and auth.check_token("t" * 20) is True
