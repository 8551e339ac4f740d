"""The survey over real HTTP against `valign survey serve` subprocesses: CSRF, admin tokens,
headers, validation, invitations, moderation, exports, a crash mid-survey, and simulate."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import httpx
import pandas as pd
import pyreadstat
import pytest

from tests.survey_helpers import ADMIN_TOKEN, DB_BACKENDS, SRC, Server, admin_headers, hidden, instrument_file, postgres_database, radio_names
from valign.survey.db import head_revision


class Person:
    """A respondent driving the pages with httpx (its own cookie jar)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.c = httpx.Client(base_url=base, follow_redirects=True, timeout=30)
        self.page: httpx.Response | None = None

    def consent(self, start: str = "/") -> httpx.Response:
        r = self.c.get(start)
        assert r.status_code == 200, r.text
        self.page = self.c.post("/consent", data={**hidden(r.text), "decision": "agree"})
        return self.page

    def answers(self, html: str | None = None) -> dict[str, str]:
        html = html or self.page.text
        data = hidden(html)
        for name in radio_names(html):
            first = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html).group(1)
            data[name] = first
        return data

    def submit(self, data: dict[str, str] | None = None) -> httpx.Response:
        action = re.search(r'<form method="post" action="([^"]+)"', self.page.text).group(1)
        self.page = self.c.post(action, data=self.answers() if data is None else data)
        return self.page

    def finish(self) -> httpx.Response:
        while not str(self.page.url).endswith("/done"):
            assert self.submit().status_code == 200
        return self.page

    def resume_link(self) -> str:
        return re.search(r'class="resume-link"><a href="([^"]+)"', self.page.text).group(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = tmp_path_factory.mktemp("http") / "survey.db"
    with Server(f"sqlite:///{db}", "demo", "--rate-limit-ip", "0") as s:
        yield s


def summary(base: str) -> dict:
    return httpx.get(base + "/admin/api/summary", headers=admin_headers()).json()


# -- CSRF, headers, cookies ----------------------------------------------------------------------


def test_csrf_is_required_on_every_post(server):
    c = httpx.Client(base_url=server.url)
    r = c.get("/")
    csrf = hidden(r.text)["csrf"]
    cookie = r.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert c.post("/consent", data={"decision": "agree"}).status_code == 403
    assert c.post("/consent", data={"decision": "agree", "csrf": csrf[:-2] + "xx"}).status_code == 403
    stranger = httpx.Client(base_url=server.url)  # the right token without the session cookie
    assert stranger.post("/consent", data={"decision": "agree", "csrf": csrf}).status_code == 403
    ok = c.post("/consent", data={"decision": "agree", "csrf": csrf})
    assert ok.status_code == 303 and ok.headers["location"] == "/survey/1"
    page = c.get("/survey/1")
    assert c.post("/survey/1", data={**Person(server.url).answers(page.text), "csrf": "forged"}).status_code == 403


def test_security_headers_and_no_inline_code(server):
    r = httpx.get(server.url + "/")
    h = r.headers
    assert "default-src 'none'" in h["content-security-policy"] and "unsafe-inline" not in h["content-security-policy"]
    assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer" and h["x-content-type-options"] == "nosniff"
    assert "<script" not in r.text and "style=" not in r.text and "<style" not in r.text
    assert '<html lang="en">' in r.text
    assert httpx.get(server.url + "/static/survey.css").headers["content-type"].startswith("text/css")
    for path in ("/nowhere", "/survey/abc", "/r/not-a-token"):
        r = httpx.get(server.url + path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html") and "<h1>" in r.text


# -- admin ----------------------------------------------------------------------------------------


def test_admin_token_unset_wrong_and_right(server, tmp_path):
    with Server(f"sqlite:///{tmp_path / 'noadmin.db'}", admin_token=None) as bare:
        for path in ("/admin/", "/admin/api/summary", "/admin/export.csv", "/admin/login"):
            r = httpx.get(bare.url + path, headers=admin_headers())
            assert r.status_code == 403 and "VALIGN_ADMIN_TOKEN" in r.text
    for path in ("/admin/", "/admin/api/summary", "/admin/export.csv", "/admin/moderation"):
        assert httpx.get(server.url + path).status_code == 401
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(server.url + path, headers=admin_headers()).status_code == 200
    assert ADMIN_TOKEN not in httpx.get(server.url + "/admin/", headers=admin_headers()).text


def test_admin_login_form_sets_a_cookie_and_admin_forms_need_csrf(server):
    c = httpx.Client(base_url=server.url)
    form = hidden(c.get("/admin/login").text)
    assert c.post("/admin/login", data={**form, "token": "nope"}).status_code == 401
    assert c.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 403  # no CSRF token
    r = c.post("/admin/login", data={**form, "token": ADMIN_TOKEN})
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    dash = c.get("/admin/")
    assert dash.status_code == 200 and "Quality flags" in dash.text
    assert c.post("/admin/logout", data={}).status_code == 403
    assert c.post("/admin/logout", data=hidden(dash.text)).status_code == 303
    assert c.get("/admin/").status_code == 401


def admin_browser(base: str) -> httpx.Client:
    """A client signed in through the admin login form: it holds the admin cookie, no bearer token."""
    c = httpx.Client(base_url=base)
    r = c.post("/admin/login", data={**hidden(c.get("/admin/login").text), "token": ADMIN_TOKEN})
    assert r.status_code == 303, r.text
    return c


def proposal_status(db_url: str, pid: int) -> str:
    from sqlalchemy.orm import Session

    from valign.survey.db import Proposal, make_engine

    engine = make_engine(db_url)
    try:
        with Session(engine) as s:
            return s.get(Proposal, pid).status
    finally:
        engine.dispose()


def test_moderation_form_approves_with_its_csrf_token_and_refuses_without(server):
    text = "The assistant should say when an answer is only its guess."
    writer = Person(server.url)
    writer.consent()
    while 'name="proposal"' not in writer.page.text:
        writer.submit()
    writer.submit({**writer.answers(), "proposal": text})

    admin = admin_browser(server.url)
    page = admin.get("/admin/moderation")
    assert page.status_code == 200
    pid = int(re.search(rf'Proposal (\d+) <span class="hint">\(pending\)</span></h2>\s*<p>{re.escape(text)}</p>', page.text).group(1))
    forms = re.findall(rf'<form method="post" action="(/admin/moderation/{pid})"[^>]*>(.*?)</form>', page.text, re.S)
    action, fields = next((a, hidden(body)) for a, body in forms if 'name="status" value="approved"' in body)
    assert set(fields) == {"csrf", "status"} and fields["status"] == "approved"

    # the admin cookie alone is not enough: a form without its CSRF token, or with a forged one, is refused
    assert admin.post(action, data={"status": "approved"}).status_code == 403
    assert admin.post(action, data={"status": "approved", "csrf": fields["csrf"][:-2] + "xx"}).status_code == 403
    assert httpx.post(server.url + action, data=fields).status_code == 401  # the token without the admin cookie
    assert proposal_status(server.db_url, pid) == "pending"

    r = admin.post(action, data=fields)
    assert r.status_code == 303 and r.headers["location"].endswith("/admin/moderation")
    assert proposal_status(server.db_url, pid) == "approved"
    after = admin.get("/admin/moderation").text
    assert re.search(rf'Proposal {pid} <span class="hint">\(approved\)</span>', after)
    later = Person(server.url)  # respondents who start now are asked it
    later.consent()
    pages = []
    while not str(later.page.url).endswith("/done"):
        pages.append(later.page.text)
        later.submit()
    assert any(f'name="q-prop-{pid}"' in t and text in t for t in pages)


# -- the respondent's flow -------------------------------------------------------------------------


def test_validation_messages_keep_answers_and_link_to_fields(server):
    p = Person(server.url)
    p.consent()
    p.submit()  # demographics may be skipped; page 2 holds value items
    data = p.answers()
    names = [n for n in radio_names(p.page.text)]
    kept, dropped = names[0], names[1]
    del data[dropped]
    r = p.submit(data)
    assert r.status_code == 200
    assert 'class="error-summary" role="alert"' in r.text and r.text.count('class="error-message"') == 1
    assert f'href="#{dropped}-1"' in r.text and "Choose how much this person is like you" in r.text
    assert re.search(rf'name="{kept}" value="{data[kept]}" checked', r.text)
    assert "<title>Error:" in r.text
    data2 = p.answers(r.text)
    data2[kept] = "99"
    r = p.submit(data2)
    assert r.status_code == 200 and "Choose one of the options shown" in r.text


def test_scenario_strength_and_proposal_length_are_checked(server):
    p = Person(server.url)
    p.consent()
    while 'name="s-' not in p.page.text:
        p.submit()
    data = p.answers()
    strength = next(n for n in data if n.startswith("s-"))
    del data[strength]
    r = p.submit(data)
    assert r.status_code == 200 and "Say how much better the answer you chose is" in r.text
    p.submit(p.answers(r.text))
    while 'name="proposal"' not in p.page.text:
        p.submit()
    r = p.submit({**p.answers(), "proposal": "x" * 301})
    assert r.status_code == 200 and "must be 300 characters or fewer; it has 301" in r.text
    r = p.submit({**p.answers(r.text), "proposal": "The assistant should say which sources it used."})
    assert str(r.url).endswith("/done") and "response number" in r.text


def test_resubmitting_a_page_updates_and_never_duplicates(server):
    p = Person(server.url)
    p.consent()
    p.submit()
    first = p.answers()
    p.submit(first)
    p.page = p.c.get("/survey/2")  # back to the value page: answers prefilled
    assert all(re.search(rf'name="{n}" value="{v}" checked', p.page.text) for n, v in first.items() if n.startswith("q-"))
    name = next(n for n in first if n.startswith("q-"))
    p.submit({**p.answers(), name: "6"})
    p.finish()
    rid = re.search(r'<strong class="code">([^<]+)</strong>', p.page.text).group(1)
    rows = [r for r in httpx.get(server.url + "/admin/export.json?include_excluded=true", headers=admin_headers()).json() if r["respondent_id"] == rid]
    assert len(rows) == 1 and rows[0][name[2:]] == "6"


def test_decline_stores_nothing_but_a_count(server):
    before = summary(server.url)
    c = httpx.Client(base_url=server.url)
    r = c.post("/consent", data={**hidden(c.get("/").text), "decision": "decline"})
    assert r.status_code == 200 and "Nothing you did here has been stored" in r.text
    after = summary(server.url)
    assert after["declined"] == before["declined"] + 1 and after["started"] == before["started"]


def test_moderated_proposals_reach_only_later_respondents(server):
    early = Person(server.url)
    early.consent()
    writer = Person(server.url)
    writer.consent()
    while 'name="proposal"' not in writer.page.text:
        writer.submit()
    writer.submit({**writer.answers(), "proposal": "The assistant should admit when it does not know."})
    props = httpx.get(server.url + "/admin/api/proposals", headers=admin_headers()).json()
    mine = next(p for p in props if p["text"] == "The assistant should admit when it does not know.")
    assert mine["status"] == "pending"
    pending_view = Person(server.url)
    pending_view.consent()
    assert "admit when it does not know" not in "".join(pending_view.c.get(f"/survey/{n}").text for n in range(1, 2))
    r = httpx.post(server.url + f"/admin/api/proposals/{mine['id']}", json={"status": "approved"}, headers=admin_headers())
    assert r.json()["status"] == "approved"
    later = Person(server.url)
    later.consent()
    texts = []
    while not str(later.page.url).endswith("/done"):
        texts.append(later.page.text)
        later.submit()
    assert any(f'name="q-{mine["item_id"]}"' in t for t in texts)
    assert not any(f'name="q-{mine["item_id"]}"' in t for t in [early.finish().text])  # early respondents never see it
    table = pd.read_csv(io.BytesIO(httpx.get(server.url + "/admin/export.csv?include_excluded=true", headers=admin_headers()).content))
    assert mine["item_id"] in table.columns and table[mine["item_id"]].notna().sum() == 1


def test_exports_over_http_hold_no_tokens(server, tmp_path):
    p = Person(server.url)
    p.consent()
    resume = p.resume_link()
    p.finish()
    csv = httpx.get(server.url + "/admin/export.csv?include_excluded=true", headers=admin_headers())
    js = httpx.get(server.url + "/admin/export.json?include_excluded=true", headers=admin_headers())
    sav = httpx.get(server.url + "/admin/export.sav?include_excluded=true", headers=admin_headers())
    assert csv.status_code == js.status_code == sav.status_code == 200
    token = resume.rsplit("/", 1)[1]
    for body in (csv.content, js.content, sav.content):
        assert token.encode() not in body and b"127.0.0.1" not in body
    path = tmp_path / "export.sav"  # pyreadstat reads files
    path.write_bytes(sav.content)
    df, meta = pyreadstat.read_sav(str(path))
    assert len(df) == len(json.loads(js.content)) == len(pd.read_csv(io.BytesIO(csv.content)))
    assert meta.variable_value_labels["v_care_1"][1.0] == "Not like me at all"


# -- invitations ----------------------------------------------------------------------------------


def test_invitations_required_one_response_per_token(tmp_path):
    with Server(f"sqlite:///{tmp_path / 'inv.db'}", "demo", "--invitations", "required") as s:
        assert httpx.get(s.url + "/").status_code == 403
        assert httpx.get(s.url + "/i/not-a-token", follow_redirects=True).status_code == 404
        r = httpx.post(s.url + "/admin/api/invitations", json={"n": 2}, headers=admin_headers())
        token = r.json()["tokens"][0]
        p = Person(s.url)
        p.consent(f"/i/{token}")
        p.submit()
        assert p.resume_link().endswith(f"/i/{token}")
        again = Person(s.url)  # the same link in another browser: the same response, resumed
        page = again.c.get(f"/i/{token}")
        assert str(page.url).endswith("/survey/2")
        assert summary(s.url)["started"] == 1
        blank = httpx.Client(base_url=s.url)  # a valid session and CSRF token, but no invitation
        form = hidden(blank.get("/admin/login").text)
        refused = blank.post("/consent", data={**form, "decision": "agree"})
        assert refused.status_code == 403 and "invitation" in refused.text
        assert summary(s.url)["started"] == 1


# -- crash safety -----------------------------------------------------------------------------------


def test_resume_after_the_server_is_killed_loses_no_saved_answers(tmp_path):
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    s = Server(url)
    try:
        p = Person(s.url)
        p.consent()
        sent = {}
        for _ in range(3):
            data = p.answers()
            sent.update({k[2:]: v for k, v in data.items() if k.startswith("q-")})
            p.submit(data)
        link = p.resume_link()
        s.kill()
    finally:
        s.stop()
    with Server(url) as s2:
        fresh = httpx.Client(follow_redirects=True)
        r = fresh.get(s2.url + link[link.index("/r/"):])
        assert str(r.url).endswith("/survey/4")
        stored = [row for row in httpx.get(s2.url + "/admin/export.json?include_excluded=true", headers=admin_headers()).json()]
        assert len(stored) == 1
        assert {k: stored[0][k] for k in sent} == sent


# -- synthetic respondents ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_simulate_marks_synthetic_and_quality_flags_catch_the_bad_ones(tmp_path, backend):
    from valign.survey.db import load_frames
    from valign.survey.instrument import load_instrument
    from valign.survey.quality import add_quality
    from valign.survey.simulate import Population, run_simulation

    inst_path = instrument_file(tmp_path, min_seconds_per_item=0.04)  # clean ones think 0.1 s, speeders none
    pop = Population(seed=3, profiles={"clean": 2, "straightliner": 1, "speeder": 1, "inattentive": 1, "high_sd": 1}, seconds_per_item=0.1, propose=0)

    def run(url: str) -> None:
        with Server(url, str(inst_path)) as s:
            result = run_simulation(s.url, 6, instrument=str(inst_path), population=pop, admin_token=ADMIN_TOKEN)
            assert result.errors == [] and result.completed == 6
            with pytest.raises(Exception, match="admin token"):
                run_simulation(s.url, 1, instrument=str(inst_path), population=pop, admin_token="wrong")
        frames = add_quality(load_frames(url, load_instrument(inst_path)))
        r = frames.respondents
        assert len(r) == 6 and r["synthetic"].all() and r["completed"].all()
        by_profile = {rec.respondent_id: rec.profile for rec in result.respondents}
        flags = {by_profile[rid]: {c for c in ("flag_attention", "flag_straightlining", "flag_speeding", "flag_social_desirability") if row[c]} for rid, row in r.iterrows()}
        assert flags["clean"] == set()  # both clean respondents (the dict keeps the last; check both)
        assert not r.loc[[rid for rid, p in by_profile.items() if p == "clean"], ["flag_attention", "flag_straightlining", "flag_speeding", "flag_social_desirability"]].any().any()
        assert "flag_straightlining" in flags["straightliner"]
        assert flags["speeder"] == {"flag_speeding"}
        assert flags["inattentive"] == {"flag_attention"}
        assert flags["high_sd"] == {"flag_social_desirability"}
        # every answer the simulator sent is stored, once
        sent = sum(len(rec.answers) for rec in result.respondents)
        assert len(frames.answers) == sent

    if backend == "sqlite":
        run(f"sqlite:///{tmp_path / 'sim.db'}")
    else:
        with postgres_database() as url:
            run(url)


def test_simulate_command_completes_synthetic_respondents_on_a_running_server(tmp_path):
    """`valign survey simulate --n 3 --url …` end to end: a real server, the real command."""
    from valign.survey.db import load_frames
    from valign.survey.instrument import load_instrument

    population = tmp_path / "population.yaml"  # only clean respondents: all three must finish
    population.write_text("seed: 5\nprofiles: {clean: 1.0}\npropose: 0\n", encoding="utf-8")
    db_url = f"sqlite:///{tmp_path / 'cli-sim.db'}"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "VALIGN_ADMIN_TOKEN": ADMIN_TOKEN}
    server = Server(db_url, "demo")
    try:
        cmd = [sys.executable, "-m", "valign.cli", "survey", "simulate", "--n", "3", "--url", server.url, "--population", str(population)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "started 3, completed 3 of 3" in out.stdout
        wrong = subprocess.run(cmd, capture_output=True, text=True, env={**env, "VALIGN_ADMIN_TOKEN": "not-the-token-" + "y" * 20}, timeout=120)
        assert wrong.returncode == 2 and "refused the admin token" in wrong.stderr and "Traceback" not in wrong.stderr
    finally:
        server.stop()
    r = load_frames(db_url, load_instrument("demo")).respondents
    assert len(r) == 3 and r["synthetic"].all() and r["completed"].all()


def test_simulate_command_without_a_server_says_so(tmp_path):
    from tests.survey_helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "VALIGN_ADMIN_TOKEN": ADMIN_TOKEN}
    out = subprocess.run([sys.executable, "-m", "valign.cli", "survey", "simulate", "--n", "1", "--url", url], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and f"could not reach a survey at {url}" in out.stderr and "Traceback" not in out.stderr


# -- the command line on the same database ----------------------------------------------------------


def test_cli_invite_flags_and_export(server, tmp_path):
    from typer.testing import CliRunner

    from valign.cli import app

    Person(server.url).consent()
    run = CliRunner().invoke
    out = run(app, ["survey", "migrate", "--db", server.db_url])
    assert out.exit_code == 0 and f"revision {head_revision()}" in out.output
    out = run(app, ["survey", "invite", "--n", "3", "--db", server.db_url, "--base-url", server.url])
    links = out.output.split()
    assert out.exit_code == 0 and len(links) == 3 and all(link.startswith(server.url + "/i/") for link in links)
    assert httpx.get(links[0], follow_redirects=True).status_code == 200  # a working invitation
    out = run(app, ["survey", "flags", "--db", server.db_url])
    assert out.exit_code == 0 and out.output.startswith("attention\t")
    for name in ("r.csv", "r.json", "r.sav"):
        out = run(app, ["survey", "data", str(tmp_path / name), "--db", server.db_url, "--include-excluded"])
        assert out.exit_code == 0 and (tmp_path / name).stat().st_size > 0
    assert summary(server.url)["started"] == len(pd.read_csv(tmp_path / "r.csv"))


def test_simulated_respondents_send_a_dropped_request_again_and_lose_nothing(tmp_path, monkeypatch):
    """A connection dropped mid-request (a server worker killed) is sent again, as a person
    presses the button again: every respondent finishes and every answer is stored once."""
    import httpx

    from valign.survey import simulate as sim
    from valign.survey.db import Answer, make_engine
    from valign.survey.simulate import Population, run_simulation

    real = sim._shared_client
    dropped: list[str] = []
    posts = [0]

    def flaky_client(concurrency: int, timeout: float):  # noqa: ANN202
        client = real(concurrency, timeout)
        send = client.send

        async def send_or_drop(request, **kw):  # noqa: ANN001, ANN003
            posts[0] += request.method == "POST"
            if request.method == "POST" and posts[0] % 5 == 0 and len(dropped) < 6:  # every fifth page saved
                dropped.append(str(request.url))
                await send(request, **kw)  # the server saves the page, then the answer is lost on the way back
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
            return await send(request, **kw)

        client.send = send_or_drop
        return client

    monkeypatch.setattr(sim, "_shared_client", flaky_client)
    db_url = f"sqlite:///{tmp_path / 'retry.db'}"
    with Server(db_url, "demo") as server:
        pop = Population(seed=3, profiles={"clean": 1.0}, seconds_per_item=0.0, propose=0.0)
        result = run_simulation(server.url, 4, population=pop, admin_token=ADMIN_TOKEN)
    assert dropped, "no request was dropped: the test did not test anything"
    assert result.completed == 4 and not result.errors
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    engine = make_engine(db_url)
    with Session(engine) as s:
        stored = s.execute(select(Answer.respondent_id, Answer.item_id, func.count()).group_by(Answer.respondent_id, Answer.item_id)).all()
    engine.dispose()
    assert stored and all(n == 1 for *_, n in stored)
    assert len(stored) == sum(len(r.answers) for r in result.respondents)
