"""`valign survey serve --workers N` over real HTTP: sessions, CSRF and rate limits hold
across worker processes (rate limits live in the database), forwarded-for headers count
only from a configured proxy, and a worker killed with SIGKILL while many respondents
answer loses and duplicates no acknowledged answer."""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.survey_helpers import Server, admin_headers, hidden, radio_names

WORKERS = 3


def worker_pids(server: Server) -> list[int]:
    """The uvicorn worker processes under the server's supervisor process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == server.proc.pid and b"spawn_main" in cmdline:
                pids.append(int(entry.name))
    return pids


def wait_for_workers(server: Server, n: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(pids := worker_pids(server)) != n:
        assert time.monotonic() < deadline, f"{len(pids)} worker processes, expected {n}"
        time.sleep(0.1)
    return pids



def fresh(cookies: httpx.Cookies | None = None) -> httpx.Client:
    """A client on a new connection each time, so requests spread over the workers."""
    return httpx.Client(cookies=cookies, timeout=30, headers={"Connection": "close"})


def test_sessions_csrf_and_rate_limits_hold_across_workers(db_url):
    from sqlalchemy import text

    from valign.survey.db import make_engine

    with Server(db_url, "demo", "--workers", str(WORKERS), "--rate-limit-session", "30", "--pool-size", "4") as s:
        wait_for_workers(s, WORKERS)
        first = fresh()
        landing = first.get(s.url + "/")
        csrf, jar = hidden(landing.text)["csrf"], first.cookies
        # One browser session, every request on a new connection: the cookie's session
        # and its CSRF token are valid in whichever worker answers.
        codes = [fresh(jar).post(s.url + "/consent", data={"csrf": csrf, "decision": "decline"}).status_code for _ in range(12)]
        assert codes[:10] == [200] * 10 and codes[10:] == [429, 429], codes  # burst 10, counted across workers
        assert fresh(jar).post(s.url + "/consent", data={"csrf": "forged", "decision": "decline"}).status_code in (403, 429)
        other = fresh()
        csrf2 = hidden(other.get(s.url + "/").text)["csrf"]
        started = fresh(other.cookies).post(s.url + "/consent", data={"csrf": csrf2, "decision": "agree"}, follow_redirects=False)
        assert started.status_code == 303
        jar2 = other.cookies
        jar2.update(started.cookies)
        page = fresh(jar2).get(s.url + "/survey/1")
        assert page.status_code == 200 and "q-" in page.text
        # Wrong admin tokens are counted across workers too, and the right one still works.
        guesses = [fresh().get(s.url + "/admin/api/summary", headers={"Authorization": f"Bearer guess-{i}"}).status_code for i in range(7)]
        assert guesses[:5] == [401] * 5 and guesses[5:] == [429, 429], guesses
        assert fresh().get(s.url + "/admin/api/summary", headers=admin_headers()).status_code == 200
    engine = make_engine(db_url)
    with engine.connect() as conn:
        keys = [k for (k,) in conn.execute(text("SELECT key FROM rate_limit_buckets"))]
    engine.dispose()
    assert keys and all(re.fullmatch(r"[0-9a-f]{64}", k) for k in keys), "buckets are stored under keyed hashes, never an address"


def test_forwarded_for_counts_only_from_a_configured_proxy(tmp_path):
    db = f"sqlite:///{tmp_path / 'fwd.db'}"

    def guesses(server: Server) -> list[int]:
        # Each guess claims another client address, as a guesser rotating the header would.
        return [httpx.get(server.url + "/admin/api/summary", headers={"Authorization": "Bearer nope", "X-Forwarded-For": f"203.0.113.{i}"}).status_code for i in range(7)]

    with Server(db) as s:  # default: no proxy trusted, the header is ignored
        assert guesses(s)[5:] == [429, 429]
    with Server(db, "demo", "--forwarded-allow-ips", "127.0.0.1") as s:  # behind a proxy on this machine
        assert guesses(s) == [401] * 7, "each forwarded address has its own budget"


# -- a worker killed mid-run ------------------------------------------------------------------------


class Respondent(threading.Thread):
    """A respondent on its own connection who retries, as a browser's user would, when a
    request fails; records an answer as acknowledged only when its page's 303 came back."""

    def __init__(self, base: str, token: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.base, self.token, self.rng = base, token, random.Random(seed)
        self.acked: dict[str, str] = {}
        self.choice: dict[str, str] = {}
        self.done = False
        self.dropped = 0
        self.error: str | None = None
        self.c = httpx.Client(base_url=base, timeout=30)

    def request(self, method: str, path: str, **kw) -> httpx.Response | None:
        try:
            return self.c.request(method, path, follow_redirects=False, **kw)
        except httpx.TransportError:
            self.dropped += 1
            self.c.close()
            self.c = httpx.Client(base_url=self.base, timeout=30, cookies=self.c.cookies)
            time.sleep(0.1)
            return None

    def run(self) -> None:
        try:
            self.answer()
        except Exception as e:  # reported by the test
            self.error = f"{type(e).__name__}: {e}"

    def answer(self) -> None:
        path = f"/i/{self.token}"
        for _ in range(200):
            r = self.request("GET", path)
            if r is None:
                path = "/continue"
                continue
            if r.status_code == 303:
                path = r.headers["location"]
                continue
            if path.endswith("/done"):
                self.done = True
                return
            assert r.status_code == 200, (path, r.status_code)
            form = hidden(r.text)
            if path == "/":
                sent = self.request("POST", "/consent", data={**form, "decision": "agree"})
                path = sent.headers["location"] if sent is not None and sent.status_code == 303 else "/continue"
                continue
            data = dict(form)
            for name in radio_names(r.text):
                options = re.findall(rf'name="{re.escape(name)}" value="([^"]*)"', r.text)
                # The same answer every time a page is shown again, so that a retried page
                # that had in fact been saved stores exactly what was sent.
                data[name] = self.choice.setdefault(name, self.rng.choice(options))
            action = re.search(r'<form method="post" action="([^"]+)"', r.text).group(1)
            time.sleep(self.rng.uniform(0.0, 0.05))
            sent = self.request("POST", action, data=data)
            if sent is not None and sent.status_code == 303:
                self.acked.update({k[2:]: v for k, v in data.items() if k.startswith("q-")})
                path = sent.headers["location"]
            else:
                path = "/continue"
        self.error = "gave up after 200 requests"


def test_a_worker_killed_mid_run_loses_and_duplicates_no_acknowledged_answer(db_url):
    from sqlalchemy import func, select

    from valign.survey.db import Answer, Invitation, Respondent as RespondentRow, make_engine, token_hash

    n = 48
    with Server(db_url, "demo", "--workers", str(WORKERS), "--pool-size", "4") as s:
        pids = wait_for_workers(s, WORKERS)
        r = httpx.post(s.url + "/admin/api/invitations", json={"n": n, "synthetic": True}, headers=admin_headers())
        tokens = r.json()["tokens"]
        people = [Respondent(s.url, t, i) for i, t in enumerate(tokens)]
        for p in people:
            p.start()
        deadline = time.monotonic() + 60
        while sum(len(p.acked) for p in people) < n * 15 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(pids[0], signal.SIGKILL)  # one worker, mid-request for some of them
        for p in people:
            p.join(120)
        replaced = wait_for_workers(s, WORKERS)
        assert pids[0] not in replaced, "the supervisor started a new worker"
    assert [p.error for p in people if p.error] == []
    assert all(p.done for p in people), "every respondent finished, retrying what the kill dropped"
    assert sum(p.dropped for p in people) > 0, "the kill dropped someone's request: it happened mid-run"
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rid_of = dict(conn.execute(select(Invitation.token_hash, RespondentRow.id).join(RespondentRow, RespondentRow.invitation_id == Invitation.id)).all())
        stored = {(rid, item): choice for rid, item, choice in conn.execute(select(Answer.respondent_id, Answer.item_id, Answer.choice))}
        duplicated = conn.execute(select(Answer.respondent_id, Answer.item_id).group_by(Answer.respondent_id, Answer.item_id).having(func.count() > 1)).all()
        completed = conn.execute(select(func.count()).select_from(RespondentRow).where(RespondentRow.completed.is_(True))).scalar()
    engine.dispose()
    acked = [(rid_of[token_hash(p.token)], item, choice) for p in people for item, choice in p.acked.items()]
    lost = [a for a in acked if stored.get(a[:2]) != a[2]]
    assert len(acked) > n * 30 and lost == [] and duplicated == [] and completed == n
