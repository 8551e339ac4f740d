"""What every survey route shares: settings, the browser's session, the respondent, the
`SurveyState` (instrument, database, signing, limits, templates), and `Problem`.

The public pages (`valign.survey.app`) and the admin pages (`valign.survey.admin`)
both build on this module; neither imports the other's internals.

Example:
    >>> BrowserSession(sid="abc", rid="r1").payload()
    {'sid': 'abc', 'rid': 'r1'}
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from valign.survey.db import LIVE_SOURCE, Database, Invitation, PageEvent, Proposal, Respondent, new_token, token_hash
from valign.survey.flow import Page, plan_pages
from valign.survey.instrument import Instrument
from valign.survey.messages import BASE_CATALOGUE, messages
from valign.survey.render import Renderer
from valign.web.auth import AdminAuth
from valign.web.bodies import read_form
from valign.web.cookies import SignedCookie
from valign.web.csrf import check_csrf, csrf_token
from valign.web.ratelimit import RateLimiter, SqlBuckets, client_address
from valign.web.signing import Signer

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "SurveySettings",
    "BrowserSession",
    "RespondentState",
    "Problem",
    "respondent_problem",
    "SurveyState",
    "bad_invitation",
    "forget_respondent",
    "SESSION_COOKIE",
    "ADMIN_COOKIE",
    "ADMIN_SESSION_SECONDS",
]

SESSION_COOKIE = "valign_s"
ADMIN_COOKIE = "valign_admin"
ADMIN_SESSION_SECONDS = 8 * 3600


@dataclass
class SurveySettings:
    """How the app runs. Defaults read ``VALIGN_ADMIN_TOKEN`` and ``VALIGN_SURVEY_SECRET``.

    ``invitations``: ``open`` (anyone with the address may answer; invitation links
    work too) or ``required`` (only ``/i/<token>`` opens the survey).
    ``rate_limit_session`` / ``rate_limit_ip``: POSTs per minute per browser session /
    per client address (0 = off), counted in the database so that every worker process
    shares them. ``rate_limit_login``: wrong admin tokens per minute per address (ten
    times as many from all addresses together); the right token is never refused.
    ``public_url``: the address respondents use, from which resume and invitation links
    are built. Without it, links use the request's Host only when it is one of
    ``allowed_hosts`` (else 400), never an arbitrary Host header. ``secure_cookies``: set
    the cookies' Secure flag (default: when ``public_url`` is https).
    ``max_body_bytes``: the largest request body accepted (larger ones get 413 unread;
    a survey page's form is a few KiB).
    ``retention_days``: delete incomplete responses untouched for this many days, at
    start and hourly (`valign.survey.erasure`; None = keep them).

    Example:
        >>> SurveySettings(invitations="required", admin_token=None).invitations
        'required'
    """

    invitations: Literal["open", "required"] = "open"
    admin_token: str | None = field(default_factory=lambda: os.environ.get("VALIGN_ADMIN_TOKEN") or None)
    secret: str | None = field(default_factory=lambda: os.environ.get("VALIGN_SURVEY_SECRET") or None)
    rate_limit_session: int = 60
    rate_limit_ip: int = 600
    rate_limit_login: int = 10
    public_url: str | None = None
    allowed_hosts: tuple[str, ...] | list[str] = ("localhost", "127.0.0.1", "::1")
    secure_cookies: bool | None = None
    migrate: bool = True
    pool_size: int = 10
    max_body_bytes: int = 64 * 1024
    retention_days: float | None = None


# -- sessions ----------------------------------------------------------------------------


@dataclass
class BrowserSession:
    """The browser's signed session: its id (for CSRF), the respondent, the resume link."""

    sid: str
    rid: str | None = None  # Respondent.public_id
    link: str | None = None  # "/r/<token>" or "/i/<token>": how this respondent resumes
    inv: str | None = None  # an invitation token not yet consented to
    syn: bool = False  # opened through a synthetic invitation (made with the admin token)
    lang: str | None = None  # the language the respondent chose (or their invitation set)
    dirty: bool = False
    lang_changed: bool = False  # this request chose a language (``?lang=``): the response row follows

    def payload(self) -> dict[str, Any]:
        return {k: v for k, v in (("sid", self.sid), ("rid", self.rid), ("link", self.link), ("inv", self.inv), ("syn", self.syn), ("lang", self.lang)) if v}


@dataclass(frozen=True)
class RespondentState:
    """What a request needs to know of its respondent."""

    id: int
    public_id: str
    seed: int
    proposals: tuple[int, ...]
    completed: bool
    submitted: frozenset[str] | set[str]
    screened_out: bool = False  # a full quota cell ended their survey


class Problem(Exception):
    """Stop handling a request and answer with a page saying what happened."""

    def __init__(self, status: int, title: str, message: str, headers: dict[str, str] | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.headers = status, title, message, headers or {}
        self.key = key  # its entry under ``problems`` in the catalogues: shown in the respondent's language


def respondent_problem(status: int, key: str, headers: dict[str, str] | None = None) -> Problem:
    """A refusal a respondent may meet, worded by the catalogues' ``problems.<key>``: in
    English here (logs, JSON), in the respondent's language on the page.

    Example:
        >>> respondent_problem(404, "not_found").title
        'Page not found'
    """
    words = messages(BASE_CATALOGUE)["problems"][key]
    return Problem(status, words["title"], words["message"], headers, key=key)


class SurveyState:
    """Everything the routes share: instrument, database, signing, cookies, limits, templates."""

    def __init__(self, instrument: Instrument, db: Database, settings: SurveySettings, secret: str) -> None:
        self.instrument = instrument
        self.fingerprint = instrument.fingerprint()
        self.db = db
        self.settings = settings
        self.signer = Signer(secret, "session")
        self.page_signer = Signer(secret, "page-shown")
        self.admin = AdminAuth(settings.admin_token)
        # In the database, so that the limits hold across `--workers` processes.
        buckets = SqlBuckets(db.engine, secret)
        self.limit_session = RateLimiter(settings.rate_limit_session, burst=max(10, settings.rate_limit_session // 3), store=buckets)
        self.limit_ip = RateLimiter(settings.rate_limit_ip, burst=max(20, settings.rate_limit_ip // 3), store=buckets)
        self.limit_login = RateLimiter(settings.rate_limit_login, burst=5, store=buckets)
        self.limit_login_all = RateLimiter(settings.rate_limit_login * 10, burst=50, store=buckets)
        self.allowed_hosts = frozenset(h.lower().strip("[]") for h in settings.allowed_hosts)
        self.render = Renderer(instrument)
        secure = settings.secure_cookies
        self.secure = bool(settings.public_url and settings.public_url.startswith("https")) if secure is None else secure
        self.session_cookie = SignedCookie(SESSION_COOKIE, self.signer, secure=self.secure)
        self.admin_cookie = SignedCookie(ADMIN_COOKIE, self.signer, path="/admin", max_age=ADMIN_SESSION_SECONDS, samesite="strict", secure=self.secure)
        self._plans: dict[tuple, list[Page]] = {}

    # sessions and responses ------------------------------------------------------------

    def session(self, request: Request) -> BrowserSession:
        """The browser's session; a ``?lang=`` in the address chooses the language (400
        for a language this instrument does not have)."""
        data = self.session_cookie.read(request.cookies)
        if data and isinstance(data.get("sid"), str):
            lang = data.get("lang") if data.get("lang") in self.instrument.languages else None
            sess = BrowserSession(sid=data["sid"], rid=data.get("rid"), link=data.get("link"), inv=data.get("inv"), syn=bool(data.get("syn")), lang=lang)
        else:
            sess = BrowserSession(sid=secrets.token_urlsafe(16), dirty=True)
        chosen = request.query_params.get("lang")
        if chosen is not None:
            if chosen not in self.instrument.languages:
                raise Problem(400, "Language not available", f"This survey is not available in '{chosen[:20]}'; choose one of: {', '.join(self.instrument.languages)}.")
            if chosen != self.language(sess):
                sess.lang, sess.dirty, sess.lang_changed = chosen, True, True
        return sess

    def language(self, sess: BrowserSession | None) -> str:
        """The language a session's pages are shown in: its choice, else the base language."""
        return sess.lang if sess is not None and sess.lang else self.instrument.language

    def record_language(self, sess: BrowserSession) -> None:
        """A respondent who switches language mid-survey: their response records the new one."""
        if sess.lang_changed and sess.rid:
            with self.db.write() as s:
                s.query(Respondent).filter(Respondent.public_id == sess.rid).update({"language": self.language(sess)})

    def finish(self, response: Response, sess: BrowserSession) -> Response:
        if sess.dirty:
            self.session_cookie.write(response, sess.payload())
        return response

    def html(self, request: Request, sess: BrowserSession, template: str, status: int = 200, **ctx: Any) -> Response:
        from starlette.responses import HTMLResponse

        ctx.setdefault("csrf", csrf_token(self.signer, sess.sid))
        ctx.setdefault("root", request.scope.get("root_path", ""))
        return self.finish(HTMLResponse(self.render(template, lang=self.language(sess), **ctx), status_code=status), sess)

    def redirect(self, request: Request, sess: BrowserSession, path: str) -> Response:
        from starlette.responses import RedirectResponse

        return self.finish(RedirectResponse(request.scope.get("root_path", "") + path, status_code=303), sess)

    def problem_page(self, request: Request, p: Problem) -> Response:
        from starlette.responses import HTMLResponse, JSONResponse

        if request.url.path.startswith("/admin/api") or request.url.path.startswith("/admin/export"):
            return JSONResponse({"error": p.message}, status_code=p.status, headers=p.headers)
        data = self.session_cookie.read(request.cookies) or {}
        lang = data.get("lang") if data.get("lang") in self.instrument.languages else self.instrument.language
        title, message = p.title, p.message
        if p.key is not None:
            words = messages(lang)["problems"][p.key]
            title, message = words["title"], words["message"]
        body = self.render("problem.html", lang=lang, title=title, message=message, root=request.scope.get("root_path", ""), login=p.status == 401 and request.url.path.startswith("/admin"))
        return HTMLResponse(body, status_code=p.status, headers=p.headers)

    def public_base(self, request: Request) -> str:
        """Where links to this survey start: ``public_url``, else the request's own
        address when its Host is an allowed one. A link built from any Host header would
        let whoever sends the request choose where a respondent's resume link points."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        host = (request.url.hostname or "").lower()
        if host not in self.allowed_hosts:
            allowed = ", ".join(sorted(self.allowed_hosts)) or "none"
            raise Problem(400, "Unknown host", f"This survey does not answer for the host '{host[:100]}' (allowed: {allowed}); open it at its own address, or start it with --public-url or --allowed-host.")
        return str(request.base_url).rstrip("/")

    def wrong_admin_token(self, request: Request) -> Problem:
        """Count a wrong admin token against its address and against all addresses: the
        401 to answer, or a 429 once either budget is spent. Only wrong tokens are counted
        and refused, so nobody's guesses can lock out the administrator's right token."""
        own = self.limit_login.allow("guess:" + client_address(request))
        everyone = self.limit_login_all.allow("guess:*")
        if own and everyone:
            return Problem(401, "Wrong admin token", "The admin token is not right.", {"WWW-Authenticate": "Bearer"})
        return Problem(429, "Too many attempts", "Too many wrong admin tokens; wait a minute before trying another.", {"Retry-After": "60"})

    # checks --------------------------------------------------------------------------------

    def admit_post(self, request: Request, sess: BrowserSession) -> None:
        """What a form POST must pass before its body is read: the rate limits and the
        session cookie. A POST without the cookie cannot carry a valid CSRF token, so it is
        refused unread (its body would be parsed for nothing).

        Synthetic respondents (their invitation was made with the admin token) are not
        rate limited: ``valign survey simulate`` sends many from one address on purpose.
        """
        limited = not sess.syn and (not self.limit_ip.allow("ip:" + client_address(request)) or not self.limit_session.allow("s:" + sess.sid))
        if limited:
            raise respondent_problem(429, "too_many", {"Retry-After": "60"})
        if sess.dirty:  # no valid session cookie came with the form
            raise respondent_problem(403, "cookies")

    async def read_post(self, request: Request, sess: BrowserSession) -> dict[str, str]:
        """A form POST's fields, once it has passed `admit_post` and carries the session's
        CSRF token; malformed bodies are refused by `valign.web.bodies.read_form` (400)."""
        self.admit_post(request, sess)
        form = await read_form(request)
        self.require_csrf(sess, form)
        return form

    def require_csrf(self, sess: BrowserSession, form: dict[str, Any]) -> None:
        """403 unless the form carries the session's CSRF token."""
        if not check_csrf(self.signer, sess.sid, form.get("csrf")):
            raise respondent_problem(403, "form_expired")

    # respondents ----------------------------------------------------------------------------

    def plan(self, r: RespondentState, lang: str | None = None) -> list[Page]:
        """The respondent's pages in ``lang`` (default: the base language); the same keys and
        items in every language."""
        ids = r.proposals
        lang = lang or self.instrument.language
        key = (r.seed, ids, lang)
        plan = self._plans.get(key)
        if plan is None:
            texts: dict[int, str] = {}
            if ids:
                with self.db.read() as s:
                    texts = {p.id: p.text for p in s.query(Proposal).filter(Proposal.id.in_(ids))}
            plan = plan_pages(self.instrument.in_language(lang), r.seed, [(i, texts[i]) for i in ids if i in texts])
            if len(self._plans) > 5000:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def forget_plans(self) -> None:
        """Drop the cached page plans: they hold statement texts, which an erasure may have deleted."""
        self._plans.clear()

    def respondent(self, s, sess: BrowserSession) -> RespondentState | None:  # noqa: ANN001
        """The session's respondent and the pages it has submitted (one query, one round trip)."""
        from sqlalchemy import select

        if not sess.rid:
            return None
        rows = s.execute(
            select(Respondent.id, Respondent.seed, Respondent.shown_proposals, Respondent.completed, Respondent.screened_out, PageEvent.page)
            .outerjoin(PageEvent, PageEvent.respondent_id == Respondent.id)
            .where(Respondent.public_id == sess.rid)
        ).all()
        if not rows:
            return None
        row = rows[0]
        pages = {r.page for r in rows if r.page is not None}
        return RespondentState(row.id, sess.rid, row.seed, tuple(json.loads(row.shown_proposals or "[]")), bool(row.completed), pages, bool(row.screened_out))

    @staticmethod
    def first_open(plan: list[Page], submitted: set[str]) -> int | None:
        """1-based number of the first page not yet submitted; None when all are."""
        return next((i for i, p in enumerate(plan, 1) if p.key not in submitted), None)

    def start_respondent(self, sess: BrowserSession, synthetic: bool = False) -> bool:
        """Consent given: create the respondent (bound to the session's invitation, if any).

        True when a new respondent was created; False when the invitation already had one.
        """
        from sqlalchemy.exc import IntegrityError

        token = new_token()
        with self.db.write() as s:
            # Only this survey's statements: comments imported from Polis are analysed, never asked.
            approved = [p.id for p in s.query(Proposal).filter(Proposal.status == "approved", Proposal.source == LIVE_SOURCE).order_by(Proposal.id)]
            invitation = None
            if sess.inv:
                invitation = s.query(Invitation).filter(Invitation.token_hash == token_hash(sess.inv)).one_or_none()
                if invitation is None:
                    raise bad_invitation()
                existing = s.query(Respondent).filter(Respondent.invitation_id == invitation.id).one_or_none()
                if existing is not None:  # the invitation was used: back to that one response
                    sess.rid, sess.link, sess.inv, sess.dirty = existing.public_id, f"/i/{sess.inv}", None, True
                    return False
            r = Respondent(
                public_id=secrets.token_hex(8),
                resume_hash=token_hash(token),
                instrument_id=self.instrument.id,
                instrument_fingerprint=self.fingerprint,
                seed=secrets.randbelow(2**31),
                shown_proposals=json.dumps(approved),
                invitation_id=invitation.id if invitation else None,
                language=self.language(sess),
                synthetic=bool(invitation and invitation.synthetic) or synthetic,
            )
            s.add(r)
            try:
                s.flush()
            except IntegrityError:  # the same invitation consented twice at once: keep the first
                s.rollback()
                with self.db.read() as s2:
                    existing = s2.query(Respondent).filter(Respondent.invitation_id == invitation.id).one()  # type: ignore[union-attr]
                sess.rid, sess.link, sess.inv, sess.dirty = existing.public_id, f"/i/{sess.inv}", None, True
                return False
            link = f"/i/{sess.inv}" if sess.inv else f"/r/{token}"
            sess.rid, sess.link, sess.inv, sess.dirty = r.public_id, link, None, True
            return True


def bad_invitation() -> Problem:
    """The page for an invitation link that opens nothing."""
    return respondent_problem(404, "bad_invitation")


def forget_respondent(sess: BrowserSession) -> BrowserSession:
    """The session's respondent no longer exists (e.g. a new database): start afresh."""
    if sess.rid:
        sess.rid, sess.link, sess.dirty = None, None, True
    return sess

