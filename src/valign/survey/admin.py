"""Admin pages and API under ``/admin/``: counts, quality flags, moderation, invitations,
exports, and erasing a respondent by id (``POST /admin/api/respondents/<id>/erase``, or
the dashboard's form; `valign.survey.erasure`).

Every route needs ``Authorization: Bearer <VALIGN_ADMIN_TOKEN>`` or the signed,
HttpOnly admin cookie that ``/admin/login`` sets after checking the token (8 hours).
When the server has no token configured every admin route answers 403; a wrong or
missing token answers 401. Forms posted with the cookie also need the CSRF token;
bearer requests carry no ambient credentials and need none.

Example (against a running survey)::

    httpx.get(f"{url}/admin/api/summary", headers={"Authorization": f"Bearer {token}"}).json()
    # {'started': 12, 'completed': 9, 'screened_out': 2, 'synthetic': 0, 'declined': 1, ...,
    #  'quotas': [{'label': 'age_group=65+', 'target': 5, 'completed': 5, 'in_progress': 1, 'screened_out': 2, ...}]}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valign.survey.db import LIVE_SOURCE, Database, Invitation, Proposal, load_frames, new_token, token_hash
from valign.survey.quota_fill import quota_fill
from valign.survey.erasure import Erasure, erase_respondent, erasure_counts
from valign.survey.state import BrowserSession, Problem, SurveyState
from valign.web.database import utcnow
from valign.web.bodies import openapi_form, openapi_json, read_form, read_json_object

# Route signatures are resolved at run time by FastAPI, so these are real imports.
from fastapi import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = ["admin_router", "create_invitations", "whole_number", "MAX_INVITATIONS", "LARGEST_ID"]

MAX_INVITATIONS = 10_000
LARGEST_ID = 2**31 - 1  # ids are PostgreSQL integers: a larger one names no row, and would make the query fail


def whole_number(value: object) -> int | None:
    """``value`` as a whole number (JSON 3 or 3.0, form text "3"), or None: not a bool, a fraction or text.

    Example:
        >>> whole_number(3), whole_number("12"), whole_number(2.0), whole_number(2.5), whole_number(True), whole_number("1e9")
        (3, 12, 2, None, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdecimal() and len(value.strip()) < 10:
        return int(value.strip())
    return None
MAX_RESPONDENT_ID = 32  # characters of ``respondents.public_id``


def create_invitations(db: Database, n: int, synthetic: bool = False, language: str | None = None) -> list[str]:
    """Create ``n`` invitation tokens (only their hashes are stored); returns the tokens.
    ``language``: the language their survey opens in (a tag of the instrument's
    ``languages``; None lets the respondent choose).

    Example:
        >>> from valign.survey.db import make_engine, migrate
        >>> engine = make_engine("sqlite:///:memory:"); migrate(engine)
        >>> len(create_invitations(Database(engine), 3))
        3
    """
    tokens = [new_token() for _ in range(n)]
    with db.write() as s:
        s.add_all([Invitation(token_hash=token_hash(t), synthetic=synthetic, language=language, created_at=utcnow()) for t in tokens])
    return tokens


def admin_router(sv: SurveyState) -> APIRouter:
    """The ``/admin`` routes of a survey app; `valign.survey.app.create_app` mounts them
    with ``app.include_router(admin_router(survey), prefix="/admin")``."""
    from fastapi import APIRouter
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    from valign.survey.data import export_bytes
    from valign.survey.quality import add_quality, flag_counts

    router = APIRouter()

    def disabled() -> Problem:
        return Problem(403, "Admin is disabled", "The admin pages are disabled because the server has no admin token: set VALIGN_ADMIN_TOKEN and restart it.")

    def auth(request: Request) -> str:
        """'bearer' or 'cookie'; raises 403 (no token configured) or 401."""
        if not sv.admin.enabled:
            raise disabled()
        header = request.headers.get("authorization")
        if header is not None:
            # The right token is always admitted; wrong ones are counted and, past the
            # limit, refused (429) — see SurveyState.wrong_admin_token.
            if sv.admin.check_bearer(header):
                return "bearer"
            raise sv.wrong_admin_token(request)
        cookie = sv.admin_cookie.read(request.cookies)
        if cookie and cookie.get("a") == sv.admin.cookie_marker(sv.signer):
            return "cookie"
        raise Problem(401, "Sign in needed", "These pages are for the survey's administrators. Sign in with the admin token.", {"WWW-Authenticate": "Bearer"})

    async def auth_post(request: Request) -> tuple[dict[str, Any], BrowserSession]:
        """Authenticated POST: a JSON object or a form, read only once the sender is known
        to be an admin; a cookie-authenticated one must also carry the CSRF token."""
        how = auth(request)
        sess = sv.session(request)
        if how == "cookie":
            sv.admit_post(request, sess)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        form: dict[str, Any] = await (read_json_object(request) if media == "application/json" else read_form(request))
        if how == "cookie":
            sv.require_csrf(sess, form)
        return form, sess

    def frames():
        return add_quality(load_frames(sv.db, sv.instrument))

    def summary() -> dict[str, Any]:
        f = frames()
        r = f.respondents
        with sv.db.read() as s:
            statuses = {st: s.query(Proposal).filter(Proposal.status == st, Proposal.source == LIVE_SOURCE).count() for st in ("pending", "approved", "rejected")}
            invitations = s.query(Invitation).count()
        return {
            "instrument": {"id": sv.instrument.id, "version": sv.instrument.version, "fingerprint": sv.fingerprint, "validated": sv.instrument.validated},
            "started": int(len(r)),
            "completed": int(r["completed"].sum()) if len(r) else 0,
            "screened_out": int(r["screened_out"].sum()) if len(r) else 0,
            "synthetic": int(r["synthetic"].sum()) if len(r) else 0,
            "declined": int(sv.db.setting("declined") or 0),
            "answers": int(len(f.answers)),
            "invitations": invitations,
            "flags": flag_counts(f),
            "proposals": statuses,
            "quotas": quota_fill(sv.db, sv.instrument),
            "erased": erasure_counts(sv.db),
        }

    def html(request: Request, template: str, **ctx: Any) -> Response:
        sess = sv.session(request)
        return sv.html(request, sess, template, **ctx)

    # -- sign in -------------------------------------------------------------------------

    @router.get("/login")
    def login_form(request: Request) -> Response:
        if not sv.admin.enabled:
            raise disabled()
        return html(request, "admin_login.html", page_title="Admin sign in")

    @router.post("/login", openapi_extra=openapi_form({"csrf": {"type": "string"}, "token": {"type": "string"}}, required=["csrf", "token"]))
    async def login(request: Request) -> Response:
        if not sv.admin.enabled:
            raise disabled()
        sess = sv.session(request)
        form = await sv.read_post(request, sess)
        if not sv.admin.check_token(form.get("token")):
            problem = sv.wrong_admin_token(request)
            if problem.status == 429:
                raise problem
            return sv.html(request, sess, "admin_login.html", status=401, page_title="Admin sign in", error="That admin token is not right.")
        response = sv.redirect(request, sess, "/admin/")
        sv.admin_cookie.write(response, {"a": sv.admin.cookie_marker(sv.signer)})
        return response

    @router.post("/logout", openapi_extra=openapi_form({"csrf": {"type": "string"}}, required=["csrf"]))
    async def logout(request: Request) -> Response:
        _, sess = await auth_post(request)
        response = sv.redirect(request, sess, "/admin/login")
        sv.admin_cookie.clear(response)
        return response

    # -- pages ---------------------------------------------------------------------------

    @router.get("/")
    def dashboard(request: Request) -> Response:
        auth(request)
        return html(request, "admin_dashboard.html", page_title="Survey admin", s=summary())

    @router.get("/moderation")
    def moderation(request: Request) -> Response:
        auth(request)
        with sv.db.read() as s:
            proposals = list(s.query(Proposal).filter(Proposal.source == LIVE_SOURCE).order_by(Proposal.status != "pending", Proposal.id))
        return html(request, "admin_moderation.html", page_title="Moderation", proposals=proposals)

    status_field = {"type": "string", "enum": ["approved", "rejected", "pending"]}

    @router.post("/moderation/{pid}", openapi_extra=openapi_form({"csrf": {"type": "string"}, "status": status_field}, required=["csrf", "status"]))
    async def moderate_form(request: Request, pid: int) -> Response:
        form, sess = await auth_post(request)
        await run_in_threadpool(moderate, pid, str(form.get("status", "")))
        return sv.redirect(request, sess, "/admin/moderation")

    def moderate(pid: int, status: str) -> dict[str, Any]:
        if status not in ("approved", "rejected", "pending"):
            raise Problem(422, "Bad request", "status must be approved, rejected or pending.")
        if not 1 <= pid <= LARGEST_ID:  # would fail in the database's integer column, not just miss
            raise Problem(404, "No such proposal", f"There is no proposal {pid}.")
        with sv.db.write() as s:
            p = s.get(Proposal, pid)
            if p is None or p.source != LIVE_SOURCE:  # imported (Polis) comments change only by importing again
                raise Problem(404, "No such proposal", f"There is no proposal {pid}.")
            p.status, p.moderated_at = status, utcnow()
            return {"id": p.id, "item_id": p.item_id, "status": p.status, "text": p.text}

    # -- API -----------------------------------------------------------------------------

    @router.get("/api/openapi.json", include_in_schema=False)
    def api_schema(request: Request) -> Response:
        """The app's OpenAPI schema (routes, forms, JSON bodies): for API clients and fuzzers."""
        auth(request)
        return JSONResponse(request.app.openapi())

    @router.get("/api/summary")
    def api_summary(request: Request) -> Response:
        auth(request)
        return JSONResponse(summary())

    @router.get("/api/responses")
    def api_responses(request: Request) -> Response:
        auth(request)
        r = frames().respondents.reset_index()
        return Response(r.to_json(orient="records", date_format="iso", date_unit="s"), media_type="application/json")

    @router.get("/api/proposals")
    def api_proposals(request: Request) -> Response:
        auth(request)
        with sv.db.read() as s:
            rows = [{"id": p.id, "item_id": p.item_id, "status": p.status, "text": p.text, "created_at": p.created_at.isoformat()} for p in s.query(Proposal).filter(Proposal.source == LIVE_SOURCE).order_by(Proposal.id)]
        return JSONResponse(rows)

    @router.post("/api/proposals/{pid}", openapi_extra=openapi_json({"status": status_field}, required=["status"]))
    async def api_moderate(request: Request, pid: int) -> Response:
        form, _ = await auth_post(request)
        return JSONResponse(await run_in_threadpool(moderate, pid, str(form.get("status", ""))))

    invitations_body = openapi_json({"n": {"type": "integer", "minimum": 1, "maximum": MAX_INVITATIONS}, "synthetic": {"type": "boolean"}, "language": {"type": "string", "enum": list(sv.instrument.languages)}})

    @router.post("/api/invitations", openapi_extra=invitations_body)
    async def api_invitations(request: Request) -> Response:
        form, _ = await auth_post(request)
        n = whole_number(form.get("n", 1))
        if n is None or not 1 <= n <= MAX_INVITATIONS:
            raise Problem(422, "Bad request", f"n must be a whole number from 1 to {MAX_INVITATIONS}.")
        synthetic = form.get("synthetic") in (True, "true", "1", "on")
        language = form.get("language")
        if language is not None and language not in sv.instrument.languages:
            raise Problem(422, "Bad request", f"language must be one of the instrument's languages: {', '.join(sv.instrument.languages)}.")
        tokens = await run_in_threadpool(create_invitations, sv.db, n, synthetic, language)
        base = sv.public_base(request)
        return JSONResponse({"tokens": tokens, "urls": [f"{base}/i/{t}" for t in tokens], "synthetic": synthetic, "language": language})

    # -- erasure --------------------------------------------------------------------------

    def erase(rid: str) -> Erasure:
        rid = rid.strip()
        if not rid or len(rid) > MAX_RESPONDENT_ID or not rid.isascii() or not rid.replace("-", "").replace("_", "").isalnum():
            raise Problem(422, "Bad request", "A respondent id is the response number shown on the respondent's thank-you page and in the exports' respondent_id column, e.g. 3f9a0c1d2b4e5f60.")
        done = erase_respondent(sv.db, rid, "admin")
        if done is None:
            raise Problem(404, "No such respondent", f"There is no respondent {rid}: check the number (it may have been erased already).")
        if done.proposals:
            sv.forget_plans()
        return done

    @router.post("/api/respondents/{rid}/erase")
    async def api_erase(request: Request, rid: str) -> Response:
        await auth_post(request)
        done = await run_in_threadpool(erase, rid)
        return JSONResponse({"respondent_id": rid.strip(), "reason": done.reason, "rows": done.rows})

    @router.post("/erase", openapi_extra=openapi_form({"csrf": {"type": "string"}, "respondent_id": {"type": "string"}}, required=["csrf", "respondent_id"]))
    async def erase_form(request: Request) -> Response:
        form, sess = await auth_post(request)
        rid = str(form.get("respondent_id", ""))
        done = await run_in_threadpool(erase, rid)
        return sv.html(request, sess, "admin_erased.html", page_title="Respondent erased", respondent_id=rid.strip(), rows=done.rows)

    # -- exports -------------------------------------------------------------------------

    media = {"csv": "text/csv; charset=utf-8", "json": "application/json", "sav": "application/x-spss-sav"}

    @router.get("/export.{fmt}")
    def export(request: Request, fmt: str, include_excluded: bool = False, completed_only: bool = False, synthetic: bool = True) -> Response:
        auth(request)
        if fmt not in media:
            raise Problem(404, "Page not found", "Exports are export.csv, export.json and export.sav.")
        body = export_bytes(frames(), fmt, include_excluded=include_excluded, completed_only=completed_only, synthetic=synthetic)  # type: ignore[arg-type]
        name = f"{sv.instrument.id}-responses.{fmt}"
        return Response(body, media_type=media[fmt], headers={"Content-Disposition": f'attachment; filename="{name}"'})

    return router
