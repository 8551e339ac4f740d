"""Fuzzing the survey over real HTTP, on SQLite and PostgreSQL: no request gets a 5xx or a
dropped connection.

* schemathesis reads the app's own OpenAPI schema (``/admin/api/openapi.json``) and sends
  every route requests that fit it and requests that do not, with the admin token (so the
  admin JSON API is reached), half of them with a respondent's session and CSRF token;
* hypothesis drives the form routes as a respondent, an admin (login cookie) or a
  stranger: random fields, repeated ones, files where text belongs, invalid UTF-8, NUL
  bytes, odd charsets, every body encoding — with a valid session and CSRF token most
  of the time, so that the requests get past the first check.

Both are bounded in examples (150 requests each, about 10 s a run) and derandomised, so a
run is repeatable; any 5xx fails with the request that caused it. They run in
``make test`` (marked ``slow``: the edit–test loop has test_survey_bodies.py's cases).
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote_from_bytes

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.survey_helpers import ADMIN_TOKEN, DB_BACKENDS, Server, admin_headers, hidden, multipart_body, postgres_database, radio_names

pytestmark = pytest.mark.slow

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(params=DB_BACKENDS)
def server(request, tmp_path):
    args = ("demo", "--rate-limit-ip", "0", "--rate-limit-session", "0")
    if request.param == "sqlite":
        with Server(f"sqlite:///{tmp_path / 's.db'}", *args) as s:
            yield s
    else:
        with postgres_database() as url, Server(url, *args) as s:
            yield s


class Identity:
    """A session the fuzzer sends requests as: its cookies and the CSRF token of its pages."""

    def __init__(self, cookies: dict[str, str], csrf: str) -> None:
        self.cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self.csrf = csrf


def respondent(base: str) -> tuple[Identity, str, dict[str, list[str]]]:
    """A respondent on page 1: its identity, the page's ``shown`` field and its radio groups with their codes."""
    c = httpx.Client(base_url=base, follow_redirects=True)
    csrf = hidden(c.get("/").text)["csrf"]
    page = c.post("/consent", data={"csrf": csrf, "decision": "agree"}).text
    radios = {n: re.findall(rf'name="{re.escape(n)}" value="([^"]*)"', page) for n in radio_names(page)}
    return Identity(dict(c.cookies), csrf), hidden(page)["shown"], radios


def admin(base: str) -> Identity:
    c = httpx.Client(base_url=base)
    csrf = hidden(c.get("/admin/login").text)["csrf"]
    assert c.post("/admin/login", data={"csrf": csrf, "token": ADMIN_TOKEN}).status_code == 303
    return Identity(dict(c.cookies), csrf)


def check(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, f"{r.status_code} for {what}: {r.text[:300]}"


def test_schemathesis_finds_no_server_error_on_any_route(server):
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(server.url + "/admin/api/openapi.json", headers=admin_headers())
    ops = {op.ok().path for op in schema.get_all_operations()}
    assert {"/consent", "/survey/{n}", "/admin/api/invitations", "/admin/api/proposals/{pid}", "/admin/export.{fmt}"} <= ops
    me, _, _ = respondent(server.url)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    sent: list[int] = []

    @FUZZ
    @given(case=cases, with_session=st.booleans())
    def run(case, with_session: bool) -> None:
        headers = dict(admin_headers())
        if with_session:
            headers["cookie"] = me.cookie
            if isinstance(case.body, dict):
                case.body = {**case.body, "csrf": me.csrf}
        r = case.call(base_url=server.url, headers=headers, timeout=30)
        sent.append(r.status_code)
        assert r.status_code < 500, f"{r.status_code} for {case.method} {case.formatted_path} body={case.body!r:.200}: {r.text[:300]}"

    run()
    assert len(sent) >= 100 and any(s < 300 for s in sent) and any(400 <= s < 500 for s in sent)


# -- hypothesis on the form routes ----------------------------------------------------------------

ODD_TEXT = ["", "\x00", "a\x00b", "\ufeff", "ü" * 50, "=1+1", "<script>alert(1)</script>", "x" * 2000, "0", "-1", "99999999999999999999", "agree", "approved"]
ODD_BYTES = [b"\xff\xfe", b"\xed\xa0\x80", b"\\ud800", b"%00", b"\x00" * 10, b"\r\n--b0und--"]


@st.composite
def form_posts(draw, radios: dict[str, list[str]]) -> tuple[str, str, list[tuple[str, str | bytes, bool]], str, str]:
    """(path, who, fields as (name, value, as a file?), encoding, charset) of one form POST."""
    path = draw(st.sampled_from(["/consent", "/survey/1", "/survey/2", "/survey/0", "/survey/99999999999999999999", "/admin/login", "/admin/logout", "/admin/moderation/1", "/admin/moderation/9999999999"]))
    who = draw(st.sampled_from(["respondent", "respondent", "admin", "nobody"]))
    names = st.one_of(st.sampled_from(["csrf", "shown", "decision", "proposal", "token", "status", *radios]), st.text(max_size=12))
    values = st.one_of(st.text(max_size=80), st.sampled_from(ODD_TEXT), st.binary(max_size=40), st.sampled_from(ODD_BYTES))
    fields = draw(st.lists(st.tuples(names, values, st.integers(0, 3).map(lambda k: k == 0)), max_size=6))
    if radios and draw(st.booleans()):  # real answers instead, so that validation and saving run
        fields = [(n, v, f) for n, v, f in fields if n not in radios] + [(n, draw(st.sampled_from(codes)), False) for n, codes in radios.items()]
    if draw(st.booleans()):
        fields.append(("decision", draw(st.sampled_from(["agree", "decline"])), False))
    encoding = draw(st.sampled_from(["urlencoded", "urlencoded", "multipart", "multipart", "json", "text"]))
    charset = draw(st.sampled_from(["", "", "utf-8", "latin-1", "raw_unicode_escape", "utf-16", "no-such-charset"]))
    return path, who, fields, encoding, charset


def encode(fields: list[tuple[str, str | bytes, bool]], encoding: str, charset: str) -> tuple[bytes, dict[str, str]]:
    if encoding == "multipart":
        return multipart_body(fields, charset=charset)
    as_bytes = [(n.encode("utf-8", "surrogatepass"), v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass")) for n, v, _ in fields]
    if encoding == "urlencoded":
        body = "&".join(f"{quote_from_bytes(n)}={quote_from_bytes(v)}" for n, v in as_bytes).encode()
        return body, {"content-type": "application/x-www-form-urlencoded" + (f"; charset={charset}" if charset else "")}
    if encoding == "json":
        return json.dumps({n: v.decode("latin-1") if isinstance(v, bytes) else v for n, v, _ in fields}).encode(), {"content-type": "application/json"}
    return b"\n".join(n + b"=" + v for n, v in as_bytes), {"content-type": "text/plain"}


def test_hypothesis_form_posts_get_no_server_error(server):
    me, shown, radios = respondent(server.url)
    boss = admin(server.url)
    statuses: list[int] = []

    @FUZZ
    @given(post=form_posts(radios), add_csrf=st.integers(0, 4), add_shown=st.booleans(), twist=st.sampled_from(["none", "file", "repeat", "drop"]), pick=st.integers(0, 2))
    def run(post, add_csrf: int, add_shown: bool, twist: str, pick: int) -> None:
        path, who, fields, encoding, charset = post
        ident = {"respondent": me, "admin": boss}.get(who)
        if ident is not None and add_csrf:  # a valid token 4 times in 5 (in place of any drawn one)
            fields = [("csrf", ident.csrf, False), *(f for f in fields if f[0] != "csrf")]
        if add_shown:
            fields = [("shown", shown, False), *(f for f in fields if f[0] != "shown")]
        if fields and twist != "none":  # what browsers never send, done to one field (often csrf or shown)
            name, value, _ = fields[pick % len(fields)]
            if twist == "file":
                fields[pick % len(fields)] = (name, value, True)
            elif twist == "repeat":
                fields.append((name, value, False))
            else:
                del fields[pick % len(fields)]
        body, headers = encode(fields, encoding, charset)
        if ident is not None:
            headers["cookie"] = ident.cookie
        r = httpx.post(server.url + path, content=body, headers=headers, timeout=30)
        statuses.append(r.status_code)
        check(r, f"POST {path} as {who}, {encoding} {charset}, fields {fields!r:.300}")

    run()
    # The fuzzer reached past the checks: some posts were accepted (a saved page, a
    # moderation), and some refused by each kind of check.
    assert any(s in (200, 303) for s in statuses) and {400, 403} <= set(statuses), sorted(set(statuses))
    assert httpx.get(server.url + "/healthz").text == "ok"
