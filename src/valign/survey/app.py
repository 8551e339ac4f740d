"""The survey web app: server-rendered pages that work without JavaScript, and the admin.

Respondents: ``/`` (consent, with links to the instrument's other languages:
``?lang=de`` on any page chooses one, and an invitation may set it) → ``/survey/1`` … ``/survey/N`` → ``/done``, or
``/screened``, the closing page of a respondent in a full quota cell
(`valign.survey.quota_fill`); ``/withdraw`` deletes their response
(`valign.survey.withdraw`). Every page
is saved when it is submitted (one transaction; answers upserted per question), and
``/r/<token>`` — the private link shown on every page — continues at the first page
not yet submitted, from any browser. With invitations, ``/i/<token>`` opens the survey
and always leads back to the same single response.

Admin (``Authorization: Bearer $VALIGN_ADMIN_TOKEN``, or the cookie the login form at
``/admin/login`` sets): ``/admin/`` dashboard, ``/admin/moderation``,
``/admin/api/summary``, ``/admin/api/responses``, ``/admin/api/proposals``,
``/admin/api/invitations`` (POST), ``/admin/export.csv|json|sav``, and
``/admin/api/openapi.json``, the OpenAPI schema of every route.

Request bodies are limited (``SurveySettings.max_body_bytes``, 64 KiB: 413 beyond it,
unread); a form POST without the session cookie is refused before its body is read;
bodies are read by `valign.web.bodies`, which answers 400 with one sentence to anything
malformed (files where text belongs, repeated fields, bad JSON).

The routes share a `valign.survey.state.SurveyState`; the admin routes live in
`valign.survey.admin`, the defences (CSRF, signed cookies, rate limits, headers) in the
shared web layer, `valign.web`.

Example (what ``valign survey serve`` runs)::

    app = create_app(load_instrument("demo"), "sqlite:///survey.db")
    uvicorn.run(app, port=8000)
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

from valign.errors import ValignError
from valign.survey.admin import admin_router
from valign.survey.db import PROPOSAL_ITEM, Answer, Database, Invitation, PageEvent, Proposal, Respondent, make_engine, migrate, token_hash
from valign.survey.erasure import retention_lifespan
from valign.survey.flow import PROPOSAL_PAGE, Page
from valign.survey.instrument import Instrument, Item
from valign.survey.messages import messages
from valign.survey.quota_fill import screen_if_full
from valign.survey.state import BrowserSession, Problem, RespondentState, SurveySettings, SurveyState, bad_invitation, forget_respondent, respondent_problem
from valign.survey.withdraw import withdraw_router
from valign.web.database import utcnow
from valign.web.bodies import openapi_form
from valign.web.headers import SecurityHeadersMiddleware
from valign.web.limits import BodyLimitMiddleware
from valign.web.templates import stylesheet

# Route signatures are resolved at run time by FastAPI, so these are real imports.
from fastapi import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastapi import FastAPI

__all__ = ["SurveySettings", "create_app", "app_from_env", "malformed_parameter"]

PAGE_SECONDS_CAP = 900.0  # a page left open longer counts as 15 minutes of active time


# -- the app -------------------------------------------------------------------------------


def create_app(instrument: Instrument, db_url: str, settings: SurveySettings | None = None) -> "FastAPI":
    """The survey as an ASGI app; migrates the database first unless ``settings.migrate`` is off.

    Example:
        >>> from valign.survey.instrument import load_instrument
        >>> app = create_app(load_instrument("demo"), "sqlite:///:memory:", SurveySettings(invitations="required", admin_token=None))
        >>> app.state.survey.settings.invitations
        'required'
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
    survey = SurveyState(instrument, db, settings, secret)

    # The retention rule runs at start and hourly in every worker (a second pass finds nothing).
    lifespan = retention_lifespan(db, settings.retention_days, on_erased=lambda _: survey.forget_plans()) if settings.retention_days else None
    app = FastAPI(title=f"valign survey: {instrument.title}", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.survey = survey

    # Added first, so it runs inside the headers middleware: its own 413s get the headers too.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(Problem)
    async def _problem(request, exc: Problem):  # noqa: ANN001
        return survey.problem_page(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):  # noqa: ANN001
        if exc.status_code == 404:
            return survey.problem_page(request, respondent_problem(404, "not_found"))
        titles = {400: "Bad request", 405: "Not allowed", 413: "Too large"}
        msg = str(exc.detail)
        return survey.problem_page(request, Problem(exc.status_code, titles.get(exc.status_code, "Something went wrong"), msg, getattr(exc, "headers", None)))

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _malformed(request, exc):  # noqa: ANN001
        return survey.problem_page(request, malformed_parameter(exc.errors()))

    app.include_router(_public_router(survey))
    app.include_router(withdraw_router(survey))
    app.include_router(admin_router(survey), prefix="/admin")
    return app


def malformed_parameter(errors: "Sequence[Any]") -> Problem:
    """The answer to an address whose path or query parameters do not parse: a path that
    names no page (``/survey/abc``) is not found; a bad query parameter is named.

    Example:
        >>> malformed_parameter([{"loc": ("query", "completed_only"), "msg": "Input should be a valid boolean"}]).message
        "The query parameter 'completed_only' is not valid: Input should be a valid boolean."
        >>> malformed_parameter([{"loc": ("path", "n"), "msg": "Input should be a valid integer"}]).status
        404
    """
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    if not loc or loc[0] == "path":
        return respondent_problem(404, "not_found")
    where, name = str(loc[0]), ".".join(str(x) for x in loc[1:])[:40]
    return Problem(422, "Bad request", f"The {where} parameter '{name}' is not valid: {str(first.get('msg', 'unreadable')).rstrip('.')}.")


def app_from_env() -> "FastAPI":
    """An app built from the ``VALIGN_SURVEY_APP`` variable (JSON): what each
    ``uvicorn --factory`` worker loads. ``valign survey serve --workers N`` sets it (and
    migrates once, before starting); tokens and secrets come from their own variables.

    Example::

        os.environ["VALIGN_SURVEY_APP"] = '{"instrument": "demo", "db_url": "sqlite:///survey.db", "migrate": false}'
        uvicorn.run("valign.survey.app:app_from_env", factory=True, workers=2)
    """
    from valign.survey.instrument import load_instrument

    cfg = json.loads(os.environ["VALIGN_SURVEY_APP"])
    return create_app(load_instrument(cfg.pop("instrument")), cfg.pop("db_url"), SurveySettings(**cfg))


# -- public routes --------------------------------------------------------------------------


def _public_router(sv: SurveyState):
    from fastapi import APIRouter
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import PlainTextResponse

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
        t = messages(sv.language(sess))
        if sv.settings.invitations == "required" and not sess.inv:
            return sv.html(request, sess, "invite_only.html", status=403, page_title=t["invite_only_title"])
        return sv.html(request, sess, "consent.html", page_title=sv.instrument.in_language(sv.language(sess)).consent.title)

    consent_form = openapi_form({"csrf": {"type": "string"}, "decision": {"type": "string", "enum": ["agree", "decline"]}}, required=["csrf", "decision"])

    @router.post("/consent", openapi_extra=consent_form)
    async def consent(request: Request) -> Response:
        sess = sv.session(request)
        form = await sv.read_post(request, sess)
        decision = form.get("decision")
        t = messages(sv.language(sess))
        if decision == "decline":
            await run_in_threadpool(sv.db.bump_counter, "declined")
            return sv.html(request, sess, "declined.html", page_title=t["thank_you"])
        if decision != "agree":
            return sv.html(request, sess, "consent.html", page_title=sv.instrument.in_language(sv.language(sess)).consent.title, error=t["consent_required"])
        if sv.settings.invitations == "required" and not sess.inv and not sess.rid:
            return sv.html(request, sess, "invite_only.html", status=403, page_title=t["invite_only_title"])
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
            raise respondent_problem(404, "bad_link")
        sess.rid, sess.link, sess.inv, sess.syn, sess.dirty = r.public_id, f"/r/{token}", None, bool(r.synthetic), True
        _resume_language(sv, sess, r.language)
        return sv.redirect(request, sess, "/continue")

    @router.get("/i/{token}")
    def invitation(request: Request, token: str) -> Response:
        sess = sv.session(request)
        with sv.db.read() as s:
            inv = s.query(Invitation).filter(Invitation.token_hash == token_hash(token)).one_or_none()
            r = s.query(Respondent).filter(Respondent.invitation_id == inv.id).one_or_none() if inv else None
        if inv is None:
            raise bad_invitation()
        if r is not None:
            sess.rid, sess.link, sess.inv = r.public_id, f"/i/{token}", None
        else:
            sess.rid, sess.link, sess.inv = None, None, token
        _resume_language(sv, sess, r.language if r is not None else inv.language)
        sess.syn, sess.dirty = bool(inv.synthetic), True
        return sv.redirect(request, sess, "/continue" if r is not None else "/")

    @router.get("/continue")
    def continue_(request: Request) -> Response:
        sess = sv.session(request)
        sv.record_language(sess)
        with sv.db.read(snapshot=False) as s:
            _, _, redirect = _locate(sv, request, sess, s, None)
        return redirect  # type: ignore[return-value]

    @router.get("/survey/{n}")
    def page(request: Request, n: int) -> Response:
        from sqlalchemy import select

        sess = sv.session(request)
        sv.record_language(sess)
        with sv.db.read(snapshot=False) as s:
            r, plan, redirect = _locate(sv, request, sess, s, n)
            if redirect is not None:
                return redirect
            pg = plan[n - 1]
            ids = [i.id for i in pg.items] or [PROPOSAL_ITEM]
            # Plain rows, not ORM objects: this runs for every page shown.
            saved = {a.item_id: a for a in s.execute(select(Answer.item_id, Answer.choice, Answer.strength, Answer.text).where(Answer.respondent_id == r.id, Answer.item_id.in_(ids)))}
        values = {f"q-{k}": a.choice for k, a in saved.items()}
        values.update({f"s-{k}": str(a.strength) for k, a in saved.items() if a.strength is not None})
        if PROPOSAL_ITEM in saved:
            values["proposal"] = saved[PROPOSAL_ITEM].text or ""
        return _render_page(sv, request, sess, r, plan, n, values, {})

    # q-<item> and s-<item> (a scenario's strength) are the page's own fields, hence "additional".
    page_form = openapi_form({"csrf": {"type": "string"}, "shown": {"type": "string"}, "proposal": {"type": "string"}}, required=["csrf", "shown"], additional=True)

    @router.post("/survey/{n}", openapi_extra=page_form)
    async def submit(request: Request, n: int) -> Response:
        sess = sv.session(request)
        form = await sv.read_post(request, sess)
        return await run_in_threadpool(_submit, sv, request, sess, n, form)

    @router.get("/done")
    def done(request: Request) -> Response:
        sess = sv.session(request)
        with sv.db.read(snapshot=False) as s:
            r = sv.respondent(s, sess)
        if r is None:
            return sv.redirect(request, forget_respondent(sess), "/")
        if not r.completed:
            return sv.redirect(request, sess, "/continue")
        return sv.html(request, sess, "done.html", page_title=messages(sv.language(sess))["thank_you"], respondent_id=r.public_id)

    @router.get("/screened")
    def screened(request: Request) -> Response:
        sess = sv.session(request)
        with sv.db.read() as s:
            r = sv.respondent(s, sess)
        if r is None:
            return sv.redirect(request, forget_respondent(sess), "/")
        if not r.screened_out:
            return sv.redirect(request, sess, "/continue")
        t = messages(sv.language(sess))
        quotas = sv.instrument.in_language(sv.language(sess)).quotas
        message = quotas.message if quotas is not None and "message" in quotas.model_fields_set else t["quota_full"]
        return sv.html(request, sess, "screened.html", page_title=t["thank_you"], respondent_id=r.public_id, message=message)

    return router


def _resume_language(sv: SurveyState, sess: BrowserSession, stored: str | None) -> None:
    """A resume or invitation link opens in the response's (or invitation's) language,
    unless this very request chose one with ``?lang=``."""
    if stored in sv.instrument.languages and not sess.lang_changed:
        sess.lang, sess.dirty = stored, True


def _locate(sv: SurveyState, request: "Request", sess: BrowserSession, s, n: int | None) -> tuple[Any, list[Page], "Response | None"]:  # noqa: ANN001
    """The respondent and their pages, and the redirect that replaces page ``n`` when it
    cannot be shown: no respondent → consent, screened out → the closing page, finished
    → thank-you, a page not yet reached (or ``n`` None) → the first page not yet submitted."""
    r = sv.respondent(s, sess)
    if r is None:
        return None, [], sv.redirect(request, forget_respondent(sess), "/")
    if r.screened_out:
        return r, [], sv.redirect(request, sess, "/screened")
    if r.completed:
        return r, [], sv.redirect(request, sess, "/done")
    plan = sv.plan(r, sv.language(sess))
    open_n = sv.first_open(plan, r.submitted) or len(plan)
    if n is None or not 1 <= n <= open_n:
        return r, plan, sv.redirect(request, sess, f"/survey/{open_n}")
    return r, plan, None


def _render_page(sv: SurveyState, request: "Request", sess: BrowserSession, r: RespondentState, plan: list[Page], n: int, values: dict[str, str], errors: dict[str, str], status: int = 200) -> "Response":
    pg = plan[n - 1]
    pg_instrument = sv.instrument.in_language(sv.language(sess))
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
        strength_labels=pg_instrument.scenarios.strength_labels if pg_instrument.scenarios else [],
        max_proposal=sv.instrument.principles.max_proposal_chars if sv.instrument.principles else 0,
    )


def _field_anchor(key: str) -> str:
    """Where an error summary link goes: the first input of the field the error is about."""
    if key == "proposal":
        return "#proposal"
    if key.endswith("-strength"):
        return f"#s-{key.removesuffix('-strength')}-1"
    return f"#q-{key}-1"


def _validate(sv: SurveyState, pg: Page, form: dict[str, Any], lang: str) -> tuple[list[dict], list[str], dict[str, str], dict[str, str]]:
    """(answers to save, item ids to clear, errors by field id — in ``lang`` — and the values to re-show)."""
    said = messages(lang)["errors"]
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
                errors[item.id] = _missing_message(item, said)
            else:
                cleared.append(item.id)
            continue
        if choice not in codes:
            errors[item.id] = said["not_an_option"]
            continue
        strength: int | None = None
        if item.kind == "scenario":
            raw_s = form.get(f"s-{item.id}")
            s_text = raw_s.strip() if isinstance(raw_s, str) else ""
            if s_text:
                values[f"s-{item.id}"] = s_text
            if not s_text.isdigit() or not 1 <= int(s_text) <= n_labels:
                errors[f"{item.id}-strength"] = said["strength"]
                continue
            strength = int(s_text)
        rows.append({"item_id": item.id, "kind": item.kind, "choice": choice, "strength": strength, "text": None})
    if pg.key == PROPOSAL_PAGE and sv.instrument.principles is not None:
        raw = form.get("proposal")
        text = " ".join(raw.split()) if isinstance(raw, str) else ""
        values["proposal"] = raw if isinstance(raw, str) else ""
        limit = sv.instrument.principles.max_proposal_chars
        if len(text) > limit:
            errors["proposal"] = said["proposal_too_long"].format(limit=limit, length=len(text))
        elif text and len(text) < 10:
            errors["proposal"] = said["proposal_too_short"]
        elif text:
            rows.append({"item_id": PROPOSAL_ITEM, "kind": "principle", "choice": "proposal", "strength": None, "text": text})
        else:
            cleared.append(PROPOSAL_ITEM)
    return rows, cleared, errors, values


def _missing_message(item: Item, said: dict[str, str]) -> str:
    # The question's own words, so that each message in the summary says which one it means.
    text = item.text.strip().rstrip(".?!")
    words = text if len(text) <= 60 else text[:57].rsplit(" ", 1)[0].rstrip(",;:") + "…"
    if item.kind == "scenario":
        key = "missing_scenario"
    elif item.kind == "rating":
        key = "missing_rating"
    elif item.section == "principles":
        key = "missing_principle"
    elif item.section == "social_desirability":
        key = "missing_sd"
    elif item.section == "values":
        key = "missing_value"
    else:
        key = "missing_other"
    return said[key].format(words=words)


def _submit(sv: SurveyState, request: "Request", sess: BrowserSession, n: int, form: dict[str, Any]) -> "Response":
    """Check and save one page in one transaction: a page is stored whole or not at all."""
    from sqlalchemy.exc import IntegrityError

    try:
        return _save_page(sv, request, sess, n, form)
    except IntegrityError:
        # On PostgreSQL a page saved while its respondent is being erased (withdrawn) waits
        # for the erasure, then finds its respondent gone: there is nothing to save it to.
        with sv.db.read() as s:
            if sv.respondent(s, sess) is not None:
                raise
        return sv.redirect(request, forget_respondent(sess), "/")


def _save_page(sv: SurveyState, request: "Request", sess: BrowserSession, n: int, form: dict[str, Any]) -> "Response":
    errors: dict[str, str] = {}
    with sv.db.write() as s:
        r, plan, redirect = _locate(sv, request, sess, s, n)
        if redirect is not None:
            return redirect
        pg = plan[n - 1]
        shown = sv.page_signer.unsign(form.get("shown"))
        if not shown or shown.get("p") != pg.key or shown.get("r") != r.public_id:
            raise respondent_problem(400, "page_expired")
        rows, cleared, errors, values = _validate(sv, pg, form, sv.language(sess))
        last = n == len(plan)
        screened = False
        if not errors:
            seconds = min(max(time.time() - float(shown.get("at", 0)), 0.0), PAGE_SECONDS_CAP)
            screened = screen_if_full(s, sv.instrument, r.id, rows, cleared) is not None  # compares with the answers stored before
            sv.db.upsert_answers(s, r.id, rows)
            sv.db.delete_answers(s, r.id, cleared)
            s.add(PageEvent(respondent_id=r.id, page=pg.key, items=len(rows), seconds=seconds, submitted_at=utcnow()))
            if pg.key == PROPOSAL_PAGE:
                _save_proposal(s, r.id, next((x["text"] for x in rows if x["item_id"] == PROPOSAL_ITEM), None))
            if last and not screened:
                s.query(Respondent).filter(Respondent.id == r.id).update({"completed": True, "finished_at": utcnow()})
    if errors:
        # 200, as form pages with errors conventionally are (a 4xx would be logged as a browser console error)
        return _render_page(sv, request, sess, r, plan, n, values, errors)
    return sv.redirect(request, sess, "/screened" if screened else "/done" if last else f"/survey/{n + 1}")


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


