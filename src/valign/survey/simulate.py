"""Synthetic respondents that complete a running survey through its real HTTP pages.

Each synthetic respondent opens an invitation link made with ``synthetic: true`` by
the admin API (so the database marks it synthetic, and nobody without the admin token
can mark themselves so), reads every page's HTML form — hidden CSRF and timing fields
included —, answers it the way its profile and its demographic group tend to, and
submits it, with a per-question thinking time, until the thank-you page — or until the
closing page of a full quota cell, which screens it out as it would a person
(`valign.survey.quota_fill`; synthetic respondents fill their own pool of the quotas).

A population (YAML; the shipped ``demo`` fits the demo instrument) gives:

* ``demographics`` — category probabilities per demographic question (uniform if
  absent) and ``skip_demographic``, the chance of leaving one unanswered;
* answer tendencies: ``values`` (value → shift of the latent importance, in scale
  halves), ``agree`` (statement id → P(agree)), ``up`` (rated answer id → P(👍)),
  defaults ``agree_default`` / ``up_default``; and ``groups``, each a ``when``
  condition on demographics with its own ``values`` / ``agree`` / ``up`` that add to
  or replace the defaults; scenario choices follow the values each answer expresses;
* ``profiles`` — shares of behaviours: ``clean``, ``straightliner`` (one answer for all
  value items), ``speeder`` (no thinking time), ``inattentive`` (fails attention
  checks), ``high_sd`` (claims every socially desirable trait), ``dropout`` (stops
  half-way), ``decliner`` (declines consent). Shares become exact counts (largest
  remainder), so ``n`` respondents always hold the same mix;
* ``seconds_per_item`` (thinking time per question of every profile but speeders) and
  ``propose`` (share who propose a statement).

Example (against a running survey; ``p95``: request latency in seconds)::

    result = run_simulation("http://127.0.0.1:8000", n=20, admin_token="…")
    result.completed, result.p95
"""

from __future__ import annotations

import asyncio
import html
import math
import random
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from valign.errors import ValignError
from valign.survey.instrument import Instrument

__all__ = ["Population", "Group", "load_population", "run_simulation", "simulate", "SimResult", "SimRespondent", "PROFILES"]

Profile = Literal["clean", "straightliner", "speeder", "inattentive", "high_sd", "dropout", "decliner"]
PROFILES: tuple[str, ...] = ("clean", "straightliner", "speeder", "inattentive", "high_sd", "dropout", "decliner")

_PROPOSALS = [
    "The assistant should say when it is unsure instead of guessing.",
    "The assistant should explain the reasons behind its advice.",
    "The assistant should treat every user with the same respect.",
    "The assistant should not pretend to have feelings it does not have.",
    "The assistant should point people to a professional for serious health problems.",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Group(_Strict):
    """Tendencies of the respondents whose demographics match ``when`` (question id → codes).

    Example:
        >>> Group(when={"age_group": ["65+"]}, values={"tradition": 0.8}, agree={"pr-warn": 0.85}).values
        {'tradition': 0.8}
    """

    when: dict[str, list[str]]
    values: dict[str, float] = Field(default_factory=dict)
    agree: dict[str, float] = Field(default_factory=dict)
    up: dict[str, float] = Field(default_factory=dict)


class Population(_Strict):
    """Who the synthetic respondents are and how they answer (see the module docstring).

    Example:
        >>> Population(profiles={"clean": 0.9, "speeder": 0.1}, seconds_per_item=0.5).seconds_per_item
        0.5
    """

    seed: int = 0
    demographics: dict[str, dict[str, float]] = Field(default_factory=dict)
    skip_demographic: float = Field(0.02, ge=0, le=1)
    values: dict[str, float] = Field(default_factory=dict)
    value_noise: float = Field(0.6, ge=0)
    agree_default: float = Field(0.6, ge=0, le=1)
    pass_rate: float = Field(0.1, ge=0, le=1)
    agree: dict[str, float] = Field(default_factory=dict)
    up_default: float = Field(0.6, ge=0, le=1)
    up: dict[str, float] = Field(default_factory=dict)
    groups: list[Group] = Field(default_factory=list)
    profiles: dict[Profile, float] = Field(default_factory=lambda: {"clean": 1.0})
    seconds_per_item: float = Field(0.0, ge=0)
    propose: float = Field(0.05, ge=0, le=1)


def load_population(name_or_path: str | Path | None = None) -> Population:
    """A population YAML file or a shipped name (``demo``); None gives the defaults.

    Example:
        >>> load_population("demo").profiles["clean"]
        0.85
    """
    if name_or_path is None:
        return Population()
    path = Path(name_or_path)
    if not path.exists():
        shipped = resources.files("valign") / "data" / "populations" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise ValignError(f"population '{name_or_path}' is neither a file nor a shipped population (demo); check the path.")
        path = Path(str(shipped))
    try:
        return Population.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as e:
        raise ValignError(f"{path} is not valid YAML: {e}; fix the syntax.") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValignError(f"{path}: {where}: {first['msg']}; fix that value.") from None


# -- reading the pages ---------------------------------------------------------------------


RETRIES = 3  # times a request whose connection dropped is sent again
RETRY_SECONDS = 0.5  # the wait before each

_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.S | re.I)
_TAG = re.compile(r"<(input|textarea|button)\b([^>]*)>", re.I)
_ATTR = re.compile(r'([A-Za-z_:][-A-Za-z0-9_:.]*)\s*=\s*"([^"]*)"')
_RESPONSE_ID = re.compile(r'<strong class="code">([^<]+)</strong>')


@dataclass
class _Form:
    """The first POST form of a page: its action, hidden fields, radio groups, text areas, buttons."""

    action: str | None = None
    hidden: dict[str, str] = field(default_factory=dict)
    radios: dict[str, list[str]] = field(default_factory=dict)
    textareas: list[str] = field(default_factory=list)
    buttons: dict[str, list[str]] = field(default_factory=dict)
    response_id: str | None = None


def _parse(page: str) -> _Form:
    """Read a page's form the way a browser submits it (a light tag scanner: these pages
    are ours and well-formed, and a full HTML parser would cost the load test most of its CPU)."""
    out = _Form()
    rid = _RESPONSE_ID.search(page)
    out.response_id = html.unescape(rid.group(1)).strip() if rid else None
    for form in _FORM.finditer(page):
        attrs = {k.lower(): html.unescape(v) for k, v in _ATTR.findall(form.group(1))}
        if attrs.get("method", "").lower() != "post":
            continue
        out.action = attrs.get("action")
        for tag, raw in _TAG.findall(form.group(2)):
            a = {k.lower(): html.unescape(v) for k, v in _ATTR.findall(raw)}
            tag, name = tag.lower(), a.get("name", "")
            if tag == "textarea":
                out.textareas.append(name)
            elif tag == "button" and name:
                out.buttons.setdefault(name, []).append(a.get("value", ""))
            elif tag == "input" and a.get("type", "text") == "hidden":
                out.hidden[name] = a.get("value", "")
            elif tag == "input" and a.get("type") == "radio":
                out.radios.setdefault(name, []).append(a.get("value", ""))
        break
    return out


# -- one synthetic person --------------------------------------------------------------------


@dataclass
class SimRespondent:
    """What one synthetic respondent did: its profile, answers sent, and how it ended."""

    index: int
    profile: str
    demographics: dict[str, str] = field(default_factory=dict)
    answers: dict[str, tuple[str, int | None, str | None]] = field(default_factory=dict)  # item → (choice, strength, text)
    respondent_id: str | None = None
    completed: bool = False
    screened_out: bool = False  # a full quota cell ended its survey
    pages: int = 0
    error: str | None = None


@dataclass
class SimResult:
    """All respondents, every request's latency in seconds, and the wall time."""

    respondents: list[SimRespondent]
    latencies: list[float]
    seconds: float

    @property
    def started(self) -> int:
        return sum(1 for r in self.respondents if r.respondent_id is not None or r.pages > 0)

    @property
    def completed(self) -> int:
        return sum(1 for r in self.respondents if r.completed)

    @property
    def screened_out(self) -> int:
        return sum(1 for r in self.respondents if r.screened_out)

    @property
    def errors(self) -> list[str]:
        return [f"#{r.index} ({r.profile}): {r.error}" for r in self.respondents if r.error]

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]

    @property
    def p50(self) -> float:
        return self.percentile(0.50)

    @property
    def p95(self) -> float:
        return self.percentile(0.95)


class _Person:
    """Draws a respondent's demographics and latent values, and answers items like them."""

    def __init__(self, index: int, profile: str, pop: Population, inst: Instrument) -> None:
        self.seed = pop.seed * 1_000_003 + index
        self.rng = random.Random(self.seed)
        self.profile, self.pop, self.inst = profile, pop, inst
        self.demo: dict[str, str] = {}
        for q in inst.demographics:
            probs = pop.demographics.get(q.id) or pop.demographics.get(q.margin) or {o.code: 1.0 for o in q.options}
            if self.rng.random() >= pop.skip_demographic:
                codes, weights = zip(*probs.items())
                self.demo[q.id] = self.rng.choices(codes, weights=weights)[0]
        groups = [g for g in pop.groups if all(self.demo.get(k) in v for k, v in g.when.items())]
        values = sorted(set(inst.value_key()) | set(pop.values))  # sorted: the same draws in every process
        self.mu = {v: pop.values.get(v, 0.0) + sum(g.values.get(v, 0.0) for g in groups) + self.rng.gauss(0, pop.value_noise) for v in values}
        self.agree = {**pop.agree, **{k: v for g in groups for k, v in g.agree.items()}}
        self.up = {**pop.up, **{k: v for g in groups for k, v in g.up.items()}}
        self.straight = None
        self.meta = {v.id: v for v in inst.values.items} if inst.values else {}
        self.checks = {c.id: c for c in inst.attention_checks}
        self.sd = {i.id: i for i in inst.social_desirability.items} if inst.social_desirability else {}
        self.scenarios = {s.id: s for s in inst.scenarios.items} if inst.scenarios else {}
        self.dropout_after = self.rng.randint(1, 5) if profile == "dropout" else None

    def answer(self, name: str, options: list[str]) -> str:
        """The answer to form field ``name`` (``q-<item>`` or ``s-<item>``) among ``options``.

        Drawn from a generator seeded by person and field, so the same person gives the
        same answers whatever order the server shows the questions in.
        """
        item = name[2:]
        kind, rng = name[:2], random.Random(f"{self.seed}:{name}")
        if kind == "s-":  # scenario strength
            return options[min(len(options) - 1, int(abs(self._scenario_margin(item)) * len(options) / 2))]
        if item in self.checks:
            check = self.checks[item]
            if self.profile == "inattentive":
                return rng.choice([o for o in options if o != check.expected] or options)
            if self.profile == "straightliner" and check.section == "values" and self.straight:
                return self.straight
            return check.expected
        if item in self.inst_demographics():
            return self.demo.get(item, "")
        if item in self.meta:
            if self.profile == "straightliner":
                self.straight = self.straight or random.Random(self.seed).choice(options)
                return self.straight
            points = len(options)
            v = self.meta[item]
            # Latent importance moves the expected rating by up to a third of the scale;
            # item noise keeps honest answers varied (real respondents rarely repeat one point).
            x = (points + 1) / 2 + self.mu.get(v.value, 0.0) * points / 6 + rng.gauss(0, 1.3)
            x = min(points, max(1, round(x)))
            return str(points + 1 - x if v.reverse else x)
        if item in self.sd:
            keyed = "true" if self.sd[item].keyed else "false"
            other = "false" if keyed == "true" else "true"
            if self.profile == "high_sd":
                return keyed
            return keyed if rng.random() < 0.3 else other
        if item in self.scenarios:
            margin = self._scenario_margin(item)
            p_first = 1 / (1 + math.exp(-2 * margin))
            first, second = (a.id for a in self.scenarios[item].answers)
            return first if rng.random() < p_first else second
        if set(options) == {"up", "down"}:
            return "up" if rng.random() < self.up.get(item, self.pop.up_default) else "down"
        if set(options) == {"agree", "disagree", "pass"}:
            if rng.random() < self.pop.pass_rate:
                return "pass"
            return "agree" if rng.random() < self.agree.get(item, self.pop.agree_default) else "disagree"
        return rng.choice(options)

    def inst_demographics(self) -> set[str]:
        return {q.id for q in self.inst.demographics}

    def _scenario_margin(self, item: str) -> float:
        s = self.scenarios.get(item)
        if s is None:
            return 0.0
        a, b = s.answers
        return sum(self.mu.get(v, 0.0) for v in a.values) - sum(self.mu.get(v, 0.0) for v in b.values)

    def proposal(self) -> str:
        return self.rng.choice(_PROPOSALS) if self.rng.random() < self.pop.propose else ""


def _assign_profiles(n: int, shares: dict[str, float]) -> list[str]:
    """Exact counts by largest remainder, in a seeded order the caller shuffles."""
    total = sum(shares.values()) or 1.0
    raw = {p: n * s / total for p, s in shares.items()}
    counts = {p: int(math.floor(x)) for p, x in raw.items()}
    for p in sorted(raw, key=lambda p: raw[p] - counts[p], reverse=True)[: n - sum(counts.values())]:
        counts[p] += 1
    return [p for p, c in counts.items() for _ in range(c)]


async def _respondent(client, base: str, link: str, person: _Person, rec: SimRespondent, latencies: list[float], max_pages: int) -> None:  # noqa: ANN001
    async def request(method: str, url: str, **kw: Any):
        # A connection dropped mid-request (a server worker killed or restarted) is sent
        # again, as a person presses the button again: pages are saved idempotently. The
        # latency counted is the whole wait, retries included.
        import httpx

        t = time.perf_counter()
        for attempt in range(RETRIES + 1):
            try:
                r = await client.request(method, url, **kw)
                break
            except httpx.TransportError:
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(RETRY_SECONDS)
        latencies.append(time.perf_counter() - t)
        return r

    async def follow(r):  # noqa: ANN001
        while r.status_code in (301, 302, 303, 307):
            r = await request("GET", base + r.headers["location"] if r.headers["location"].startswith("/") else r.headers["location"])
        return r

    r = await follow(await request("GET", link))
    form = _parse(r.text)
    if r.status_code != 200 or form.action is None or "decision" not in form.buttons:
        rec.error = f"no consent form at {r.url} (HTTP {r.status_code})"
        return
    decision = "decline" if person.profile == "decliner" else "agree"
    r = await follow(await request("POST", base + form.action, data={**form.hidden, "decision": decision}))
    if decision == "decline":
        return
    think = 0.0 if person.profile == "speeder" else person.pop.seconds_per_item
    while rec.pages < max_pages:
        if r.url.path.endswith(("/done", "/screened")):
            rec.completed = r.url.path.endswith("/done")
            rec.screened_out = not rec.completed
            rec.respondent_id = _parse(r.text).response_id
            return
        form = _parse(r.text)
        if r.status_code != 200 or form.action is None:
            rec.error = f"unexpected page {r.url.path} (HTTP {r.status_code})"
            return
        if person.dropout_after is not None and rec.pages >= person.dropout_after:
            return
        data = dict(form.hidden)
        for name, options in form.radios.items():
            choice = person.answer(name, options)
            if choice:
                data[name] = choice
        for name in form.textareas:
            data[name] = person.proposal()
        for name, choice in data.items():
            if name.startswith("q-"):
                rec.answers[name[2:]] = (choice, None, None)
        for name, choice in data.items():
            if name.startswith("s-") and name[2:] in rec.answers:
                rec.answers[name[2:]] = (rec.answers[name[2:]][0], int(choice), None)
        if data.get("proposal"):
            rec.answers["proposal"] = ("proposal", None, data["proposal"])
        for qid in person.inst_demographics():
            if f"q-{qid}" in data:
                rec.demographics[qid] = data[f"q-{qid}"]
        if think:
            n_items = max(1, sum(1 for k in form.radios if k.startswith("q-")))
            await asyncio.sleep(think * n_items)
        r = await follow(await request("POST", base + form.action, data=data))
        rec.pages += 1
        if 'class="error-summary"' in r.text:
            rec.error = f"the server refused the answers on {form.action}"
            return
    rec.error = f"gave up after {max_pages} pages"


async def simulate(
    url: str,
    n: int,
    instrument: Instrument,
    population: Population,
    admin_token: str,
    *,
    concurrency: int = 50,
    ramp_seconds: float = 0.0,
    timeout: float = 60.0,
) -> SimResult:
    """Run ``n`` synthetic respondents against the survey at ``url`` (async).

    ``ramp_seconds`` spreads their arrivals; ``concurrency`` bounds how many answer at once.

    Example::

        result = asyncio.run(simulate(url, 200, load_instrument("demo"), Population(), token, concurrency=200))
    """
    import httpx

    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(timeout=timeout) as admin:
        # The first request is where a wrong --url shows: say so in a sentence, not a traceback.
        try:
            r = await admin.post(f"{base}/admin/api/invitations", json={"n": n, "synthetic": True}, headers=headers)
        except httpx.TransportError as e:
            raise ValignError(f"could not reach a survey at {base} ({type(e).__name__}); start it with `valign survey serve` or pass its address with --url.") from None
        if r.status_code in (401, 403):
            raise ValignError(f"the survey at {base} refused the admin token ({r.status_code}); pass the server's VALIGN_ADMIN_TOKEN with --admin-token or the variable.")
        if r.status_code != 200:
            raise ValignError(f"{base} answered {r.status_code} to the survey's admin API; check that --url is the address of a running `valign survey serve`.")
        tokens = r.json()["tokens"]

    profiles = _assign_profiles(n, dict(population.profiles))
    random.Random(population.seed).shuffle(profiles)
    records = [SimRespondent(i, p) for i, p in enumerate(profiles)]
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    max_pages = 200

    async with _shared_client(concurrency, timeout) as shared:
        async def one(rec: SimRespondent, token: str) -> None:
            if ramp_seconds:
                await asyncio.sleep(ramp_seconds * rec.index / max(1, n))
            async with sem:
                person = _Person(rec.index, rec.profile, population, instrument)
                # Each respondent has its own cookie jar over the shared connection pool.
                client = _CookieClient(shared)
                try:
                    await _respondent(client, base, f"{base}/i/{token}", person, rec, latencies, max_pages)
                except Exception as e:  # a respondent's failure is a result, not a crash
                    rec.error = f"{type(e).__name__}: {e}"

        t0 = time.perf_counter()
        await asyncio.gather(*(one(rec, tok) for rec, tok in zip(records, tokens)))
    return SimResult(records, latencies, time.perf_counter() - t0)


class _CookieClient:
    """One respondent's cookies on top of a shared httpx client (and its connection pool).

    The shared client's own jar is switched off (`_shared_client`); each respondent
    keeps its cookies here and sends them itself, as a browser per person would.
    """

    def __init__(self, client) -> None:  # noqa: ANN001
        self.client = client
        self.cookies: dict[str, str] = {}

    async def request(self, method: str, url: str, **kw: Any):
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        r = await self.client.request(method, url, headers=headers, follow_redirects=False, **kw)
        for line in r.headers.get_list("set-cookie"):
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0].strip().strip('"')
            if "max-age=0" in line.lower() or not value:
                self.cookies.pop(name.strip(), None)
            else:
                self.cookies[name.strip()] = value
        return r


def _shared_client(concurrency: int, timeout: float):
    import httpx
    from http.cookiejar import DefaultCookiePolicy

    # Idle connections are dropped well before the server's keep-alive timeout, so a
    # request never goes out on a connection the server is closing at that moment.
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8, keepalive_expiry=2.0)
    client = httpx.AsyncClient(timeout=timeout, limits=limits)
    client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # no shared cookies
    return client


def run_simulation(url: str, n: int, *, instrument: Instrument | str = "demo", population: Population | str | None = "demo", admin_token: str | None = None, **kw: Any) -> SimResult:
    """`simulate`, from synchronous code; the admin token defaults to ``VALIGN_ADMIN_TOKEN``.

    Example (against a running survey)::

        run_simulation("http://127.0.0.1:8000", 10, admin_token="secret").completed
    """
    import os

    from valign.survey.instrument import load_instrument

    inst = load_instrument(instrument) if isinstance(instrument, (str, Path)) else instrument
    pop = population if isinstance(population, Population) else load_population(population)
    token = admin_token or os.environ.get("VALIGN_ADMIN_TOKEN")
    if not token:
        raise ValignError("simulate needs the survey's admin token to mark respondents synthetic; set VALIGN_ADMIN_TOKEN or pass --admin-token.")
    return asyncio.run(simulate(url, n, inst, pop, token, **kw))

