"""Admin pages and API under ``/admin/``: counts, quality flags, moderation, invitations, exports.

Every route needs ``Authorization: Bearer <VALIGN_ADMIN_TOKEN>`` or the signed,
HttpOnly admin cookie that ``/admin/login`` sets after checking the token (8 hours).
When the server has no token configured every admin route answers 403; a wrong or
missing token answers 401. Forms posted with the cookie also need the CSRF token;
bearer requests carry no ambient credentials and need none.

Example (against a running survey)::

    httpx.get(f"{url}/admin/api/summary", headers={"Authorization": f"Bearer {token}"}).json()
    # {'started': 12, 'completed': 9, 'synthetic': 0, 'declined': 1, ...}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from valign.survey.db import Database, Invitation, Proposal, load_frames, new_token, token_hash
from valign.survey.state import BrowserSession, Problem, SurveyState
from valign.web.database import utcnow

# Route signatures are resolved at run time by FastAPI, so these are real imports.
from fastapi import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = ["admin_router", "create_invitations"]

MAX_INVITATIONS = 10_000


def create_invitations(db: Database, n: int, synthetic: bool = False) -> list[str]:
    """Create ``n`` invitation tokens (only their hashes are stored); returns the tokens.

    Example:
        >>> from valign.survey.db import make_engine, migrate
        >>> engine = make_engine("sqlite:///:memory:"); migrate(engine)
        >>> len(create_invitations(Database(engine), 3))
        3
    """
    tokens = [new_token() for _ in range(n)]
    with db.write() as s:
        s.add_all([Invitation(token_hash=token_hash(t), synthetic=synthetic, created_at=utcnow()) for t in tokens])
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
        """Authenticated POST: a cookie-authenticated form must also carry the CSRF token."""
        how = auth(request)
        sess = sv.session(request)
        form: dict[str, Any] = {}
        if request.headers.get("content-type", "").startswith("application/json"):
            form = await request.json()
            if not isinstance(form, dict):
                raise Problem(422, "Bad request", "The request body must be a JSON object.")
        else:
            form = dict(await request.form())
        if how == "cookie":
            sv.check_post(request, sess, form)
        return form, sess

    def frames():
        return add_quality(load_frames(sv.db, sv.instrument))

    def summary() -> dict[str, Any]:
        f = frames()
        r = f.respondents
        with sv.db.read() as s:
            statuses = {st: s.query(Proposal).filter(Proposal.status == st).count() for st in ("pending", "approved", "rejected")}
            invitations = s.query(Invitation).count()
        return {
            "instrument": {"id": sv.instrument.id, "version": sv.instrument.version, "fingerprint": sv.fingerprint, "validated": sv.instrument.validated},
            "started": int(len(r)),
            "completed": int(r["completed"].sum()) if len(r) else 0,
            "synthetic": int(r["synthetic"].sum()) if len(r) else 0,
            "declined": int(sv.db.setting("declined") or 0),
            "answers": int(len(f.answers)),
            "invitations": invitations,
            "flags": flag_counts(f),
            "proposals": statuses,
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

    @router.post("/login")
    async def login(request: Request) -> Response:
        if not sv.admin.enabled:
            raise disabled()
        form = dict(await request.form())
        sess = sv.session(request)
        sv.check_post(request, sess, form)
        if not sv.admin.check_token(form.get("token")):
            problem = sv.wrong_admin_token(request)
            if problem.status == 429:
                raise problem
            return sv.html(request, sess, "admin_login.html", status=401, page_title="Admin sign in", error="That admin token is not right.")
        response = sv.redirect(request, sess, "/admin/")
        sv.admin_cookie.write(response, {"a": sv.admin.cookie_marker(sv.signer)})
        return response

    @router.post("/logout")
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
            proposals = list(s.query(Proposal).order_by(Proposal.status != "pending", Proposal.id))
        return html(request, "admin_moderation.html", page_title="Moderation", proposals=proposals)

    @router.post("/moderation/{pid}")
    async def moderate_form(request: Request, pid: int) -> Response:
        form, sess = await auth_post(request)
        await run_in_threadpool(moderate, pid, str(form.get("status", "")))
        return sv.redirect(request, sess, "/admin/moderation")

    def moderate(pid: int, status: str) -> dict[str, Any]:
        if status not in ("approved", "rejected", "pending"):
            raise Problem(422, "Bad request", "status must be approved, rejected or pending.")
        with sv.db.write() as s:
            p = s.get(Proposal, pid)
            if p is None:
                raise Problem(404, "No such proposal", f"There is no proposal {pid}.")
            p.status, p.moderated_at = status, utcnow()
            return {"id": p.id, "item_id": p.item_id, "status": p.status, "text": p.text}

    # -- API -----------------------------------------------------------------------------

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
            rows = [{"id": p.id, "item_id": p.item_id, "status": p.status, "text": p.text, "created_at": p.created_at.isoformat()} for p in s.query(Proposal).order_by(Proposal.id)]
        return JSONResponse(rows)

    @router.post("/api/proposals/{pid}")
    async def api_moderate(request: Request, pid: int) -> Response:
        form, _ = await auth_post(request)
        return JSONResponse(await run_in_threadpool(moderate, pid, str(form.get("status", ""))))

    @router.post("/api/invitations")
    async def api_invitations(request: Request) -> Response:
        form, _ = await auth_post(request)
        try:
            n = int(form.get("n", 1))
        except (TypeError, ValueError):
            n = -1
        if not 1 <= n <= MAX_INVITATIONS:
            raise Problem(422, "Bad request", f"n must be a whole number from 1 to {MAX_INVITATIONS}.")
        synthetic = form.get("synthetic") in (True, "true", "1", "on")
        tokens = await run_in_threadpool(create_invitations, sv.db, n, synthetic)
        base = sv.public_base(request)
        return JSONResponse({"tokens": tokens, "urls": [f"{base}/i/{t}" for t in tokens], "synthetic": synthetic})

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
