"""The survey web app: server-rendered pages that work without JavaScript, and the admin.

Respondents: ``/`` (consent) → ``/survey/1`` … ``/survey/N`` → ``/done``. Every page
is saved when it is submitted (one transaction; answers upserted per question), and
``/r/<token>`` — the private link shown on every page — continues at the first page
not yet submitted, from any browser. With invitations, ``/i/<token>`` opens the survey
and always leads back to the same single response.

Admin (``Authorization: Bearer $VALIGN_ADMIN_TOKEN``, or the cookie the login form at
``/admin/login`` sets): ``/admin/`` dashboard, ``/admin/moderation``,
``/admin/api/summary``, ``/admin/api/responses``, ``/admin/api/proposals``,
``/admin/api/invitations`` (POST), ``/admin/export.csv|json|sav``.

Example:
    >>> app = create_app(load_instrument("demo"), "sqlite:///survey.db")
    >>> uvicorn.run(app, port=8000)
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from valign.errors import ValignError
from valign.survey.db import (
    PROPOSAL_ITEM,
    Answer,
    Database,
    Invitation,
    PageEvent,
    Proposal,
    Respondent,
    make_engine,
    migrate,
    new_token,
    token_hash,
    utcnow,
)
from valign.survey.flow import PROPOSAL_PAGE, Page, plan_pages
from valign.survey.instrument import Instrument, Item
from valign.survey.security import SECURITY_HEADERS, AdminAuth, RateLimiter, Signer, check_csrf, csrf_token

# Route signatures are resolved at run time by FastAPI, so these are real imports.
from fastapi import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["SurveySettings", "create_app", "app_from_env"]

SESSION_COOKIE = "valign_s"
ADMIN_COOKIE = "valign_admin"
ADMIN_SESSION_SECONDS = 8 * 3600
PAGE_SECONDS_CAP = 900.0  # a page left open longer counts as 15 minutes of active time


@dataclass
class SurveySettings:
    """How the app runs. Defaults read ``VALIGN_ADMIN_TOKEN`` and ``VALIGN_SURVEY_SECRET``.

    ``invitations``: ``open`` (anyone with the address may answer; invitation links
    work too) or ``required`` (only ``/i/<token>`` opens the survey).
    ``rate_limit_session`` / ``rate_limit_ip``: POSTs per minute per browser session /
    per client address (0 = off). ``public_url``: the address respondents use (for the
    resume link behind a proxy; default: the request's own). ``secure_cookies``: set
    the cookies' Secure flag (default: when ``public_url`` is https).

    Example:
        >>> SurveySettings(invitations="required", rate_limit_ip=0)
    """

    invitations: Literal["open", "required"] = "open"
    admin_token: str | None = field(default_factory=lambda: os.environ.get("VALIGN_ADMIN_TOKEN") or None)
    secret: str | None = field(default_factory=lambda: os.environ.get("VALIGN_SURVEY_SECRET") or None)
    rate_limit_session: int = 60
    rate_limit_ip: int = 600
    rate_limit_login: int = 10
    public_url: str | None = None
    secure_cookies: bool | None = None
    migrate: bool = True
    pool_size: int = 10


# -- sessions ----------------------------------------------------------------------------


@dataclass
class _Session:
    """The browser's signed session: its id (for CSRF), the respondent, the resume link."""

    sid: str
    rid: str | None = None  # Respondent.public_id
    link: str | None = None  # "/r/<token>" or "/i/<token>": how this respondent resumes
    inv: str | None = None  # an invitation token not yet consented to
    syn: bool = False  # opened through a synthetic invitation (made with the admin token)
    dirty: bool = False

    def payload(self) -> dict[str, Any]:
        return {k: v for k, v in (("sid", self.sid), ("rid", self.rid), ("link", self.link), ("inv", self.inv), ("syn", self.syn)) if v}


@dataclass(frozen=True)
class _Resp:
    """What a request needs to know of its respondent."""

    id: int
    public_id: str
    seed: int
    proposals: tuple[int, ...]
    completed: bool
    submitted: frozenset[str] | set[str]


class _Problem(Exception):
    """Stop handling a request and answer with a page saying what happened."""

    def __init__(self, status: int, title: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.title, self.message, self.headers = status, title, message, headers or {}


# -- the app -------------------------------------------------------------------------------


def create_app(instrument: Instrument, db_url: str, settings: SurveySettings | None = None) -> "FastAPI":
    """The survey as an ASGI app; migrates the database first unless ``settings.migrate`` is off.

    Example:
        >>> app = create_app(load_instrument("demo"), "sqlite:///survey.db", SurveySettings(invitations="required"))
    """
    from fastapi import FastAPI

    settings = settings or SurveySettings()
    engine = make_engine(db_url, pool_size=settings.pool_size)
    if settings.migrate:
        migrate(engine)
    db = Database(engine)
    if settings.admin_token is not None and len(settings.admin_token) < 16:
        raise ValignError("VALIGN_ADMIN_TOKEN is shorter than 16 characters, which can be guessed; use a long random value (e.g. from `openssl rand -hex 32`).")
    if settings.secret is not None and len(settings.secret) < 16:
        raise ValignError("VALIGN_SURVEY_SECRET is shorter than 16 characters; use a long random value (e.g. from `openssl rand -hex 32`) or unset it.")
    secret = settings.secret or db.ensure_setting("cookie_secret", lambda: secrets.token_urlsafe(48))
    survey = _Survey(instrument, db, settings, secret)

    app = FastAPI(title=f"valign survey: {instrument.title}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.survey = survey

    app.add_middleware(_SecurityHeaders)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(_Problem)
    async def _problem(request, exc: _Problem):  # noqa: ANN001
        return survey.problem_page(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):  # noqa: ANN001
        titles = {404: "Page not found", 405: "Not allowed"}
        msg = "There is no page at this address. Check the link you followed." if exc.status_code == 404 else str(exc.detail)
        return survey.problem_page(request, _Problem(exc.status_code, titles.get(exc.status_code, "Something went wrong"), msg))

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _malformed(request, exc):  # noqa: ANN001
        # e.g. /survey/abc: an address that names no page, not a form error
        return survey.problem_page(request, _Problem(404, "Page not found", "There is no page at this address. Check the link you followed."))

    from valign.survey.admin import admin_router

    app.include_router(_public_router(survey))
    app.include_router(admin_router(survey), prefix="/admin")
    return app


def app_from_env() -> "FastAPI":
    """An app built from the ``VALIGN_SURVEY_APP`` variable (JSON): what each
    ``uvicorn --factory`` worker loads. ``valign survey serve --workers N`` sets it (and
    migrates once, before starting); tokens and secrets come from their own variables.

    Example:
        >>> os.environ["VALIGN_SURVEY_APP"] = '{"instrument": "demo", "db_url": "sqlite:///survey.db", "migrate": false}'
        >>> uvicorn.run("valign.survey.app:app_from_env", factory=True, workers=2)
    """
    from valign.survey.instrument import load_instrument

    cfg = json.loads(os.environ["VALIGN_SURVEY_APP"])
    return create_app(load_instrument(cfg.pop("instrument")), cfg.pop("db_url"), SurveySettings(**cfg))


class _Survey:
    """Everything the routes share: instrument, database, signing, limits, templates."""

    def __init__(self, instrument: Instrument, db: Database, settings: SurveySettings, secret: str) -> None:
        from valign.survey.render import Renderer

        self.instrument = instrument
        self.fingerprint = instrument.fingerprint()
        self.db = db
        self.settings = settings
        self.signer = Signer(secret, "session")
        self.page_signer = Signer(secret, "page-shown")
        self.admin = AdminAuth(settings.admin_token)
        self.limit_session = RateLimiter(settings.rate_limit_session, burst=max(10, settings.rate_limit_session // 3))
        self.limit_ip = RateLimiter(settings.rate_limit_ip, burst=max(20, settings.rate_limit_ip // 3))
        self.limit_login = RateLimiter(settings.rate_limit_login, burst=5)
        self.render = Renderer(instrument)
        secure = settings.secure_cookies
        self.secure = bool(settings.public_url and settings.public_url.startswith("https")) if secure is None else secure
        self._plans: dict[tuple, list[Page]] = {}

    # sessions and responses ------------------------------------------------------------

    def session(self, request: "Request") -> _Session:
        data = self.signer.unsign(request.cookies.get(SESSION_COOKIE))
        if data and isinstance(data.get("sid"), str):
            return _Session(sid=data["sid"], rid=data.get("rid"), link=data.get("link"), inv=data.get("inv"), syn=bool(data.get("syn")))
        return _Session(sid=secrets.token_urlsafe(16), dirty=True)

    def finish(self, response: "Response", sess: _Session) -> "Response":
        if sess.dirty:
            response.set_cookie(SESSION_COOKIE, self.signer.sign(sess.payload()), httponly=True, samesite="lax", secure=self.secure, path="/")
        return response

    def html(self, request: "Request", sess: _Session, template: str, status: int = 200, **ctx: Any) -> "Response":
        from starlette.responses import HTMLResponse

        ctx.setdefault("csrf", csrf_token(self.signer, sess.sid))
        ctx.setdefault("root", request.scope.get("root_path", ""))
        return self.finish(HTMLResponse(self.render(template, **ctx), status_code=status), sess)

    def redirect(self, request: "Request", sess: _Session, path: str) -> "Response":
        from starlette.responses import RedirectResponse

        return self.finish(RedirectResponse(request.scope.get("root_path", "") + path, status_code=303), sess)

    def problem_page(self, request: "Request", p: _Problem) -> "Response":
        from starlette.responses import HTMLResponse, JSONResponse

        if request.url.path.startswith("/admin/api") or request.url.path.startswith("/admin/export"):
            return JSONResponse({"error": p.message}, status_code=p.status, headers=p.headers)
        body = self.render("problem.html", title=p.title, message=p.message, root=request.scope.get("root_path", ""), login=p.status == 401 and request.url.path.startswith("/admin"))
        return HTMLResponse(body, status_code=p.status, headers=p.headers)

    def public_base(self, request: "Request") -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")

    # checks --------------------------------------------------------------------------------

    def client_ip(self, request: "Request") -> str:
        return request.client.host if request.client else "unknown"

    def check_post(self, request: "Request", sess: _Session, form: dict[str, Any]) -> None:
        """CSRF and rate limits, for every form POST.

        Synthetic respondents (their invitation was made with the admin token) are not
        rate limited: ``valign survey simulate`` sends many from one address on purpose.
        """
        limited = not sess.syn and (not self.limit_ip.allow("ip:" + self.client_ip(request)) or not self.limit_session.allow("s:" + sess.sid))
        if limited:
            raise _Problem(429, "Too many requests", "You sent too many answers in a short time. Wait a minute, then go back and submit the page again.", {"Retry-After": "60"})
        if sess.dirty:  # no valid session cookie came with the form
            raise _Problem(403, "Cookies needed", "Your browser did not send this survey's cookie. Allow cookies for this site, reload the page and try again.")
        if not check_csrf(self.signer, sess.sid, form.get("csrf")):
            raise _Problem(403, "Form expired", "This form is out of date or did not come from this survey. Reload the page and submit it again.")

    # respondents ----------------------------------------------------------------------------

    def plan(self, r: "_Resp") -> list[Page]:
        ids = r.proposals
        key = (r.seed, ids)
        plan = self._plans.get(key)
        if plan is None:
            texts: dict[int, str] = {}
            if ids:
                with self.db.read() as s:
                    texts = {p.id: p.text for p in s.query(Proposal).filter(Proposal.id.in_(ids))}
            plan = plan_pages(self.instrument, r.seed, [(i, texts[i]) for i in ids if i in texts])
            if len(self._plans) > 5000:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def respondent(self, s, sess: _Session) -> "_Resp | None":  # noqa: ANN001
        """The session's respondent and the pages it has submitted (two small queries)."""
        from sqlalchemy import select

        if not sess.rid:
            return None
        row = s.execute(
            select(Respondent.id, Respondent.seed, Respondent.shown_proposals, Respondent.completed).where(Respondent.public_id == sess.rid)
        ).first()
        if row is None:
            return None
        pages = set(s.scalars(select(PageEvent.page).where(PageEvent.respondent_id == row.id).distinct()))
        return _Resp(row.id, sess.rid, row.seed, tuple(json.loads(row.shown_proposals or "[]")), bool(row.completed), pages)

    @staticmethod
    def first_open(plan: list[Page], submitted: set[str]) -> int | None:
        """1-based number of the first page not yet submitted; None when all are."""
        return next((i for i, p in enumerate(plan, 1) if p.key not in submitted), None)

    def start_respondent(self, sess: _Session, synthetic: bool = False) -> bool:
        """Consent given: create the respondent (bound to the session's invitation, if any).

        True when a new respondent was created; False when the invitation already had one.
        """
        from sqlalchemy.exc import IntegrityError

        token = new_token()
        with self.db.write() as s:
            approved = [p.id for p in s.query(Proposal).filter(Proposal.status == "approved").order_by(Proposal.id)]
            invitation = None
            if sess.inv:
                invitation = s.query(Invitation).filter(Invitation.token_hash == token_hash(sess.inv)).one_or_none()
                if invitation is None:
                    raise _bad_invitation()
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


# -- public routes --------------------------------------------------------------------------


def _public_router(sv: _Survey):
    from fastapi import APIRouter
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import PlainTextResponse

    from valign.survey.render import stylesheet

    router = APIRouter()
    css = stylesheet()

    @router.get("/static/survey.css")
    def _css() -> Response:
        return Response(css, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})

    @router.get("/favicon.ico")
    def _favicon() -> Response:
        return Response(status_code=204, headers={"Cache-Control": "public, max-age=86400"})  # no icon, and no 404 in consoles

    @router.get("/healthz")
    def _health() -> Response:
        return PlainTextResponse("ok")

    @router.get("/")
    def landing(request: Request) -> Response:
        sess = sv.session(request)
        if sess.rid:
            return sv.redirect(request, sess, "/continue")
        if sv.settings.invitations == "required" and not sess.inv:
            return sv.html(request, sess, "invite_only.html", status=403, page_title="By invitation only")
        return sv.html(request, sess, "consent.html", page_title=sv.instrument.consent.title)

    @router.post("/consent")
    async def consent(request: Request) -> Response:
        form = dict(await request.form())
        sess = sv.session(request)
        sv.check_post(request, sess, form)
        decision = form.get("decision")
        if decision == "decline":
            await run_in_threadpool(sv.db.bump_counter, "declined")
            return sv.html(request, sess, "declined.html", page_title="Thank you")
        if decision != "agree":
            return sv.html(request, sess, "consent.html", page_title=sv.instrument.consent.title, error="Choose whether you agree to take part")
        if sv.settings.invitations == "required" and not sess.inv and not sess.rid:
            return sv.html(request, sess, "invite_only.html", status=403, page_title="By invitation only")
        if not sess.rid:
            if await run_in_threadpool(sv.start_respondent, sess):
                return sv.redirect(request, sess, "/survey/1")
        return sv.redirect(request, sess, "/continue")

    @router.get("/r/{token}")
    def resume(request: Request, token: str) -> Response:
        sess = sv.session(request)
        with sv.db.read() as s:
            r = s.query(Respondent).filter(Respondent.resume_hash == token_hash(token)).one_or_none()
        if r is None:
            raise _Problem(404, "Link not recognised", "This link does not open a survey response. Check that you copied the whole link.")
        sess.rid, sess.link, sess.inv, sess.syn, sess.dirty = r.public_id, f"/r/{token}", None, bool(r.synthetic), True
        return sv.redirect(request, sess, "/continue")

    @router.get("/i/{token}")
    def invitation(request: Request, token: str) -> Response:
        sess = sv.session(request)
        with sv.db.read() as s:
            inv = s.query(Invitation).filter(Invitation.token_hash == token_hash(token)).one_or_none()
            r = s.query(Respondent).filter(Respondent.invitation_id == inv.id).one_or_none() if inv else None
        if inv is None:
            raise _bad_invitation()
        if r is not None:
            sess.rid, sess.link, sess.inv = r.public_id, f"/i/{token}", None
        else:
            sess.rid, sess.link, sess.inv = None, None, token
        sess.syn, sess.dirty = bool(inv.synthetic), True
        return sv.redirect(request, sess, "/continue" if r is not None else "/")

    @router.get("/continue")
    def continue_(request: Request) -> Response:
        sess = sv.session(request)
        with sv.db.read() as s:
            _, _, redirect = _locate(sv, request, sess, s, None)
        return redirect  # type: ignore[return-value]

    @router.get("/survey/{n}")
    def page(request: Request, n: int) -> Response:
        sess = sv.session(request)
        with sv.db.read() as s:
            r, plan, redirect = _locate(sv, request, sess, s, n)
            if redirect is not None:
                return redirect
            pg = plan[n - 1]
            ids = [i.id for i in pg.items] or [PROPOSAL_ITEM]
            saved = {a.item_id: a for a in s.query(Answer).filter(Answer.respondent_id == r.id, Answer.item_id.in_(ids))}
        values = {f"q-{k}": a.choice for k, a in saved.items()}
        values.update({f"s-{k}": str(a.strength) for k, a in saved.items() if a.strength is not None})
        if PROPOSAL_ITEM in saved:
            values["proposal"] = saved[PROPOSAL_ITEM].text or ""
        return _render_page(sv, request, sess, r, plan, n, values, {})

    @router.post("/survey/{n}")
    async def submit(request: Request, n: int) -> Response:
        form = dict(await request.form())
        sess = sv.session(request)
        sv.check_post(request, sess, form)
        return await run_in_threadpool(_submit, sv, request, sess, n, form)

    @router.get("/done")
    def done(request: Request) -> Response:
        sess = sv.session(request)
        with sv.db.read() as s:
            r = sv.respondent(s, sess)
        if r is None:
            return sv.redirect(request, _forget(sess), "/")
        if not r.completed:
            return sv.redirect(request, sess, "/continue")
        return sv.html(request, sess, "done.html", page_title="Thank you", respondent_id=r.public_id)

    return router


def _locate(sv: _Survey, request: "Request", sess: _Session, s, n: int | None) -> tuple[Any, list[Page], "Response | None"]:  # noqa: ANN001
    """The respondent and their pages, and the redirect that replaces page ``n`` when it
    cannot be shown: no respondent → consent, finished → thank-you, a page not yet
    reached (or ``n`` None) → the first page not yet submitted."""
    r = sv.respondent(s, sess)
    if r is None:
        return None, [], sv.redirect(request, _forget(sess), "/")
    if r.completed:
        return r, [], sv.redirect(request, sess, "/done")
    plan = sv.plan(r)
    open_n = sv.first_open(plan, r.submitted) or len(plan)
    if n is None or not 1 <= n <= open_n:
        return r, plan, sv.redirect(request, sess, f"/survey/{open_n}")
    return r, plan, None


def _bad_invitation() -> _Problem:
    return _Problem(404, "Invitation not valid", "This invitation link is not valid. Check that you copied the whole link.")


def _forget(sess: _Session) -> _Session:
    """The session's respondent no longer exists (e.g. a new database): start afresh."""
    if sess.rid:
        sess.rid, sess.link, sess.dirty = None, None, True
    return sess


def _render_page(sv: _Survey, request: "Request", sess: _Session, r: _Resp, plan: list[Page], n: int, values: dict[str, str], errors: dict[str, str], status: int = 200) -> "Response":
    pg = plan[n - 1]
    shown = sv.page_signer.sign({"p": pg.key, "r": r.public_id, "at": time.time()})
    return sv.html(
        request,
        sess,
        "page.html",
        status=status,
        page_title=pg.title,
        page=pg,
        number=n,
        total=len(plan),
        values=values,
        errors=errors,
        error_links=[(_field_anchor(key), message) for key, message in errors.items()],
        shown=shown,
        resume_url=sv.public_base(request) + (sess.link or ""),
        strength_labels=sv.instrument.scenarios.strength_labels if sv.instrument.scenarios else [],
        max_proposal=sv.instrument.principles.max_proposal_chars if sv.instrument.principles else 0,
    )


def _field_anchor(key: str) -> str:
    """Where an error summary link goes: the first input of the field the error is about."""
    if key == "proposal":
        return "#proposal"
    if key.endswith("-strength"):
        return f"#s-{key.removesuffix('-strength')}-1"
    return f"#q-{key}-1"


def _validate(sv: _Survey, pg: Page, form: dict[str, Any]) -> tuple[list[dict], list[str], dict[str, str], dict[str, str]]:
    """(answers to save, item ids to clear, errors by field id, the values to re-show)."""
    rows: list[dict] = []
    cleared: list[str] = []
    errors: dict[str, str] = {}
    values: dict[str, str] = {}
    n_labels = len(sv.instrument.scenarios.strength_labels) if sv.instrument.scenarios else 0
    for item in pg.items:
        raw = form.get(f"q-{item.id}")
        choice = raw.strip() if isinstance(raw, str) else ""
        codes = {o.code for o in item.options}
        if choice:
            values[f"q-{item.id}"] = choice
        if not choice:
            if pg.required:
                errors[item.id] = _missing_message(item)
            else:
                cleared.append(item.id)
            continue
        if choice not in codes:
            errors[item.id] = "Choose one of the options shown"
            continue
        strength: int | None = None
        if item.kind == "scenario":
            raw_s = form.get(f"s-{item.id}")
            s_text = raw_s.strip() if isinstance(raw_s, str) else ""
            if s_text:
                values[f"s-{item.id}"] = s_text
            if not s_text.isdigit() or not 1 <= int(s_text) <= n_labels:
                errors[f"{item.id}-strength"] = "Say how much better the answer you chose is"
                continue
            strength = int(s_text)
        rows.append({"item_id": item.id, "kind": item.kind, "choice": choice, "strength": strength, "text": None})
    if pg.key == PROPOSAL_PAGE and sv.instrument.principles is not None:
        raw = form.get("proposal")
        text = " ".join(raw.split()) if isinstance(raw, str) else ""
        values["proposal"] = raw if isinstance(raw, str) else ""
        limit = sv.instrument.principles.max_proposal_chars
        if len(text) > limit:
            errors["proposal"] = f"Your proposal must be {limit} characters or fewer; it has {len(text)}"
        elif text and len(text) < 10:
            errors["proposal"] = "Write your proposal as a full sentence of at least 10 characters, or leave the box empty"
        elif text:
            rows.append({"item_id": PROPOSAL_ITEM, "kind": "principle", "choice": "proposal", "strength": None, "text": text})
        else:
            cleared.append(PROPOSAL_ITEM)
    return rows, cleared, errors, values


def _missing_message(item: Item) -> str:
    # The question's own words, so that each message in the summary says which one it means.
    text = item.text.strip().rstrip(".?!")
    words = text if len(text) <= 60 else text[:57].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    if item.kind == "scenario":
        return f"Choose which answer is better for “{words}”"
    if item.kind == "rating":
        return f"Say whether the answer to “{words}” is good or bad"
    if item.section == "principles":
        return f"Choose agree, disagree or pass for “{words}”"
    if item.section == "social_desirability":
        return f"Choose true or false for “{words}”"
    return f"Choose how much this person is like you: “{words}”"


def _submit(sv: _Survey, request: "Request", sess: _Session, n: int, form: dict[str, Any]) -> "Response":
    """Check and save one page in one transaction: a page is stored whole or not at all."""
    errors: dict[str, str] = {}
    with sv.db.write() as s:
        r, plan, redirect = _locate(sv, request, sess, s, n)
        if redirect is not None:
            return redirect
        pg = plan[n - 1]
        shown = sv.page_signer.unsign(form.get("shown"))
        if not shown or shown.get("p") != pg.key or shown.get("r") != r.public_id:
            raise _Problem(400, "Form expired", "This page's form is out of date. Go back, reload the page and submit it again.")
        rows, cleared, errors, values = _validate(sv, pg, form)
        last = n == len(plan)
        if not errors:
            seconds = min(max(time.time() - float(shown.get("at", 0)), 0.0), PAGE_SECONDS_CAP)
            sv.db.upsert_answers(s, r.id, rows)
            sv.db.delete_answers(s, r.id, cleared)
            s.add(PageEvent(respondent_id=r.id, page=pg.key, items=len(rows), seconds=seconds, submitted_at=utcnow()))
            if pg.key == PROPOSAL_PAGE:
                _save_proposal(s, r.id, next((x["text"] for x in rows if x["item_id"] == PROPOSAL_ITEM), None))
            if last:
                s.query(Respondent).filter(Respondent.id == r.id).update({"completed": True, "finished_at": utcnow()})
    if errors:
        # 200, as form pages with errors conventionally are (a 4xx would be logged as a browser console error)
        return _render_page(sv, request, sess, r, plan, n, values, errors)
    return sv.redirect(request, sess, "/done" if last else f"/survey/{n + 1}")


def _save_proposal(s, respondent_id: int, text: str | None) -> None:  # noqa: ANN001
    """One proposal per respondent; editing it is possible only while it is pending."""
    existing = s.query(Proposal).filter(Proposal.respondent_id == respondent_id).one_or_none()
    if existing is None:
        if text:
            s.add(Proposal(respondent_id=respondent_id, text=text, status="pending"))
    elif existing.status == "pending":
        if text:
            existing.text = text
        else:
            s.delete(existing)


class _SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every response (plain ASGI: no per-request task overhead)."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app
        self.extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [(k, v) for k, v in self.extra if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)
